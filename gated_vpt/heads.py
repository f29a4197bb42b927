"""The paper's classification heads on top of a prompted backbone.

MoCo v3 and supervised ViTs classify the CLS token after the final LayerNorm, which transformers' heads already
do. The MAE head applies the pretrained final LayerNorm to the mean of all non-CLS tokens (prompts included);
``pool_into_cls`` writes that mean into the CLS row of the last block's output, so the unchanged
``ViTForImageClassification`` head (final LayerNorm, then ``classifier`` on row 0) computes exactly the MAE head.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def pool_into_cls(hidden_states: torch.Tensor) -> torch.Tensor:
    """Replace row 0 (CLS) by the mean of all other rows."""
    mean = hidden_states[:, 1:].mean(dim=1, keepdim=True)
    return torch.cat((mean, hidden_states[:, 1:]), dim=1)


def init_classifier_(classifier: nn.Linear, prior: float = 0.01) -> nn.Linear:
    """The paper's head initialisation (its released code): weights kaiming-normal with fan_out, i.e. normal with
    std ``sqrt(2 / out_features)`` (1.0 for 2 classes, 0.1 for 200), and bias ``-log((1 - prior) / prior)`` (about
    -4.595 for the default prior 0.01).

    Example:

    ```py
    >>> head = init_classifier_(nn.Linear(768, 200))
    >>> round(head.bias[0].item(), 3), round(head.weight.std().item(), 2)
    (-4.595, 0.1)
    ```
    """
    with torch.no_grad():
        nn.init.kaiming_normal_(classifier.weight, mode="fan_out", nonlinearity="relu")
        if classifier.bias is not None:
            classifier.bias.fill_(-math.log((1 - prior) / prior))
    return classifier
