"""Image-classification data: loading (Hub id, local imagefolder, embedded default), checks, and the paper's
transforms, applied per sample with a generator seeded by (seed, epoch, index) so that a resumed run sees exactly
the augmentations an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Optional, Union

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import Sampler

from .benchmark_data import decode_problem, load_layout_datasets
from .resize import RESIZE_METHODS, tf_legacy_bilinear_resize

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_COLUMN_GUESSES = ("image", "img")
LABEL_COLUMN_GUESSES = ("label", "labels")
# The embedded default: scikit-learn's 1,797 8x8 digits split like VTAB-1k (800 train, 200 validation, rest test).
EMBEDDED_SPLIT_SIZES = {"train": 800, "validation": 200}
EMBEDDED_SPLIT_SEED = 0


def embedded_digits() -> DatasetDict:
    """scikit-learn's digits (shipped in its wheel) as a ``DatasetDict`` with ``image`` (8x8 grayscale PIL) and
    ``label`` columns, split by a fixed stratified shuffle into train / validation / test (800 / 200 / 797)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    order = _stratified_order(labels, np.random.default_rng(EMBEDDED_SPLIT_SEED))
    bounds = np.cumsum([0, *EMBEDDED_SPLIT_SIZES.values(), len(labels)])
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    splits = {}
    for name, start, stop in zip((*EMBEDDED_SPLIT_SIZES, "test"), bounds[:-1], bounds[1:]):
        rows = order[start:stop]
        splits[name] = Dataset.from_dict(
            {"image": [PILImage.fromarray(images[i], mode="L") for i in rows], "label": labels[rows].tolist()},
            features=features,
        )
    return DatasetDict(splits)


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation in which every prefix holds the classes in (nearly) their overall proportions."""
    keys = np.empty(len(labels))
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        keys[rng.permutation(members)] = (np.arange(len(members)) + rng.random()) / len(members)
    return np.argsort(keys, kind="stable")


def load_image_datasets(
    dataset_name: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    train_dir: Optional[str] = None,
    validation_dir: Optional[str] = None,
    test_dir: Optional[str] = None,
    splits: Optional[dict[str, Optional[str]]] = None,
    data_dir: Optional[str] = None,
    data_layout: Optional[str] = None,
    stage: str = "final",
) -> DatasetDict:
    """Load ``train`` / ``validation`` / ``test`` splits from a Hub data set, local image folders, a benchmark folder
    (``data_dir`` in ``data_layout``, see ``benchmark_data``; ``stage`` picks its splits; the layout is ignored
    without a folder), or (with none given) the embedded digits. ``splits`` maps those roles to the source's split names (None: role absent)."""
    from datasets import DatasetDict, load_dataset

    sources = [flag for flag, given in (("--dataset_name", dataset_name), ("--data_dir", data_dir),
                                        ("--train_dir/--validation_dir/--test_dir", train_dir or validation_dir or test_dir)) if given]
    if len(sources) > 1:
        raise ValueError(f"Give one data source, not {' and '.join(sources)}.")
    if data_dir:
        return load_layout_datasets(data_dir, data_layout, stage)
    if dataset_name:
        source = load_dataset(dataset_name, dataset_config_name)
    elif train_dir or validation_dir or test_dir:
        files = {role: f"{path}/**" for role, path in (("train", train_dir), ("validation", validation_dir), ("test", test_dir)) if path}
        if "train" not in files:
            raise ValueError("--validation_dir/--test_dir need a --train_dir as well.")
        for role, path in (("train", train_dir), ("validation", validation_dir), ("test", test_dir)):
            if path and not (Path(path).is_dir() and any(p.is_file() for p in Path(path).rglob("*"))):
                raise ValueError(
                    f"No images in the {role} folder {path} (--{role}_dir): expected an image folder "
                    f"{path}/<class name>/<image>. For the paper's benchmarks use --data_dir with --data_layout "
                    "vtab1k or fgvc (docs/RECIPES.md)."
                )
        source = load_dataset("imagefolder", data_files=files)
        splits = {role: role for role in files}
    else:
        return embedded_digits()
    splits = splits or {"train": "train", "validation": "validation", "test": "test"}
    chosen = {}
    for role, name in splits.items():
        if name is None:
            continue
        if name not in source:
            if role == "train" or name != role:
                raise ValueError(f"The data set has no split {name!r} (for {role}); it has {sorted(source)}. Set --{role}_split.")
            continue
        chosen[role] = source[name]
    return DatasetDict(chosen)


