"""The paper's data in the layouts its community shares, read without TFDS, with the exact splits of the protocol.

- ``vtab1k``: a folder per VTAB-1k task holding ``train800.txt``, ``val200.txt``, ``train800val200.txt`` and
  ``test.txt``, one ``<relative/image/path> <label>`` per line (paths relative to the task folder; labels are class
  indices).
- ``fgvc``: a folder per data set in VPT's layout holding ``train.json``, ``val.json`` and ``test.json``, each one
  JSON object ``{"<image path>": <class id>, ...}``; as in VPT, paths are relative to the data set's image folder,
  which is the folder itself or its ``images/`` or ``Images/`` subfolder (found from the first entry).

The protocol stage picks the splits (``STAGE_SPLITS``): VTAB-1k tunes on train800 / val200 and trains the final runs
on train800val200, tested on test; FGVC trains on train in both stages (VPT's code uses train + val only for VTAB),
validates on val and tests on test. ``load_layout_datasets`` returns ``datasets.Dataset`` splits with ``image`` and
``label`` columns for the training scripts; ``check_data_folder`` verifies a prepared folder image by image.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

LAYOUTS = ("vtab1k", "fgvc")
LAYOUT_FILES = {
    "vtab1k": ("train800", "val200", "train800val200", "test"),
    "fgvc": ("train", "val", "test"),
}
LAYOUT_SUFFIX = {"vtab1k": ".txt", "fgvc": ".json"}
# stage -> role in the training scripts (train / validation / test) -> split file
STAGE_SPLITS = {
    "vtab1k": {
        "tune": {"train": "train800", "validation": "val200"},
        "final": {"train": "train800val200", "test": "test"},
    },
    "fgvc": {
        "tune": {"train": "train", "validation": "val"},
        "final": {"train": "train", "validation": "val", "test": "test"},
    },
}
LAYOUT_DESCRIPTIONS = {
    "vtab1k": (
        "a VTAB-1k task folder holding train800.txt, val200.txt, train800val200.txt and test.txt, one "
        "'<relative/image/path> <label>' per line, paths relative to the folder"
    ),
    "fgvc": (
        "an FGVC folder in VPT's layout holding train.json, val.json and test.json, each mapping image path to class "
        "id, paths relative to the folder or to its images/ or Images/ subfolder"
    ),
}
FGVC_IMAGE_FOLDERS = (".", "images", "Images")
PREPARE_HINT = "See docs/RECIPES.md for where the data comes from, and check a folder with `gated-vpt data check <folder>`."
MAX_LISTED_PROBLEMS = 10
# The training splits of every VTAB-1k task (its test splits differ per task).
VTAB1K_SPLIT_SIZES = {"train800": 800, "val200": 200, "train800val200": 1000}


class DataLayoutError(ValueError):
    """A benchmark folder that is missing, empty or malformed; the message names the folder and the expected layout."""


@dataclass
class SplitFile:
    """One split file of a prepared folder: the images it lists (resolved paths), their raw labels, and what is
    wrong with it (malformed lines, missing images), one message per problem."""

    name: str
    path: Path
    images: list[Path] = field(default_factory=list)
    labels: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def detect_layout(folder: Union[str, Path]) -> str:
    """``vtab1k`` or ``fgvc``, from the split files present in ``folder``; raises ``DataLayoutError`` when the folder
    is missing or holds neither layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataLayoutError(
            f"No data folder {folder}. Expected {LAYOUT_DESCRIPTIONS['vtab1k']}, or {LAYOUT_DESCRIPTIONS['fgvc']}. "
            + PREPARE_HINT
        )
    found = [layout for layout in LAYOUTS if any(_split_path(folder, layout, n).is_file() for n in LAYOUT_FILES[layout])]
    if len(found) != 1:
        what = "split files of both layouts" if found else "no split files"
        raise DataLayoutError(
            f"{folder} holds {what}. Expected {LAYOUT_DESCRIPTIONS['vtab1k']}, or {LAYOUT_DESCRIPTIONS['fgvc']}; "
            "pass the layout explicitly (--data_layout / --layout) if the folder is right. " + PREPARE_HINT
        )
    return found[0]


