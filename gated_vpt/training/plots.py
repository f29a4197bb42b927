"""PNG figures of a run: the per-block gates and selection ratio, and the learning curve."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gated_vpt import GateReport  # noqa: E402


def plot_gates(report: GateReport, path: Union[str, Path], title: str = "") -> Path:
    """Bars of each block's gate ``sigmoid(gamma)``, its selection ratio (the share of the last block's prompt
    input that block's output makes up, normalised as in the paper) and its attention temperature."""
    blocks = [b.block for b in report.blocks]
    panels = [
        ("gate g = sigmoid(gamma)", [b.gate for b in report.blocks]),
        ("selection ratio", [b.selection_ratio for b in report.blocks]),
        ("attention temperature", [b.temperature for b in report.blocks]),
    ]
    panels = [(name, values) for name, values in panels if any(v is not None for v in values)]
    if not panels:
        raise ValueError("This adapter has neither gates nor temperatures to plot.")
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, (name, values) in zip(axes[0], panels):
        axis.bar(blocks, [0.0 if v is None else v for v in values], color="tab:blue")
        axis.set_xticks(blocks)
        axis.set_xlabel("block")
        axis.set_title(name)
        if name == "attention temperature":
            axis.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_learning_curve(history: Sequence[dict], path: Union[str, Path], title: str = "") -> Path:
    """Training loss and every recorded ``*accuracy`` per epoch, with the learning rate(s) underneath."""
    epochs = [record["epoch"] for record in history]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot(epochs, [r["train_loss"] for r in history], label="train loss", color="tab:red")
    top.set_ylabel("loss")
    metrics = sorted({k for r in history for k in r if k.endswith("accuracy")})
    if metrics:
        right = top.twinx()
        for name in metrics:
            right.plot(epochs, [r.get(name) for r in history], label=name)
        right.set_ylabel("accuracy")
        right.set_ylim(0, 1)
        right.legend(loc="center right")
    top.legend(loc="upper right")
    for name in sorted({k for r in history for k in r if k.startswith("lr")}):
        bottom.plot(epochs, [r.get(name) for r in history], label=name)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("epoch")
    bottom.legend(loc="upper right", fontsize="small")
    if title:
        top.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
