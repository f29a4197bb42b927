"""The package's version (setup.cfg reads it here; the model card names it)."""

__version__ = "0.1.0"