def read_split(folder: Union[str, Path], layout: str, name: str) -> SplitFile:
    """Parse split ``name`` of ``folder`` in ``layout``, collecting every malformed line and missing image."""
    folder = Path(folder)
    split = SplitFile(name, _split_path(folder, layout, name))
    if not split.path.is_file():
        split.problems.append(f"missing split file {split.path}")
        return split
    entries = _read_vtab1k_lines(split) if layout == "vtab1k" else _read_fgvc_json(split)
    if not entries and not split.problems:
        split.problems.append(f"{split.path} lists no images")
    if not entries:
        return split
    bases = [folder, folder.parent] if layout == "vtab1k" else [folder / sub for sub in FGVC_IMAGE_FOLDERS]
    first = entries[0][0]
    base = next((b for b in bases if (b / first).is_file()), bases[0])
    for relative, label in entries:
        path = (base / relative) if not Path(relative).is_absolute() else Path(relative)
        if not path.is_file():
            split.problems.append(f"{split.path}: image {relative} not found (looked in {base})")
        split.images.append(path)
        split.labels.append(label)
    return split


def read_layout(folder: Union[str, Path], layout: Optional[str] = None) -> tuple[str, dict[str, SplitFile]]:
    """The layout (detected when None) and every split file of ``folder``."""
    layout = detect_layout(folder) if layout is None else _checked_layout(layout)
    if not Path(folder).is_dir():
        raise DataLayoutError(f"No data folder {folder}. Expected {LAYOUT_DESCRIPTIONS[layout]}. " + PREPARE_HINT)
    return layout, {name: read_split(folder, layout, name) for name in LAYOUT_FILES[layout]}


def class_names(layout: str, splits: dict[str, SplitFile]) -> list[str]:
    """The class names, index = class: VTAB-1k labels are indices (``"0" .. str(K-1)``, K = the largest label in any
    split + 1); FGVC class ids of all splits, sorted, as text (VPT maps sorted ids to 0..K-1 the same way)."""
    values = set().union(*(set(s.labels) for s in splits.values()))
    if not values:
        return []
    if layout == "vtab1k":
        return [str(i) for i in range(max(values) + 1)]
    return [str(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))]


def load_layout_datasets(
    folder: Union[str, Path], layout: Optional[str] = None, stage: str = "final"
):
    """The ``train`` / ``validation`` / ``test`` splits of a prepared folder for protocol ``stage`` (``tune`` or
    ``final``, see ``STAGE_SPLITS``) as a ``datasets.DatasetDict`` with ``image`` (decoded lazily from the files) and
    ``label`` (``ClassLabel``) columns. Raises ``DataLayoutError`` naming the folder, the expected layout and the
    first problems when the folder is missing, empty or malformed.

    Example:

    ```py
    >>> # needs the prepared VTAB-1k DTD folder (docs/RECIPES.md says where the data comes from)
    >>> splits = load_layout_datasets("data/vtab-1k/dtd", "vtab1k", stage="tune")  # doctest: +SKIP
    >>> {role: len(split) for role, split in splits.items()}  # doctest: +SKIP
    {'train': 800, 'validation': 200}
    ```
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    if stage not in ("tune", "final"):
        raise ValueError(f"stage={stage!r} is invalid: use 'tune' or 'final'.")
    layout, splits = read_layout(folder, layout)
    problems = [p for s in splits.values() for p in s.problems] + _label_problems(layout, splits)
    if problems:
        raise DataLayoutError(_problems_message(folder, layout, problems))
    names = class_names(layout, splits)
    index = {value: i for i, value in enumerate(names)}
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    chosen = {}
    for role, name in STAGE_SPLITS[layout][stage].items():
        split = splits[name]
        labels = split.labels if layout == "vtab1k" else [index[str(v)] for v in split.labels]
        chosen[role] = Dataset.from_dict({"image": [str(p) for p in split.images], "label": labels}, features=features)
    return DatasetDict(chosen)


@dataclass
class DataCheck:
    """What ``check_data_folder`` found: images and classes per split, the class count, how many images were
    decoded, one message per problem (empty when the folder is ready) and notes (how train800val200 matched, classes
    absent from a split)."""

    folder: Path
    layout: str
    counts: dict[str, tuple[int, int]]
    num_classes: int
    num_labels: Optional[int]
    decoded: int
    problems: list[str]
    notes: list[str] = field(default_factory=list)
    undecodable: int = 0

    def format(self) -> str:
        """A short report: the split table, the class count against the recipe's, and the decoded images."""
        width = max(len(name) for name in self.counts)
        lines = [f"{self.folder} ({self.layout} layout)", f"  {'split':<{width}}  images  classes"]
        lines += [f"  {name:<{width}}  {n:>6}  {k:>7}" for name, (n, k) in self.counts.items()]
        expected = f" (num_labels {self.num_labels})" if self.num_labels is not None else ""
        lines.append(f"  classes: {self.num_classes}{expected}")
        if self.decoded:
            failed = f"; {self.undecodable} failed, each named below" if self.undecodable else ""
            lines.append(f"  images decoded: {self.decoded - self.undecodable} of {self.decoded} (every file listed, "
                         f"each opened and fully decoded{failed})")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def check_data_folder(
    folder: Union[str, Path],
    layout: Optional[str] = None,
    num_labels: Optional[int] = None,
    decode: bool = True,
    workers: int = 8,
) -> DataCheck:
    """Verify a prepared folder before training: every split file present and well formed, every listed image
    present and (``decode``) fully decodable by Pillow, the splits as the protocol needs them (VTAB-1k:
    train800val200 = train800 + val200, matched by name and label or, when it lists its own copies as the common
    vtab-1k archive does, by file content and label; disjoint from test; FGVC: disjoint splits), and the class count
    equal to ``num_labels`` when given. Without ``num_labels`` every validation/test class must be in its train
    split; with it, classes absent from a split are allowed and noted. Problems are collected, not raised; a folder
    that is missing or holds no known layout raises ``DataLayoutError``.

    Example:

    ```py
    >>> # needs the prepared VTAB-1k DTD folder (docs/RECIPES.md says where the data comes from)
    >>> report = check_data_folder("data/vtab-1k/dtd", num_labels=47)  # doctest: +SKIP
    >>> print(report.format()); report.problems  # doctest: +SKIP
    []
    ```
    """
    layout, splits = read_layout(folder, layout)
    problems = [p for s in splits.values() for p in s.problems] + _label_problems(layout, splits)
    names = class_names(layout, splits)
    relations, notes = _split_problems(layout, splits, names, num_labels, workers)
    problems += relations
    if num_labels is not None and names and len(names) != num_labels:
        problems.append(
            f"the splits hold {len(names)} classes but num_labels is {num_labels}: fix the data or the recipe"
        )
    decoded, undecodable = 0, []
    if decode:
        existing = sorted({p for s in splits.values() for p in s.images if p.is_file()})
        with ThreadPoolExecutor(max_workers=workers) as pool:
            undecodable = [p for p in pool.map(_decode_problem, existing) if p]
        decoded = len(existing)
    counts = {name: (len(s.images), len(set(s.labels))) for name, s in splits.items()}
    sizes = [f"{name} lists {counts[name][0]} images where VTAB-1k's has {size}: a subset or another split (the "
             "paper's numbers are for the full splits)"
             for name, size in VTAB1K_SPLIT_SIZES.items() if layout == "vtab1k" and counts[name][0] != size]
    return DataCheck(Path(folder), layout, counts, len(names), num_labels, decoded, problems + undecodable,
                     sizes + notes, len(undecodable))


