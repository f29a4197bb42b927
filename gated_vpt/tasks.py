"""The tasks an adapter is trained for, as its model card and the Hub show them: a registry the task packages fill.

``gated_vpt.card`` writes every card from this table and imports no task package. The card registers
image classification itself (the default: an adapter whose heads no other task claims is a classifier);
``gated_vpt.segmentation`` registers semantic segmentation when it is imported. The package's ``__init__``, which
lies above the task packages, hands ``add_task_importer`` what imports them, so a card written before any was
imported still knows every task (``registered_tasks``). A new task is one ``register_task`` call in its own package
and one import in that importer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

# Shared by the usage sections: the note after a local base model's path, and how to get the command (no package
# index serves gated-vpt: it installs from a checkout of its repository).
LOCAL_NOTE = "  # a local folder: the path to your copy"
INSTALL = "`pip install -e .` in a checkout of the gated-vpt repository"


@dataclass(frozen=True)
class Task:
    """One task as the card and the Hub show it.

    ``name`` is the recipes' ``task_type``; ``pipeline_tag`` the Hub's (also the model-index task type); ``title``
    its display name; ``trained`` what the adapter holds besides prompts, gates and temperatures; ``head_modules``
    the ``modules_to_save`` that mark an adapter of this task; ``usage(adapter_id, base_model, settings,
    local_base, num_labels)`` the card's usage section; ``save_files(model, directory)`` writes the task's own
    files beside an adapter saved from ``model`` before it is pushed.

    Example:

    ```py
    >>> task = Task("image-captioning", "image-to-text", "Image Captioning", "the text decoder", ("decoder",))
    >>> task.claims(["decoder", "classifier"]), task.claims(["classifier"])
    (True, False)
    ```
    """

    name: str
    pipeline_tag: str
    title: str
    trained: str
    head_modules: tuple[str, ...] = ()
    usage: Optional[Callable[[str, Optional[str], dict, bool, Optional[int]], str]] = None
    save_files: Optional[Callable[[Any, Path], None]] = None

    def claims(self, modules_to_save: Optional[Sequence[str]]) -> bool:
        """Whether an adapter saving these modules is of this task."""
        return bool(self.head_modules) and set(self.head_modules) <= set(modules_to_save or ())


TASKS: dict[str, Task] = {}
_importers: list[Callable[[], object]] = []


def register_task(task: Task) -> Task:
    """Add ``task`` to the table (or replace the one of that name)."""
    TASKS[task.name] = task
    return task


def add_task_importer(importer: Callable[[], object]) -> None:
    """Have ``registered_tasks`` call ``importer`` (which imports task packages) once, when a task is first needed."""
    if importer not in _importers:
        _importers.append(importer)


def registered_tasks() -> dict[str, Task]:
    """The table, once the task packages named by ``add_task_importer`` have been imported."""
    while _importers:
        _importers.pop()()
    return TASKS
