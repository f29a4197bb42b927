"""VTAB's resize: TensorFlow v1's legacy bilinear (source coordinate ``x * in / out``, no half-pixel offset, no
antialiasing) on float pixels, against a plain loop over the formula, for up- and downscaling and non-square
images; the VTAB transform with ``resize='tf_legacy_bilinear'``; and how far Pillow's bilinear is from it.

``pytest tests/test_resize.py -s`` prints the table of differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from gated_vpt.training.data import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from gated_vpt.training.resize import tf_legacy_bilinear_resize

# (height, width) in -> out: upscaling (VTAB's 32 px tasks), downscaling, non-square, mixed, identity
SIZES = [((32, 32), (224, 224)), ((375, 500), (224, 224)), ((96, 40), (224, 224)), ((13, 300), (50, 17)),
         ((224, 224), (224, 224)), ((5, 7), (3, 11))]


def source(i: int, size_in: int, size_out: int) -> float:
    """The source coordinate ``i * in / out``, computed in float32 as TensorFlow's kernel does (scale first)."""
    return float(np.float32(i) * (np.float32(size_in) / np.float32(size_out)))


def formula(pixels: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """The legacy bilinear formula, one output pixel at a time, interpolating in float64."""
    channels, in_height, in_width = pixels.shape
    result = np.zeros((channels, out_height, out_width))
    for i in range(out_height):
        y = source(i, in_height, out_height)
        y0 = math.floor(y)
        y1, wy = min(y0 + 1, in_height - 1), y - y0
        for j in range(out_width):
            x = source(j, in_width, out_width)
            x0 = math.floor(x)
            x1, wx = min(x0 + 1, in_width - 1), x - x0
            top = pixels[:, y0, x0] * (1 - wx) + pixels[:, y0, x1] * wx
            bottom = pixels[:, y1, x0] * (1 - wx) + pixels[:, y1, x1] * wx
            result[:, i, j] = top * (1 - wy) + bottom * wy
    return result


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth content plus noise, uint8 RGB (height, width, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    smooth = 127 + 100 * np.sin(x / max(width, 2) * 7 + np.arange(3)[:, None, None]) * np.cos(y / max(height, 2) * 5)
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8).transpose(1, 2, 0)


@pytest.mark.parametrize("size_in, size_out", SIZES)
def test_the_resize_equals_the_formula_to_float_precision(size_in, size_out):
    pixels = _image(*size_in, seed=sum(size_in)).transpose(2, 0, 1).astype(np.float64)
    ours = tf_legacy_bilinear_resize(torch.from_numpy(pixels.astype(np.uint8)), size_out)
    expected = formula(pixels, *size_out)
    assert ours.dtype == torch.float32 and ours.shape == (3, *size_out)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=4 * 255 * np.finfo(np.float32).eps)
    if size_in == size_out:
        assert torch.equal(ours, torch.from_numpy(pixels).float())


def test_known_values_corner_aligned_without_half_pixel_offset():
    row = torch.tensor([[0.0, 10.0, 20.0]])
    # up x2: source x = 0, 0.5, 1, 1.5, 2, 2.5 (the last pixel repeats: no half-pixel offset)
    assert tf_legacy_bilinear_resize(row, (1, 6)).tolist() == [[0.0, 5.0, 10.0, 15.0, 20.0, 20.0]]
    # down to 2: source x = 0 and 1.5, no averaging over the skipped pixels
    assert tf_legacy_bilinear_resize(row, (1, 2)).tolist() == [[0.0, 15.0]]
    batch = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    torch.testing.assert_close(tf_legacy_bilinear_resize(batch, (7, 2))[1, 2], tf_legacy_bilinear_resize(batch[1, 2], (7, 2)))
    with pytest.raises(ValueError, match="Cannot resize"):
        tf_legacy_bilinear_resize(row, (0, 4))


def test_the_vtab_transform_resizes_float_pixels_then_normalises():
    image = Image.fromarray(_image(40, 52, seed=1))
    out = ImageTransform("vtab", 224, IMAGENET_MEAN, IMAGENET_STD, resize="tf_legacy_bilinear")(image)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out, (tf_legacy_bilinear_resize(pixels, (224, 224)) / 255.0 - mean) / std)
    with pytest.raises(ValueError, match="--resize='bicubic' is invalid"):
        ImageTransform("vtab", 224, IMAGENET_MEAN, IMAGENET_STD, resize="bicubic")


def test_differences_from_pillow_table():
    """Pillow's bilinear (the default for a user's folder) against the legacy resize, in normalised units after
    ImageNet's mean/std: they differ (Pillow samples pixel centres, antialiases when shrinking and rounds to uint8)."""
    rows = ["| in (h x w) | out | max abs vs formula (0..255) | PIL vs legacy: max abs | mean abs (normalised) |",
            "|---|---|---:|---:|---:|"]
    for size_in, size_out in SIZES[:4]:
        array = _image(*size_in, seed=sum(size_in))
        legacy = ImageTransform("vtab", size_out[0], IMAGENET_MEAN, IMAGENET_STD, resize="tf_legacy_bilinear")
        pil = ImageTransform("vtab", size_out[0], IMAGENET_MEAN, IMAGENET_STD)
        image = Image.fromarray(array)
        difference = (legacy(image) - pil(image)).abs()
        square = (size_out[0], size_out[0])
        exact = np.abs(tf_legacy_bilinear_resize(torch.from_numpy(array).permute(2, 0, 1), square).numpy()
                       - formula(array.transpose(2, 0, 1).astype(np.float64), *square)).max()
        rows.append(f"| {size_in[0]} x {size_in[1]} | {square[0]} x {square[1]} | {exact:.2e} | "
                    f"{difference.max().item():.3f} | {difference.mean().item():.3f} |")
        assert difference.max().item() > 0.05
    print("\n" + "\n".join(rows))
