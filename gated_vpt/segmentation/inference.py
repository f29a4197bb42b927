"""Test-time prediction and evaluation: whole-image or sliding-window, single- or multi-scale with flip.

``predict`` returns class probabilities at a requested output size (the original mask size). Multi-scale
evaluation (SETR / mmsegmentation's ADE20K protocol) rescales the test image by each ratio in
``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``, adds the horizontally flipped image, and averages the probabilities.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .metrics.mean_iou import area_totals, scores_from_totals

MULTI_SCALE_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass(frozen=True)
class InferenceSettings:
    """How to predict one test image.

    ``mode='whole'`` runs the rescaled image at once; ``mode='slide'`` runs ``crop_size`` windows ``stride`` apart
    (SETR's ADE20K setting: 512 and 341) and averages overlapping logits, ``window_batch`` windows per forward.
    ``scales`` are ratios of the test size.
    """

    mode: Literal["whole", "slide"] = "whole"
    crop_size: int = 512
    stride: int = 341
    scales: Sequence[float] = (1.0,)
    flip: bool = False
    window_batch: int = 8

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"mode={self.mode!r} is invalid: use 'whole' or 'slide'.")
        if self.mode == "slide" and not 0 < self.stride <= self.crop_size:
            raise ValueError(f"stride={self.stride} is invalid: use 0 < stride <= crop_size ({self.crop_size}).")
        if self.window_batch < 1:
            raise ValueError(f"window_batch={self.window_batch} is invalid: use a positive number of windows per forward.")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales={self.scales} is invalid: use one or more positive ratios, e.g. (1.0,).")


def _logits(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch).logits.float()


def _slide(model: nn.Module, image: torch.Tensor, crop: int, stride: int, window_batch: int) -> torch.Tensor:
    """Logits of a ``(3, H, W)`` image from overlapping windows (every pixel is covered at least once)."""
    height, width = image.shape[-2:]
    tops = _window_starts(height, crop, stride)
    lefts = _window_starts(width, crop, stride)
    windows = [(top, left) for top in tops for left in lefts]
    crop_h, crop_w = min(crop, height), min(crop, width)
    crops = [image[:, t : t + crop_h, l : l + crop_w] for t, l in windows]
    window_logits = torch.cat(
        [_logits(model, torch.stack(crops[i : i + window_batch])) for i in range(0, len(crops), window_batch)]
    )
    logits = window_logits.new_zeros(window_logits.shape[1], height, width)
    count = window_logits.new_zeros(1, height, width)
    for (top, left), values in zip(windows, window_logits):
        logits[:, top : top + crop_h, left : left + crop_w] += values
        count[:, top : top + crop_h, left : left + crop_w] += 1
    return logits / count


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    if length <= crop:
        return [0]
    steps = (length - crop + stride - 1) // stride + 1
    return sorted({min(i * stride, length - crop) for i in range(steps)})


@torch.no_grad()
def predict(
    model: nn.Module, image: torch.Tensor, output_size: tuple[int, int], settings: InferenceSettings = InferenceSettings()
) -> torch.Tensor:
    """Class probabilities ``(num_labels, *output_size)`` for one normalised ``(3, H, W)`` test image."""
    probabilities: Optional[torch.Tensor] = None
    views = 0
    for scale in settings.scales:
        size = (max(1, int(image.shape[-2] * scale + 0.5)), max(1, int(image.shape[-1] * scale + 0.5)))
        scaled = image if scale == 1.0 else F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        for flipped in (False, True) if settings.flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            if settings.mode == "slide":
                logits = _slide(model, view, settings.crop_size, settings.stride, settings.window_batch)
            else:
                logits = _logits(model, view[None])[0]
            if flipped:
                logits = logits.flip(-1)
            logits = F.interpolate(logits[None], size=output_size, mode="bilinear", align_corners=False)[0]
            current = logits.softmax(dim=0)
            probabilities = current if probabilities is None else probabilities + current
            views += 1
    return probabilities / views


def evaluate_segmentation(
    model: nn.Module,
    batches: Iterable[dict[str, list[torch.Tensor]]],
    num_labels: int,
    ignore_index: int,
    settings: InferenceSettings = InferenceSettings(),
    accelerator: Optional[object] = None,
) -> dict:
    """mIoU, pixel accuracy and per-class IoU of ``model`` over ``batches`` (lists of test images and full-size
    masks, as ``data.collate_eval`` makes them), summed image by image so no mask is stored.

    With an ``accelerate.Accelerator``, each process scores its share and the per-image counts are gathered with
    ``gather_for_metrics`` (which drops the samples repeated to even out the last batch).
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, num_labels, dtype=torch.long)
    for batch in batches:
        per_image = []
        for image, mask in zip(batch["pixel_values"], batch["labels"]):
            with accelerator.autocast() if accelerator is not None else nullcontext():
                prediction = predict(model, image, tuple(mask.shape[-2:]), settings).argmax(dim=0)
            per_image.append(area_totals(prediction, mask, num_labels, ignore_index))
        stacked = torch.stack(per_image)
        if accelerator is not None:
            stacked = accelerator.gather_for_metrics(stacked)
        totals += stacked.sum(dim=0).cpu()
    model.train(was_training)
    return scores_from_totals(totals)
