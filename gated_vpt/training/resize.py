"""Image resizing as the paper's released code does it for VTAB-1k: TensorFlow v1's legacy bilinear resize
(``tf.compat.v1.image.resize`` with the bilinear method, ``align_corners=False``, ``half_pixel_centers=False``), on
float pixels, written in torch (no TensorFlow needed).

Output pixel ``i`` of a side of ``n_in`` pixels resized to ``n_out`` reads the source coordinate ``x = i * s`` with
``s = n_in / n_out`` in float32 (no half-pixel offset), between source pixels ``floor(x)`` and
``min(floor(x) + 1, n_in - 1)`` with weight ``x - floor(x)``; each of the two source rows is interpolated along the
width first, then the two results along the height, each step as ``a + (b - a) * w`` in float32. No antialiasing: when shrinking, most source pixels are skipped. PIL's bilinear
(``Image.resize(..., BILINEAR)``, the training scripts' default) samples pixel centres and averages over the
shrink factor, then rounds to uint8, so the two differ (docs/TRAINING.md gives the measured difference).
"""

from __future__ import annotations

import torch

RESIZE_METHODS = ("pil", "tf_legacy_bilinear")


def legacy_bilinear_indices(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lower index, upper index, weight of the upper one) of every output pixel along one side."""
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    source = torch.arange(out_size, dtype=torch.float32) * scale
    lower = torch.floor(source)
    weight = source - lower
    lower = lower.long().clamp(0, in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    return lower, upper, weight


def tf_legacy_bilinear_resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``pixels`` (``(..., height, width)``, any float or integer dtype) to ``size`` = (height, width) as
    TensorFlow v1's legacy bilinear resize does; returns float32.

    Example:

    ```py
    >>> tf_legacy_bilinear_resize(torch.tensor([[0.0, 10.0]]), (1, 4))  # source x = 0, 0.5, 1, 1.5 (clamped)
    tensor([[ 0.,  5., 10., 10.]])
    ```
    """
    height, width = size
    if height < 1 or width < 1 or pixels.dim() < 2:
        raise ValueError(f"Cannot resize a tensor of shape {tuple(pixels.shape)} to {size}: need (..., H, W) and a size >= 1.")
    pixels = pixels.to(torch.float32)
    top, bottom, row_weight = legacy_bilinear_indices(pixels.shape[-2], height)
    left, right, column_weight = legacy_bilinear_indices(pixels.shape[-1], width)

    def along_width(rows: torch.Tensor) -> torch.Tensor:
        return rows[..., left] + (rows[..., right] - rows[..., left]) * column_weight

    upper, lower = along_width(pixels[..., top, :]), along_width(pixels[..., bottom, :])
    return upper + (lower - upper) * row_weight[:, None]