def image_files(directory: Union[str, Path]) -> list[Path]:
    """The image files (``IMAGE_SUFFIXES``) under ``directory``, subfolders included, sorted."""
    return sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def find_column(dataset: Dataset, requested: Optional[str], guesses: tuple[str, ...], kind: str, flag: str) -> str:
    """The column holding ``kind`` (image or label): ``requested`` if given, else the first of ``guesses`` present."""
    columns = list(dataset.column_names)
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"The data set has no {kind} column {requested!r}; its columns are {columns}. Set {flag}.")
        return requested
    for name in guesses:
        if name in columns:
            return name
    raise ValueError(f"Could not find the {kind} column (looked for {list(guesses)}); the columns are {columns}. Set {flag}.")


def check_images(dataset: Dataset, column: str, num_channels: int) -> str:
    """Refuse a column that does not hold images; return the mode of its first image (e.g. 'L', 'RGB')."""
    from datasets import Image

    feature = dataset.features[column]
    if not isinstance(feature, Image):
        raise ValueError(
            f"Column {column!r} holds {feature!r}, not images. Point --image_column_name at the image column "
            f"(columns: {list(dataset.column_names)})."
        )
    if num_channels not in (1, 3):
        raise ValueError(f"The backbone expects {num_channels}-channel images; only 1 (L) and 3 (RGB) are supported.")
    return dataset[0][column].mode


def drop_unreadable_images(datasets: DatasetDict, columns: tuple[str, ...], skip: bool) -> DatasetDict:
    """Decode every image of every split once, before training: refuse unreadable ones naming the files, or with
    ``skip`` (``--skip_bad_images``) drop their rows and say how many."""
    from datasets import DatasetDict, Image

    checked = {}
    for role, split in datasets.items():
        bad: dict[int, str] = {}
        for column in (c for c in columns if isinstance(split.features.get(c), Image)):
            raw = split.cast_column(column, Image(decode=False))[column]
            for index, item in enumerate(raw):
                problem = "no image" if item is None else decode_problem(item["path"] if item.get("bytes") is None else item["bytes"])
                if problem is not None:
                    bad.setdefault(index, f"{item.get('path') or f'{role} row {index}'} ({problem})")
        if bad and not skip:
            names = list(bad.values())
            raise ValueError(
                f"{len(bad)} image(s) of the {role} split cannot be decoded: {'; '.join(names[:10])}"
                + (f"; and {len(names) - 10} more" if len(names) > 10 else "")
                + ". Replace or remove them, or pass --skip_bad_images to train without them."
            )
        if bad:
            logger.warning(f"Skipping {len(bad)} unreadable image(s) of the {role} split (--skip_bad_images): {', '.join(list(bad.values())[:5])}")
            split = split.select([i for i in range(len(split)) if i not in bad])
        checked[role] = split
    return DatasetDict(checked)


def check_class_folders(train_dir: Optional[str]) -> None:
    """An image-folder train set needs one sub-folder per class, at least two (``datasets`` adds no label column
    for a single folder)."""
    if not train_dir:
        return
    classes = sorted(entry.name for entry in Path(train_dir).iterdir() if entry.is_dir()) if Path(train_dir).is_dir() else []
    if len(classes) < 2:
        raise ValueError(
            f"--train_dir {train_dir} has {len(classes)} class folder(s) {classes}; image classification needs at least "
            "2 classes, one sub-folder of images per class (<train_dir>/<class>/<image>)."
        )


def check_label_coverage(datasets: DatasetDict, column: str, names: list[str], num_labels: Optional[int] = None) -> None:
    """At least two classes in the train split. Without ``num_labels``, no class in validation or test that training
    never sees; with it (the class count given by a recipe or ``--num_labels``, already checked against ``names``),
    classes absent from a split are allowed (VTAB-1k's SUN397 has 397 classes and 1,000 training images) and one
    warning says how many classes each split lacks."""
    present = {role: set(split[column]) for role, split in datasets.items()}
    train = present.get("train", set())
    if len(train) < 2:
        raise ValueError(
            f"The train split holds {len(train)} class(es) {[names[i] if isinstance(i, int) else i for i in sorted(train, key=str)]}; a "
            "classifier needs at least 2. Check the label column and the data set."
        )
    if num_labels is not None:
        lacking = {role: len(names) - len(labels) for role, labels in present.items()}
        if any(lacking.values()):
            logger.warning(
                f"Classes absent from a split (allowed: the class count is given, {num_labels}): "
                + ", ".join(f"{role} lacks {count} of {len(names)}" for role, count in lacking.items())
                + ". The classifier keeps one output per class; evaluation images of a class that training lacks are "
                "scored like any other (nearly always errors)."
            )
        return
    for role, labels in present.items():
        unseen = sorted(labels - train, key=str)
        if unseen:
            shown = [names[i] if isinstance(i, int) and 0 <= i < len(names) else i for i in unseen]
            raise ValueError(
                f"The {role} split has classes the train split lacks: {shown}. The classifier could never predict "
                f"them; use the same classes in every split (train has {len(train)}), or give the class count "
                "(--num_labels) to train a head over every class anyway."
            )


