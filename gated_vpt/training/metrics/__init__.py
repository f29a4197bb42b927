"""``evaluate`` metric modules carried by the package, so that evaluation needs no download."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """``evaluate.load`` on the module ``<name>.py`` next to this file (e.g. ``load_metric("accuracy")``).

    Results are kept in memory by default, so that several processes of one run do not share cache files.
    """
    kwargs.setdefault("keep_in_memory", True)
    path = Path(__file__).with_name(f"{name}.py")
    if not path.is_file():
        available = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem != "__init__")
        raise ValueError(f"No bundled metric {name!r}; available: {available}.")
    import evaluate  # here, not at import: the training scripts answer --help and refuse bad input sooner

    return evaluate.load(str(path), **kwargs)
