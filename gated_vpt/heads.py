"""The paper's classification heads on top of a prompted backbone.

``head_pooling="cls"``: the prompts are removed after the last block and the model's own readout sees the usual
sequence (MoCo v3 and supervised ViTs: the CLS token after the final LayerNorm, which transformers' heads already
compute; SigLIP: its attention-pooling probe over the image tokens). The prompts reach the readout only through what
they did to the other tokens in the blocks.

``head_pooling="mean"``: the head's feature is the mean of the non-special tokens, prompts included. Where the
model's head reads row 0 (the ViT family, CLIPVisionModel's pooler), ``pool_into_cls`` writes that mean into the CLS
row, so the unchanged head (final LayerNorm, then ``classifier`` on row 0) computes exactly the paper's MAE head.
Where the model's head averages the rows itself (the CLIP, SigLIP and I-JEPA classification classes, I-JEPA's bare
model, timm's ``global_pool="avg"``), the prompt rows stay in the final sequence, so its mean includes them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .backbones import HeadReads
from .prompts import remove_prompts


def pool_into_cls(hidden_states: torch.Tensor, num_special: int = 1) -> torch.Tensor:
    """Replace row 0 (CLS) by the mean of the rows after the ``num_special`` special tokens."""
    mean = hidden_states[:, num_special:].mean(dim=1, keepdim=True)
    return torch.cat((mean, hidden_states[:, 1:]), dim=1)


def head_input(
    hidden_states: torch.Tensor, pooling: str, head: HeadReads, num_special: int, num_prompts: int
) -> torch.Tensor:
    """The last block's output ``[special, prompts, patches]`` as the model's head (``head``, from the backbone
    table) must see it to compute ``pooling``."""
    if pooling == "mean" and head != "cls":
        return hidden_states
    if pooling == "mean":
        hidden_states = pool_into_cls(hidden_states, num_special)
    return remove_prompts(hidden_states, num_special, num_prompts)


def check_pooling(pooling: str, head: HeadReads, model_name: str) -> None:
    """Refuse ``head_pooling="cls"`` where the model's head averages the tokens and reads no CLS token."""
    if pooling == "cls" and head == "mean":
        raise ValueError(
            f"GatedPromptConfig.head_pooling='cls' is invalid for {model_name}: its head averages the tokens and reads "
            "no CLS token. Use head_pooling='mean' (or 'auto'); for a CLS head use a model that reads it: on CLIP, "
            "CLIPVisionModel (its pooler_output is the CLS token after the final LayerNorm); in timm, a model created "
            "with global_pool='token'."
        )


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