def target_mode(num_channels: int) -> str:
    return "RGB" if num_channels == 3 else "L"


def convert_image(image: PILImage.Image, mode: str) -> PILImage.Image:
    """``image`` in ``mode`` (``"RGB"`` or ``"L"``) without silent damage. Pillow clips 16- and 32-bit integer
    images to 255 (a 16-bit scan turns white) and float images to integers (values in [0, 1] turn black); these are
    scaled to 8 bits first: ``I;16`` modes from 0..65535, ``I`` from 0..255 or else 0..65535, ``F`` from 0..1 or
    else 0..255. Values outside those ranges, and modes Pillow cannot convert, raise ``ValueError``.

    Example:

    ```py
    >>> import numpy as np
    >>> sixteen_bit = PILImage.fromarray(np.full((2, 2), 32896, dtype=np.uint16))
    >>> convert_image(sixteen_bit, "RGB").getpixel((0, 0))
    (128, 128, 128)
    ```
    """
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min(initial=0)), float(values.max(initial=0))
        if image.mode == "F" and low >= 0 and high <= 1:
            scale = 255.0
        elif image.mode.startswith("I;16") or (image.mode == "I" and 255 < high <= 65535):
            scale = 255 / 65535
        elif low >= 0 and high <= 255:
            scale = 1.0
        else:
            raise ValueError(
                f"An image of mode {image.mode} holds values from {low:g} to {high:g}, which have no 8-bit meaning (the "
                "ranges understood: 0..255, 0..65535 for 16-bit, 0..1 for floating point). Save it as an 8-bit image."
            )
        if low < 0:
            raise ValueError(f"An image of mode {image.mode} holds negative values ({low:g}); save it as an 8-bit image.")
        image = PILImage.fromarray(np.round(values * scale).astype(np.uint8))
    try:
        return image.convert(mode)
    except ValueError:  # e.g. LAB has no direct way to L: through RGB
        try:
            return image.convert("RGB").convert(mode)
        except ValueError as error:
            raise ValueError(f"An image of mode {image.mode} cannot be converted to {mode} ({error}); save it as RGB or grayscale.") from error


