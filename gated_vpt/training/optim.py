"""The paper's optimisation: SGD (momentum 0.9, no weight decay) or AdamW, the learning rate used as given, a
linear warmup from 0 then a cosine decay to 0, stepped once per epoch (or per optimizer update); for segmentation,
SETR's polynomial decay, stepped per update.

Gate logits may get their own learning rate: the gradient reaching ``gamma`` carries a factor
``g * (1 - g)`` (0.0066 at ``gate_init=5``), so with the prompts' learning rate the gates barely move.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Literal, Optional, Sequence

import torch
from torch import nn

GATE_PARAMETER = "gvpt_gate"


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    gate_learning_rate: Optional[float] = None,
    head_modules: Sequence[str] = (),
    head_lr_multiplier: float = 1.0,
) -> list[dict]:
    """Trainable parameters as optimizer groups: gate logits apart when ``gate_learning_rate`` is given (without
    weight decay, which would pull every gate towards 0.5), and the parameters of the modules named in
    ``head_modules`` (e.g. SETR's decode and auxiliary heads) apart at ``learning_rate * head_lr_multiplier`` when
    the multiplier is not 1 (SETR: 10)."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("The model has no trainable parameters.")
    heads = {name for name, _ in trainable if head_lr_multiplier != 1 and any(f"{m}." in name for m in head_modules)}
    if head_lr_multiplier != 1 and not heads:
        raise ValueError(f"A head learning-rate multiplier was given but the model has no trainable {list(head_modules)}.")
    if gate_learning_rate is None:
        rest = [p for name, p in trainable if name not in heads]
        groups = [{"params": rest, "lr": learning_rate, "weight_decay": weight_decay, "name": "all" if not heads else "others"}]
    else:
        gates = [p for name, p in trainable if GATE_PARAMETER in name]
        if not gates:
            raise ValueError("--gate_learning_rate was given but the model has no gate parameters (gated=False?).")
        others = [p for name, p in trainable if GATE_PARAMETER not in name and name not in heads]
        groups = [{"params": gates, "lr": gate_learning_rate, "weight_decay": 0.0, "name": "gates"}]
        if others:
            groups.insert(0, {"params": others, "lr": learning_rate, "weight_decay": weight_decay, "name": "others"})
    if heads:
        groups.append({
            "params": [p for name, p in trainable if name in heads], "lr": learning_rate * head_lr_multiplier,
            "weight_decay": weight_decay, "name": "heads",
        })
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: nn.Module,
    optimizer: Literal["sgd", "adamw"] = "sgd",
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    gate_learning_rate: Optional[float] = None,
    head_modules: Sequence[str] = (),
    head_lr_multiplier: float = 1.0,
) -> torch.optim.Optimizer:
    """SGD (the paper) or AdamW over the model's trainable parameters, grouped by ``parameter_groups``."""
    groups = parameter_groups(model, learning_rate, weight_decay, gate_learning_rate, head_modules, head_lr_multiplier)
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
    min_learning_rate: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup, then a cosine (the paper's classification) or polynomial (SETR, exponent ``power``) decay, over
    epochs (call ``scheduler.step()`` after each epoch) or over optimizer updates (call it after each update).

    Every parameter group goes from its own learning rate ``base`` to ``min_learning_rate`` (mmsegmentation's
    ``min_lr``, SETR: 1e-4): ``lr(t) = min_learning_rate + (base - min_learning_rate) * factor(t)``.
    """
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
    if not min_learning_rate:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    too_low = [group.get("name", i) for i, group in enumerate(optimizer.param_groups) if group["lr"] < min_learning_rate]
    if too_low:
        raise ValueError(f"--min_learning_rate ({min_learning_rate}) is above the learning rate of groups {too_low}.")
    floors = [min_learning_rate / group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [partial(_with_floor, factor, floor) for floor in floors])


def _with_floor(factor: Callable[[int], float], floor: float, t: int) -> float:
    return floor + (1.0 - floor) * factor(t)
