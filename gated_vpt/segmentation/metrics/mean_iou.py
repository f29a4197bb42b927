"""Mean intersection-over-union for semantic segmentation, as an ``evaluate`` metric module that works offline.

Load it by path (``evaluate.load`` of a Hub name needs the network):

```py
>>> import evaluate
>>> import numpy as np
>>> from gated_vpt.segmentation.metrics import MEAN_IOU_PATH
>>> metric = evaluate.load(MEAN_IOU_PATH)
>>> true_mask = np.array([[0, 0, 1], [1, 2, 255]])  # 255: ignored
>>> pred_mask = np.array([[0, 1, 1], [1, 2, 2]])
>>> scores = metric.compute(predictions=[pred_mask], references=[true_mask], num_labels=3, ignore_index=255)
>>> round(scores["mean_iou"], 4), [round(iou, 4) for iou in scores["per_category_iou"]]
(0.7222, [0.5, 0.6667, 1.0])
```

The module-level functions are the whole computation: ``area_totals`` counts, per class, the intersection, union,
predicted and labelled pixels of one or more masks (pixels labelled ``ignore_index`` are left out), and
``scores_from_totals`` turns summed counts into the metrics. A training loop can sum ``area_totals`` image by image
(and across processes) instead of storing every mask, and gets the same numbers as ``compute``.

Conventions (those of mmsegmentation and the Hub's ``mean_iou``): a class absent from both the references and the
predictions has IoU NaN and is left out of the means; a class predicted but never labelled has IoU 0.
"""

from __future__ import annotations

from typing import Sequence, Union

import datasets
import evaluate
import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]

_DESCRIPTION = """Mean intersection-over-union (mIoU), pixel accuracy and per-class IoU / accuracy for semantic
segmentation, ignoring pixels labelled ignore_index."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted label maps, one 2-D integer array (height, width) per image.
    references: ground-truth label maps, same shapes as the predictions.
    num_labels (int): number of classes; valid labels are 0 .. num_labels - 1.
    ignore_index (int): label of pixels that do not count (default 255).
Returns:
    mean_iou: mean of the per-class IoU over classes that occur; mean_accuracy: mean per-class pixel accuracy;
    overall_accuracy: correctly labelled pixels / labelled pixels; per_category_iou, per_category_accuracy: lists of
    num_labels floats (NaN for classes that occur in neither predictions nor references).
"""


def area_totals(predictions: ArrayLike, references: ArrayLike, num_labels: int, ignore_index: int = 255) -> torch.Tensor:
    """Per-class pixel counts of one or more masks: a ``(4, num_labels)`` int64 tensor whose rows are intersection,
    union, predicted area and labelled area. ``predictions`` and ``references`` have the same shape."""
    predictions = torch.as_tensor(np.asarray(predictions) if not isinstance(predictions, torch.Tensor) else predictions)
    references = torch.as_tensor(np.asarray(references) if not isinstance(references, torch.Tensor) else references)
    references = references.to(predictions.device)
    if predictions.shape != references.shape:
        raise ValueError(
            f"A prediction of shape {tuple(predictions.shape)} was paired with a reference of shape "
            f"{tuple(references.shape)}; resize the prediction to the reference's size before scoring."
        )
    keep = references != ignore_index
    predictions, references = predictions[keep].long(), references[keep].long()
    if references.numel() and (references.min() < 0 or references.max() >= num_labels):
        raise ValueError(
            f"References contain labels outside 0..{num_labels - 1} that are not the ignore index {ignore_index}; "
            "check num_labels and ignore_index."
        )
    if predictions.numel() and (predictions.min() < 0 or predictions.max() >= num_labels):
        raise ValueError(f"Predictions contain labels outside 0..{num_labels - 1}; check num_labels.")
    confusion = torch.bincount(references * num_labels + predictions, minlength=num_labels * num_labels)
    confusion = confusion.reshape(num_labels, num_labels)
    intersection = confusion.diagonal()
    predicted, labelled = confusion.sum(dim=0), confusion.sum(dim=1)
    return torch.stack((intersection, predicted + labelled - intersection, predicted, labelled))


def scores_from_totals(totals: torch.Tensor) -> dict:
    """mIoU, mean accuracy, overall accuracy and per-class IoU / accuracy from summed ``area_totals``."""
    totals = torch.as_tensor(totals).double().cpu()
    intersection, union, _, labelled = totals
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, intersection / union.clamp(min=1), nan)
    accuracy = torch.where(labelled > 0, intersection / labelled.clamp(min=1), nan)
    return {
        "mean_iou": float(torch.nanmean(iou)),
        "mean_accuracy": float(torch.nanmean(accuracy)),
        "overall_accuracy": float(intersection.sum() / labelled.sum()) if labelled.sum() > 0 else float("nan"),
        "per_category_iou": iou.tolist(),
        "per_category_accuracy": accuracy.tolist(),
    }


class MeanIoU(evaluate.Metric):
    """mIoU, pixel accuracy and per-class IoU with an ignore index (see the module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        mask = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": mask, "references": mask}),
        )

    def _compute(self, predictions: list, references: list, num_labels: int, ignore_index: int = 255) -> dict:
        totals = sum(
            area_totals(np.asarray(p), np.asarray(r), num_labels, ignore_index) for p, r in zip(predictions, references)
        )
        return scores_from_totals(totals)
