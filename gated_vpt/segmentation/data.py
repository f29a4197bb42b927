"""Segmentation data: image/mask pairs from the Hub or a local folder, checks, and SETR's transforms.

Training transform (SETR / mmsegmentation's ADE20K pipeline): random rescale by a ratio in [0.5, 2] of a
``(4 * crop, crop)`` box, random ``crop x crop`` crop (retried so that no class covers more than 75 % of it), a
horizontal flip, photometric jitter (brightness, contrast, saturation, hue), normalisation, padding to the crop
size (masks padded with the ignore index). Test transform: rescale into the same box at ratio 1; the mask keeps its
original size, where the metrics are computed.

Masks are single-channel label maps. With ``reduce_labels`` (ADE20K), mask value 0 ("other") becomes the ignore
index and 1..N become classes 0..N-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage
from torch.nn import functional as F

from ..training.data import IMAGE_SUFFIXES, TransformedImages, convert_image, image_files, mix_seed

MASK_FOLDERS = ("annotations", "masks", "labels")


def find_image_mask_pairs(directory: str | Path) -> Dataset:
    """A dataset with ``image`` and ``annotation`` columns from ``<directory>/images/<name>.<ext>`` and the mask of
    the same name (without extension) in ``<directory>/annotations/`` (or ``masks/``, ``labels/``), subfolders
    included. ADE20K's ``ADEChallengeData2016/{images,annotations}/training`` fits after a symlink per split."""
    directory = Path(directory)
    images_dir = directory / "images"
    masks_dir = next((directory / name for name in MASK_FOLDERS if (directory / name).is_dir()), None)
    if not images_dir.is_dir() or masks_dir is None:
        raise FileNotFoundError(
            f"{directory} must hold an images/ folder and a masks folder ({', '.join(MASK_FOLDERS)}) with one mask per "
            "image under the same name, e.g. images/0001.jpg and annotations/0001.png."
        )
    images = {p.relative_to(images_dir).with_suffix(""): p for p in image_files(images_dir)}
    masks = {p.relative_to(masks_dir).with_suffix(""): p for p in image_files(masks_dir)}
    missing = sorted(str(k) for k in images.keys() - masks.keys())
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images in {images_dir} have no mask in {masks_dir} (first: {missing[:3]}); every image "
            "needs a mask with the same name."
        )
    if not images:
        raise FileNotFoundError(f"{images_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    keys = sorted(images)
    dataset = Dataset.from_dict({"image": [str(images[k]) for k in keys], "annotation": [str(masks[k]) for k in keys]})
    return dataset.cast_column("image", Image()).cast_column("annotation", Image())


def to_tensors(image: PILImage.Image, mask: PILImage.Image, where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(3, H, W)`` uint8 image and an ``(H, W)`` int64 label map, after checking that their sizes agree."""
    if mask.mode in ("RGB", "RGBA"):
        raise ValueError(
            f"The mask{where} is an {mask.mode} image; masks must be single-channel label maps (one class id per pixel, "
            "e.g. mode L, P or I PNGs). Convert colour-coded masks to class ids first."
        )
    if image.size != mask.size:
        raise ValueError(
            f"The mask{where} is {mask.size[0]}x{mask.size[1]} pixels but its image is {image.size[0]}x{image.size[1]}; "
            "every mask must have exactly its image's size."
        )
    pixels = torch.from_numpy(np.array(convert_image(image, "RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()
    labels = torch.from_numpy(np.array(mask).astype(np.int64))
    return pixels, labels


def reduce_labels(mask: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """ADE20K's convention: label 0 ("other") becomes ``ignore_index``, labels 1..N become 0..N-1."""
    reduced = mask - 1
    reduced[(mask == 0) | (mask == ignore_index)] = ignore_index
    return reduced


def check_labels(mask: torch.Tensor, num_labels: int, ignore_index: int, where: str = "") -> None:
    """Refuse label values outside ``0..num_labels-1`` other than ``ignore_index``."""
    invalid = (mask != ignore_index) & ((mask < 0) | (mask >= num_labels))
    if invalid.any():
        values = sorted(mask[invalid].unique().tolist())
        raise ValueError(
            f"The mask{where} contains label values {values[:10]} outside the class range 0..{num_labels - 1} (ignore "
            f"index {ignore_index}). Set num_labels to the number of classes, or use reduce_labels when 0 means "
            "'other' (ADE20K)."
        )


@dataclass(frozen=True)
class LabelSpec:
    """How mask values map to classes: the class count, the ignore index and ADE20K's label reduction."""

    num_labels: int
    ignore_index: int = 255
    reduce_labels: bool = False

    def prepare(self, image: PILImage.Image, mask: PILImage.Image, where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Checked tensors of one example: sizes agree, labels reduced if asked, every label in range."""
        pixels, labels = to_tensors(image, mask, where)
        if self.reduce_labels:
            labels = reduce_labels(labels, self.ignore_index)
        check_labels(labels, self.num_labels, self.ignore_index, where)
        return pixels, labels


def check_examples(dataset: Dataset, spec: LabelSpec, image_column: str, mask_column: str, split: str, limit: int = 16) -> None:
    """Check the columns and the first ``limit`` examples of a split before training starts."""
    missing = [c for c in (image_column, mask_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The {split} split has no column {missing} (columns: {dataset.column_names}); set --image_column_name / "
            "--mask_column_name."
        )
    for index in range(min(limit, len(dataset))):
        example = dataset[index]
        spec.prepare(example[image_column], example[mask_column], f" of {split} example {index}")


def rescale_size(height: int, width: int, box: tuple[int, int], ratio: float = 1.0) -> tuple[int, int]:
    """The largest size with the image's aspect ratio that fits the box ``(long side, short side) * ratio``."""
    long_side, short_side = box[0] * ratio, box[1] * ratio
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a ``(C, H, W)`` image (any dtype; antialiased when shrinking)."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels.float()
    shrink = size[0] < pixels.shape[-2] or size[1] < pixels.shape[-1]
    return F.interpolate(pixels[None].float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()


def _uniform(generator: Optional[torch.Generator], low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: Optional[torch.Generator], high: int) -> int:
    """An integer in ``0..high`` (inclusive)."""
    return int(torch.randint(0, high + 1, (), generator=generator))


def photometric_jitter(pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """mmsegmentation's photometric distortion on a float image in [0, 255]: each of brightness (+-32), contrast
    (x0.5..1.5), saturation (x0.5..1.5) and hue (+-18 degrees) is applied with probability 1/2."""
    if _uniform(generator) < 0.5:
        pixels = pixels + _uniform(generator, -32, 32)
    if _uniform(generator) < 0.5:
        pixels = pixels * _uniform(generator, 0.5, 1.5)
    pixels = pixels.clamp(0, 255)
    if _uniform(generator) < 0.5:
        gray = (0.299 * pixels[0] + 0.587 * pixels[1] + 0.114 * pixels[2]).unsqueeze(0)
        pixels = (gray + (pixels - gray) * _uniform(generator, 0.5, 1.5)).clamp(0, 255)
    if _uniform(generator) < 0.5:
        pixels = rotate_hue(pixels, math.radians(_uniform(generator, -18, 18))).clamp(0, 255)
    return pixels


# RGB <-> YIQ: hue is the angle of the (I, Q) chroma vector, so a hue shift is a rotation in that plane.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def rotate_hue(pixels: torch.Tensor, angle: float) -> torch.Tensor:
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = torch.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ
    return torch.einsum("ij,jhw->ihw", matrix.to(pixels), pixels)


class SegmentationTransform:
    """SETR's train or test transform of one example; returns ``pixel_values`` (normalised float) and ``labels``.

    Example:

    ```py
    >>> from PIL import Image
    >>> transform = SegmentationTransform(LabelSpec(150, reduce_labels=True), crop_size=512, train=True,
    ...                                   mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> image, mask = Image.new("RGB", (683, 512)), Image.new("L", (683, 512))
    >>> pixel_values, labels = transform(image, mask, torch.Generator().manual_seed(0))
    >>> tuple(pixel_values.shape), tuple(labels.shape)
    ((3, 512, 512), (512, 512))
    ```
    """

    def __init__(
        self,
        labels: LabelSpec,
        crop_size: int,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        scale_range: tuple[float, float] = (0.5, 2.0),
        max_class_ratio: float = 0.75,
        jitter: bool = True,
    ) -> None:
        self.labels = labels
        self.crop_size = crop_size
        self.box = (4 * crop_size, crop_size)
        self.train = train
        self.mean = torch.tensor(mean).view(3, 1, 1) * 255
        self.std = torch.tensor(std).view(3, 1, 1) * 255
        self.scale_range = scale_range
        self.max_class_ratio = max_class_ratio
        self.jitter = jitter

    def __call__(
        self, image: PILImage.Image, mask: PILImage.Image, generator: Optional[torch.Generator] = None, where: str = ""
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train: the random draws come from ``generator`` (per sample, for reproducible resumes)."""
        pixels, labels = self.labels.prepare(image, mask, where)
        if not self.train:
            size = rescale_size(*pixels.shape[-2:], self.box)
            return self.normalize(resize(pixels, size)), labels
        size = rescale_size(*pixels.shape[-2:], self.box, _uniform(generator, *self.scale_range))
        pixels, labels = resize(pixels, size), resize_mask(labels, size)
        pixels, labels = self._crop(pixels, labels, generator)
        if _uniform(generator) < 0.5:
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        if self.jitter:
            pixels = photometric_jitter(pixels, generator)
        return self._pad(self.normalize(pixels), labels)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() - self.mean) / self.std

    def _crop(
        self, pixels: torch.Tensor, labels: torch.Tensor, generator: Optional[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = labels.shape
        crop_h, crop_w = min(self.crop_size, height), min(self.crop_size, width)
        for _ in range(10):
            top, left = _randint(generator, height - crop_h), _randint(generator, width - crop_w)
            window = labels[top : top + crop_h, left : left + crop_w]
            counts = torch.bincount(window[window != self.labels.ignore_index].flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.max_class_ratio:
                break
        return pixels[:, top : top + crop_h, left : left + crop_w], window

    def _pad(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad_h, pad_w = self.crop_size - labels.shape[0], self.crop_size - labels.shape[1]
        if pad_h == 0 and pad_w == 0:
            return pixels, labels
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h), value=0.0)
        labels = F.pad(labels, (0, pad_w, 0, pad_h), value=self.labels.ignore_index)
        return pixels, labels


class SegmentationSamples(TransformedImages):
    """A split as ``{"pixel_values", "labels"}`` samples; the training transform draws from a generator seeded by
    ``(seed, epoch, index)`` (as the classification data sets do), so a resumed run sees the same crops."""

    def __init__(self, dataset: Dataset, image_column: str, mask_column: str, transform: SegmentationTransform, seed: int = 0):
        super().__init__(dataset, image_column, mask_column, transform, seed)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.dataset[int(index)]
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, int(index))) if self.transform.train else None
        pixels, labels = self.transform(row[self.image_column], row[self.label_column], generator, f" of example {index}")
        return {"pixel_values": pixels, "labels": labels}


def collate_train(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.stack([e["labels"] for e in examples]),
    }


def collate_eval(examples: list[dict[str, torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """Test images keep their own sizes, so a batch is a list of images and a list of masks."""
    return {"pixel_values": [e["pixel_values"] for e in examples], "labels": [e["labels"] for e in examples]}
