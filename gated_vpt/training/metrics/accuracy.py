"""Top-1 accuracy as an ``evaluate`` metric module that works offline.

``evaluate.load("accuracy")`` downloads its script from the Hub; this module is loaded from its local path
instead (``gated_vpt.training.metrics.load_metric("accuracy")``) and speaks the same API.
"""

import datasets
import evaluate

_DESCRIPTION = "Top-1 accuracy: the fraction of predictions equal to the references."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class indices.
    references (list of int): true class indices.
Returns:
    accuracy (float): in [0, 1]; 0.0 when there are no predictions.
Example:
    >>> metric = evaluate.load("gated_vpt/training/metrics/accuracy.py")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""


class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions: list, references: list) -> dict:
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        return {"accuracy": correct / len(references) if references else 0.0}
