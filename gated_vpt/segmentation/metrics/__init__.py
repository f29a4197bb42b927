"""Offline ``evaluate`` metric modules for segmentation (load them by path with ``evaluate.load``)."""

from pathlib import Path

import evaluate

MEAN_IOU_PATH = str(Path(__file__).resolve().parent / "mean_iou.py")


def load_mean_iou(**kwargs) -> evaluate.EvaluationModule:
    """``evaluate.load`` of the bundled mean-IoU module; needs no network."""
    return evaluate.load(MEAN_IOU_PATH, **kwargs)
