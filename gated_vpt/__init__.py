"""gated-vpt: gated visual prompt tuning (Yoo et al., ICML 2023) as a peft method for transformers' ViT family.

Importing the package registers the method with peft, so ``peft.get_peft_model(model, GatedPromptConfig(...))``
and ``PeftModel.from_pretrained(base, adapter_dir)`` work.

This ``__init__`` is the package's face, above every layer but the command: it exports the core's API, registers it
with peft, and hands registration the Hub layer's push and the model card's task table the task packages, each
imported only when used. The layers, each importing only the ones under it, are listed in README.md ("Layout") and
enforced by ``.importlinter``.
"""

import sys
from pathlib import Path

from .version import __version__
__all__ = [
    "BACKBONES",
    "BlockReport",
    "GateReport",
    "GatedPromptBlock",
    "GatedPromptConfig",
    "GatedPromptModel",
    "fast_path",
    "fast_path_enabled",
    "gate_report",
    "init_classifier_",
    "load_adapter",
    "load_base_model",
    "set_fast_path",
    "supported_model_types",
]


def load_core() -> None:
    """Import the core and register the method with peft: what importing the package does (idempotent)."""
    global BACKBONES, BlockReport, GateReport, GatedPromptBlock, GatedPromptConfig, GatedPromptModel
    global fast_path, fast_path_enabled, gate_report, init_classifier_, load_adapter, load_base_model, set_fast_path
    global supported_model_types
    from .backbones import BACKBONES, supported_model_types
    from .base_models import load_base_model
    from .config import GatedPromptConfig
    from .fast_path import fast_path, fast_path_enabled, set_fast_path
    from .heads import init_classifier_
    from .introspection import BlockReport, GateReport, gate_report
    from .layer import GatedPromptBlock
    from .loading import load_adapter
    from .model import GatedPromptModel
    from .registration import register
    from .tasks import add_task_importer

    register(push_to_hub=_push_to_hub)
    add_task_importer(_import_task_packages)


def _push_to_hub(model, repo_id: str, **kwargs):
    """``model.push_to_hub`` of a gated_vpt model: the Hub layer's push, which uploads this package's card."""
    from .hub import push_to_hub

    return push_to_hub(model, repo_id, **kwargs)


def _import_task_packages() -> None:
    """Importing a task package registers its task with ``gated_vpt.tasks``, where the model card reads it."""
    from . import segmentation  # noqa: F401


def __getattr__(name: str):
    if name in __all__:
        load_core()
        return globals()[name]
    raise AttributeError(f"module 'gated_vpt' has no attribute {name!r}")


# The gated-vpt command defers this until a command runs (gated_vpt.cli), so that its --help answers before torch,
# transformers and peft would be loaded; everywhere else importing the package loads the core.
if Path((getattr(sys, "argv", None) or [""])[0]).name not in ("gated-vpt", "gated-vpt.exe"):
    load_core()