def label_names(datasets: DatasetDict, column: str, num_labels: Optional[int]) -> list[str]:
    """Class names of the label ``column`` (a ``ClassLabel``, or integers 0..K-1); checks every split and, when
    given, that there are ``num_labels`` classes."""
    from datasets import ClassLabel

    train = datasets["train"]
    feature = train.features[column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
    else:
        values = sorted(set().union(*(set(split[column]) for split in datasets.values() if column in split.column_names)))
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise ValueError(
                f"Label column {column!r} holds {feature!r}; use class indices or a ClassLabel column "
                f"(e.g. dataset.class_encode_column({column!r}))."
            )
        if values[0] < 0:
            raise ValueError(f"Labels in {column!r} must be class indices 0..K-1; found {values[0]}.")
        names = [str(i) for i in range(values[-1] + 1)]
    for role, split in datasets.items():
        if column not in split.column_names:
            raise ValueError(f"The {role} split has no label column {column!r}; its columns are {split.column_names}.")
        if not isinstance(feature, ClassLabel):
            continue
        other = split.features[column]
        if not isinstance(other, ClassLabel) or list(other.names) != names:
            raise ValueError(f"The {role} split's labels differ from the train split's ({other!r} vs {feature!r}).")
    if num_labels is not None and num_labels != len(names):
        raise ValueError(
            f"--num_labels={num_labels} but the data set has {len(names)} classes; the classifier head must have one "
            "output per class. Fix --num_labels (or the recipe's num_labels) or the data set."
        )
    return names


def image_normalisation(
    model_name_or_path: Optional[str], kind: Literal["imagenet", "backbone"] = "backbone"
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``kind='imagenet'``: ImageNet's fixed mean and std (the paper's recipes). ``kind='backbone'``: the backbone's
    own ``image_mean`` / ``image_std`` from its ``preprocessor_config.json`` (ImageNet's when it has none)."""
    from transformers.utils import cached_file

    if kind == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if kind != "backbone":
        raise ValueError(f"--image_normalization={kind!r} is invalid: use 'imagenet' or 'backbone'.")

    path = cached_file(model_name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    if path is None:
        logger.warning("%s has no preprocessor_config.json; normalising with ImageNet's mean and std.", model_name_or_path)
        return IMAGENET_MEAN, IMAGENET_STD
    with open(path) as handle:
        config = json.load(handle)
    return tuple(config.get("image_mean", IMAGENET_MEAN)), tuple(config.get("image_std", IMAGENET_STD))


@dataclass(frozen=True)
class ImageTransform:
    """The paper's transforms (VPT's code): ``fgvc`` resizes the shorter side to ``image_size * 256/224`` (256 for
    224; aspect ratio kept, the longer side truncated as torchvision's ``Resize(256)`` does), then trains on a random
    ``image_size`` crop with a horizontal flip and evaluates on the center crop; ``vtab`` resizes straight to
    ``image_size`` x ``image_size`` without augmentation. Both then normalise with ``mean`` and ``std`` (the paper:
    ImageNet's, ``IMAGENET_MEAN`` / ``IMAGENET_STD``). ``resize`` picks how: ``pil`` (Pillow's bilinear, on uint8)
    or ``tf_legacy_bilinear`` (TensorFlow v1's legacy bilinear on float pixels, as the released code resizes VTAB
    images; ``gated_vpt.training.resize``).

    Example:

    ```py
    >>> from PIL import Image
    >>> transform = ImageTransform("fgvc", 224, IMAGENET_MEAN, IMAGENET_STD, num_channels=3, train=True)
    >>> transform(Image.new("RGB", (500, 375)), torch.Generator().manual_seed(0)).shape
    torch.Size([3, 224, 224])
    ```
    """

    kind: Literal["fgvc", "vtab"]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_channels: int = 3
    train: bool = False
    resize: Literal["pil", "tf_legacy_bilinear"] = "pil"

    def __post_init__(self):
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"--resize={self.resize!r} is invalid: use one of {list(RESIZE_METHODS)}.")

    @property
    def random(self) -> bool:
        return self.train and self.kind == "fgvc"

    def __call__(self, image: PILImage.Image, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        image = convert_image(image, target_mode(self.num_channels))
        if self.kind == "vtab":
            return self._normalised(self._resized(image, self.image_size, self.image_size))
        width, height = shorter_side_size(image.size, int(math.floor(self.image_size * 256 / 224 + 0.5)))
        pixels = self._resized(image, width, height)
        if self.train:
            top = int(torch.randint(0, height - self.image_size + 1, (), generator=generator))
            left = int(torch.randint(0, width - self.image_size + 1, (), generator=generator))
            flip = bool(torch.rand((), generator=generator) < 0.5)
        else:
            top, left = int(round((height - self.image_size) / 2.0)), int(round((width - self.image_size) / 2.0))
            flip = False
        pixels = pixels[:, top : top + self.image_size, left : left + self.image_size]
        return self._normalised(pixels.flip(-1) if flip else pixels)

    def _resized(self, image: PILImage.Image, width: int, height: int) -> torch.Tensor:
        """The image resized to ``width`` x ``height`` as a (channels, height, width) float tensor in [0, 1]."""
        if self.resize == "pil":
            return _pixels(image.resize((width, height), PILImage.BILINEAR)) / 255.0
        return tf_legacy_bilinear_resize(_pixels(image), (height, width)) / 255.0

    def _normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean[: self.num_channels]).view(-1, 1, 1)
        std = torch.tensor(self.std[: self.num_channels]).view(-1, 1, 1)
        return (pixels - mean) / std


def _pixels(image: PILImage.Image) -> torch.Tensor:
    """A PIL image's pixels as a (channels, height, width) float32 tensor of 0..255 values."""
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array.reshape(*array.shape[:2], -1).copy()).permute(2, 0, 1)


def shorter_side_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``shorter`` and the aspect ratio kept (longer side truncated, as
    torchvision's ``Resize(int)``)."""
    width, height = size
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


class TransformedImages(torch.utils.data.Dataset):
    """A split as ``{"pixel_values", "labels"}`` samples; random transforms draw from a generator seeded by
    ``(seed, epoch, index)``, so every sample's augmentation is reproducible whatever order or process loads it."""

    def __init__(self, dataset: Dataset, image_column: str, label_column: str, transform: ImageTransform, seed: int = 0):
        self.dataset = dataset
        self.image_column = image_column
        self.label_column = label_column
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.dataset[int(index)]
        generator = None
        if self.transform.random:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, int(index)))
        return {"pixel_values": self.transform(row[self.image_column], generator), "labels": torch.tensor(row[self.label_column])}


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation of ``range(length)`` per epoch, a function of ``(seed, epoch)`` only: resuming at
    epoch e (and skipping the batches already seen) replays exactly the order of an uninterrupted run."""

    def __init__(self, length: int, seed: int = 0):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.length, generator=generator).tolist())


def mix_seed(*values: int) -> int:
    """A 63-bit seed from a few integers (distinct tuples give unrelated seeds)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value + 0x9E3779B97F4A7C15 + (state << 6) + (state >> 2))) & 0xFFFFFFFFFFFFFFFF
    return state & 0x7FFFFFFFFFFFFFFF