def _checked_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown data layout {layout!r}: use one of {list(LAYOUTS)}.")
    return layout


def _split_path(folder: Path, layout: str, name: str) -> Path:
    return folder / f"{name}{LAYOUT_SUFFIX[layout]}"


def _read_vtab1k_lines(split: SplitFile) -> list[tuple[str, int]]:
    """``<path> <label>`` lines (any whitespace; the label is the last field, so paths may hold spaces; blank lines
    and Windows line ends are fine)."""
    entries = []
    with open(split.path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(None, 1)
            label = parts[1] if len(parts) == 2 else ""
            if not (label.isdigit() and parts[0]):
                split.problems.append(
                    f"{split.path}:{number}: expected '<relative/image/path> <class index>', got {text[:80]!r}"
                )
                continue
            entries.append((parts[0], int(label)))
    return entries


def _read_fgvc_json(split: SplitFile) -> list[tuple[str, object]]:
    try:
        mapping = json.loads(split.path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        split.problems.append(f"{split.path}: not valid JSON ({error})")
        return []
    if not isinstance(mapping, dict):
        split.problems.append(f"{split.path}: expected a JSON object {{\"<image path>\": <class id>, ...}}")
        return []
    entries = []
    for path, label in mapping.items():
        if isinstance(label, bool) or not isinstance(label, (int, str)) or (isinstance(label, int) and label < 0):
            split.problems.append(f"{split.path}: {path!r} maps to {label!r}, not a class id (an integer or a name)")
            continue
        entries.append((path, label))
    return entries


def _label_problems(layout: str, splits: dict[str, SplitFile]) -> list[str]:
    kinds = {type(label) for s in splits.values() for label in s.labels}
    if len(kinds) > 1:
        return [f"the {layout} split files mix integer and text class ids: use one kind"]
    return []


# The protocol's train split -> the splits evaluated against it.
EVALUATED_AGAINST = {
    "vtab1k": {"train800": ("val200",), "train800val200": ("test",)},
    "fgvc": {"train": ("val", "test")},
}


def _split_problems(
    layout: str, splits: dict[str, SplitFile], names: list[str], num_labels: Optional[int], workers: int
) -> tuple[list[str], list[str]]:
    """The protocol's split relations (only between split files that parsed cleanly): problems, and notes."""
    clean = {name: s for name, s in splits.items() if not s.problems and s.images}
    pairs = {name: set(zip(s.images, s.labels)) for name, s in clean.items()}
    problems, notes = [], []
    if layout == "vtab1k":
        if {"train800", "val200", "train800val200"} <= set(pairs):
            if pairs["train800"] & pairs["val200"]:
                problems.append(f"train800.txt and val200.txt share {len(pairs['train800'] & pairs['val200'])} images")
            elif pairs["train800val200"] == pairs["train800"] | pairs["val200"]:
                notes.append("train800val200 = train800 + val200, matched by name and label (the same files)")
            else:
                matched, mismatch = _union_by_content(clean, pairs, workers)
                notes += matched
                problems += mismatch
        if {"train800val200", "test"} <= set(pairs):
            shared = {p for p, _ in pairs["train800val200"]} & {p for p, _ in pairs["test"]}
            if shared:
                problems.append(f"test.txt shares {len(shared)} images with train800val200.txt")
    else:
        listed = list(pairs)
        for i, first in enumerate(listed):
            for second in listed[i + 1:]:
                shared = {p for p, _ in pairs[first]} & {p for p, _ in pairs[second]}
                if shared:
                    problems.append(f"{first}.json and {second}.json share {len(shared)} images")
    absent = {name: len(names) - len(set(s.labels)) for name, s in clean.items() if len(set(s.labels)) < len(names)}
    if num_labels is not None:
        if absent:
            notes.append(
                f"classes absent from a split (allowed: the class count is given, {num_labels}): "
                + ", ".join(f"{name} lacks {count} of {len(names)}" for name, count in absent.items())
                + "; the classifier keeps an output per class and their evaluation images are scored as usual"
            )
        return problems, notes
    suffix = LAYOUT_SUFFIX[layout]
    for train, evaluated in EVALUATED_AGAINST[layout].items():
        for name in (n for n in evaluated if n in clean and train in clean):
            unseen = set(clean[name].labels) - set(clean[train].labels)
            if unseen:
                problems.append(
                    f"{name}{suffix} has {len(unseen)} classes that {train}{suffix} lacks, e.g. "
                    f"{sorted(map(str, unseen))[:3]}: give the class count (--num_labels or --recipe) if that is intended "
                    "(VTAB-1k SUN397: 397 classes, 1,000 training images)"
                )
    return problems, notes


def _union_by_content(clean: dict[str, SplitFile], pairs: dict[str, set], workers: int) -> tuple[list[str], list[str]]:
    """train800val200 listing its own copies (the common vtab-1k archive): compare the files' bytes and labels.
    Returns (the note when they match, the problem when they do not)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = {name: list(pool.map(_file_digest, clean[name].images)) for name in ("train800", "val200", "train800val200")}
    content = {name: Counter(zip(digests[name], clean[name].labels)) for name in digests}
    if content["train800val200"] == content["train800"] + content["val200"]:
        return [
            "train800val200 = train800 + val200, matched by file content and label (train800val200 lists its own "
            "copies of the same files, as the common vtab-1k archive stores them)"
        ], []
    by_name = len(pairs["train800val200"] ^ (pairs["train800"] | pairs["val200"]))
    expected = content["train800"] + content["val200"]
    by_content = sum((expected - content["train800val200"]).values()) + sum((content["train800val200"] - expected).values())
    return [], [
        f"train800val200.txt is not train800.txt + val200.txt ({by_name} entries differ by name and label, "
        f"{by_content} by file content and label)"
    ]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decode_problem(source: Union[str, Path, bytes]) -> Optional[str]:
    """Why Pillow cannot fully decode the image at ``source`` (a path, or the file's bytes), or None."""
    from PIL import Image  # only when images are decoded: checking a folder's lists needs no Pillow

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
    except Exception as error:  # Pillow raises many kinds (OSError, SyntaxError, ValueError, ...) on bad files
        return f"{type(error).__name__}: {error}"
    return None


def _decode_problem(path: Path) -> Optional[str]:
    problem = decode_problem(path)
    return None if problem is None else f"{path}: cannot decode the image ({problem})"


def _problems_message(folder: Union[str, Path], layout: str, problems: list[str]) -> str:
    shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return (
        f"The {layout} data in {folder} is not ready ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n"
        f"{shown}{tail}\nExpected {LAYOUT_DESCRIPTIONS[layout]}. {PREPARE_HINT}"
    )
