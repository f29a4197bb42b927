"""The paper's optimisation: SGD (momentum 0.9, no weight decay) or AdamW, the learning rate used as given, a
linear warmup from 0 then a cosine decay to 0, stepped once per epoch (or per optimizer update); for segmentation,
SETR's polynomial decay, stepped per update.

Gate logits may get their own learning rate: the gradient reaching ``gamma`` carries a factor
``g * (1 - g)`` (0.0066 at ``gate_init=5``), so with the prompts' learning rate the gates barely move.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import nn

GATE_PARAMETER = "gvpt_gate"


def parameter_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, gate_learning_rate: Optional[float] = None
) -> list[dict]:
    """Trainable parameters as optimizer groups: gate logits apart when ``gate_learning_rate`` is given."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("The model has no trainable parameters.")
    if gate_learning_rate is None:
        return [{"params": [p for _, p in trainable], "lr": learning_rate, "weight_decay": weight_decay, "name": "all"}]
    gates = [p for name, p in trainable if GATE_PARAMETER in name]
    if not gates:
        raise ValueError("--gate_learning_rate was given but the model has no gate parameters (gated=False?).")
    others = [p for name, p in trainable if GATE_PARAMETER not in name]
    groups = [{"params": gates, "lr": gate_learning_rate, "weight_decay": 0.0, "name": "gates"}]
    if others:
        groups.insert(0, {"params": others, "lr": learning_rate, "weight_decay": weight_decay, "name": "others"})
    return groups


def build_optimizer(
    model: nn.Module,
    optimizer: Literal["sgd", "adamw"] = "sgd",
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    gate_learning_rate: Optional[float] = None,
) -> torch.optim.Optimizer:
    """SGD (the paper) or AdamW over the model's trainable parameters."""
    groups = parameter_groups(model, learning_rate, weight_decay, gate_learning_rate)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer {optimizer!r}; use 'sgd' or 'adamw'.")


class WarmupCosine:
    """Learning-rate factor at schedule position ``t``: ``t / warmup`` during the warmup (VPT's schedule: the first
    position trains at 0), then ``0.5 * (1 + cos(pi * progress))`` down to 0 at ``total``.

    Example:

    ```py
    >>> f = WarmupCosine(warmup=10, total=100)
    >>> f(0), f(5), f(10), round(f(55), 3), f(100)
    (0.0, 0.5, 1.0, 0.5, 0.0)
    ```
    """

    def __init__(self, warmup: int, total: int):
        if not 0 <= warmup <= total or total < 1:
            raise ValueError(f"Need 0 <= warmup ({warmup}) <= total ({total}) and total >= 1.")
        self.warmup = warmup
        self.total = total

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return t / self.warmup
        progress = (t - self.warmup) / max(1, self.total - self.warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


class PolyDecay:
    """SETR's polynomial decay as a learning-rate factor at schedule position ``t``: a linear warmup from 0 over
    ``warmup`` positions, then ``(1 - progress) ** power`` down to 0 at ``total``.

    Example:

    ```py
    >>> f = PolyDecay(total=100, power=1.0)
    >>> f(0), f(50), f(100)
    (1.0, 0.5, 0.0)
    ```
    """

    def __init__(self, total: int, power: float = 0.9, warmup: int = 0):
        if total < 1 or not 0 <= warmup <= total:
            raise ValueError(f"Need total >= 1 and 0 <= warmup ({warmup}) <= total ({total}).")
        if power <= 0:
            raise ValueError(f"power={power} is invalid: use a positive exponent (SETR: 0.9).")
        self.total, self.power, self.warmup = total, power, warmup

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return t / self.warmup
        progress = min(1.0, (t - self.warmup) / max(1, self.total - self.warmup))
        return (1.0 - progress) ** self.power


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    num_epochs: int,
    warmup_epochs: int,
    updates_per_epoch: int,
    step: Literal["epoch", "step"] = "epoch",
    decay: Literal["cosine", "poly"] = "cosine",
    power: float = 0.9,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup, then a cosine (the paper's classification) or polynomial (SETR, exponent ``power``) decay, over
    epochs (call ``scheduler.step()`` after each epoch) or over optimizer updates (call it after each update)."""
    if warmup_epochs > num_epochs:
        raise ValueError(f"--warmup_epochs ({warmup_epochs}) exceeds --num_train_epochs ({num_epochs}).")
    if step not in ("epoch", "step"):
        raise ValueError(f"Unknown scheduler_step {step!r}; use 'epoch' or 'step'.")
    unit = updates_per_epoch if step == "step" else 1
    if decay == "cosine":
        factor = WarmupCosine(warmup_epochs * unit, num_epochs * unit)
    elif decay == "poly":
        factor = PolyDecay(num_epochs * unit, power, warmup_epochs * unit)
    else:
        raise ValueError(f"Unknown learning-rate decay {decay!r}; use 'cosine' or 'poly'.")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
