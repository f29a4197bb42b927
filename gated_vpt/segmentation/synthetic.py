"""A tiny segmentation data set generated in code: coloured shapes on a noisy background, with exact masks.

Classes: 0 background, 1 square, 2 disc, 3 triangle. Each shape class has its own colour family (with random
brightness and per-pixel noise) and shapes overlap at random, so a decoder must use colour and layout, and a
predictor that ignores the image scores far below a trained one. Used by the tests and the ``--quick`` run.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset, Features, Image
from PIL import Image as PILImage

SHAPES_LABELS = {0: "background", 1: "square", 2: "disc", 3: "triangle"}
_COLOURS = {1: (220, 60, 50), 2: (60, 200, 70), 3: (60, 90, 230)}


def shapes_dataset(num_images: int, image_size: int = 32, seed: int = 0) -> Dataset:
    """``num_images`` RGB images of ``image_size`` pixels with ``image`` and ``annotation`` (mode L) columns.

    Example:

    ```py
    >>> data = shapes_dataset(64, image_size=32, seed=0)
    >>> data[0]["annotation"].size, sorted(SHAPES_LABELS)
    ((32, 32), [0, 1, 2, 3])
    ```
    """
    rng = np.random.default_rng(seed)
    images, masks = [], []
    rows, cols = np.mgrid[0:image_size, 0:image_size]
    for _ in range(num_images):
        mask = np.zeros((image_size, image_size), dtype=np.uint8)
        pixels = rng.normal(90, 25, size=(image_size, image_size, 3)) + rng.uniform(-30, 30, size=3)
        for label in rng.choice([1, 2, 3], size=rng.integers(2, 5), replace=True):
            area = _shape(int(label), rows, cols, image_size, rng)
            mask[area] = label
            colour = np.array(_COLOURS[int(label)]) * rng.uniform(0.75, 1.1)
            pixels[area] = colour + rng.normal(0, 15, size=(int(area.sum()), 3))
        images.append(PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB"))
        masks.append(PILImage.fromarray(mask, mode="L"))
    features = Features({"image": Image(), "annotation": Image()})
    return Dataset.from_dict({"image": images, "annotation": masks}, features=features)


def _shape(label: int, rows: np.ndarray, cols: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    size = rng.uniform(0.3, 0.6) * image_size
    top, left = rng.uniform(0, image_size - size, size=2)
    if label == 1:
        return (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    centre_r, centre_c, radius = top + size / 2, left + size / 2, size / 2
    if label == 2:
        return (rows - centre_r) ** 2 + (cols - centre_c) ** 2 <= radius**2
    # An upright isosceles triangle: its half-width grows linearly from the apex down to the base.
    depth = (rows - top) / size
    return (depth >= 0) & (depth <= 1) & (np.abs(cols - centre_c) <= depth * radius)
