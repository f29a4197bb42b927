"""Telling local paths from Hub repo ids, with only the standard library (the command line checks a path before it
imports torch). A name that can only be a path is never looked up on the Hub; when it does not exist, the error
says so and names what is close.

Example:

```py
>>> from gated_vpt.paths import is_local_path
>>> is_local_path("user/mae-cub-gated"), is_local_path("./runs/cub"), is_local_path("/data/adapters/cub")
(False, True, True)
```
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Optional, Union

# The form of a Hub repo id (huggingface_hub's rule): "name" or "namespace/name", word characters, "-" and ".".
_HUB_ID = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b")


def is_local_path(name: Union[str, Path]) -> bool:
    """Whether ``name`` can only mean a path on this machine, never a Hub repo id: absolute, ``./``, ``../`` or
    ``~``, not of the form ``name`` or ``namespace/name``, a path whose first folder exists here, or a path that
    exists relative to a folder above the working directory. Such a name is never looked up on the Hub."""
    text = str(name)
    if isinstance(name, Path) or text.startswith((".", "~")) or Path(text).is_absolute() or not _HUB_ID.fullmatch(text):
        return True
    return ("/" in text and Path(text.split("/")[0]).is_dir()) or _found_above(text) is not None


def missing_folder(name: Union[str, Path], expected: str = "an existing adapter folder") -> FileNotFoundError:
    """The error for a local path that does not exist, naming what is there instead when something is close; its
    last sentence asks for ``expected`` or a Hub repo id."""
    path = Path(name).expanduser()
    message = f"No such folder: {name} (looked in {Path.cwd()})." if not path.is_absolute() else f"No such folder: {name}."
    above = _found_above(str(name))
    existing = next((parent for parent in path.parents if parent.is_dir()), None)
    if above is not None:
        message += f" It exists relative to a folder above this one: {above}."
    elif existing is not None and path.parent != Path("."):
        names = sorted(child.name for child in existing.iterdir() if child.is_dir())
        missing = path.relative_to(existing).parts[0]
        close = difflib.get_close_matches(missing, names, n=3)
        if close:
            message += f" Similar names in {existing}/: {', '.join(close)}."
    return FileNotFoundError(f"{message} Pass {expected}, or a Hub repo id such as user/name.")


def _found_above(name: str) -> Optional[Path]:
    """``name`` relative to the nearest folder above the working directory where it exists, if any."""
    if Path(name).is_absolute() or name.startswith("~"):
        return None
    return next((parent / name for parent in Path.cwd().parents if (parent / name).exists()), None)
