"""PNG figures: a run's per-block gates and selection ratio and its learning curve, and a benchmark's results."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

if TYPE_CHECKING:
    from gated_vpt.introspection import GateReport


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported when a figure is drawn (not when a training script
    starts: matplotlib takes a quarter of a second to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gates(report: GateReport, path: Union[str, Path], title: str = "", gate_init: Optional[float] = None) -> Path:
    """Bars of each block's gate ``sigmoid(gamma)``, its selection ratio (the share of the last block's prompt
    input that block's output makes up, normalised as in the paper) and its attention temperature. A dashed line
    marks where the gates started (``sigmoid(-gate_init)``, when given) and the temperatures (1); blocks without a
    gate (the last one, and any before the prompts are inserted) are labelled so."""
    blocks = [b.block for b in report.blocks]
    ungated = [b.block for b in report.blocks if b.gate is None]
    panels = [
        ("gate g = sigmoid(gamma)", [b.gate for b in report.blocks]),
        ("selection ratio", [b.selection_ratio for b in report.blocks]),
        ("attention temperature", [b.temperature for b in report.blocks]),
    ]
    panels = [(name, values) for name, values in panels if any(v is not None for v in values)]
    if not panels:
        raise ValueError("This adapter has neither gates nor temperatures to plot.")
    figure, axes = _pyplot().subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, (name, values) in zip(axes[0], panels):
        axis.bar(blocks, [0.0 if v is None else v for v in values], color="tab:blue")
        axis.set_xticks(blocks)
        axis.set_xlabel("block")
        axis.set_title(name)
        start = {"attention temperature": 1.0, "gate g = sigmoid(gamma)": _sigmoid(-gate_init) if gate_init is not None else None}
        if start.get(name) is not None:
            axis.axhline(start[name], color="gray", linewidth=0.8, linestyle="--", label=f"initial {start[name]:.3g}")
            axis.legend(loc="upper left", fontsize="small", frameon=False)
            axis.set_ylim(0, max([v for v in values if v is not None] + [start[name]]) * 1.25)
        if name != "attention temperature":
            for block in ungated:
                axis.text(block, 0, "no gate", rotation=90, ha="center", va="bottom", fontsize="small", color="gray")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_learning_curve(history: Sequence[dict], path: Union[str, Path], title: str = "") -> Path:
    """Training loss and every recorded score (``score_keys``: accuracy, mIoU, ...) per epoch, with the learning
    rate(s) underneath. A score missing from some epochs (evaluated every N epochs) is drawn where it was recorded."""
    epochs = [record["epoch"] for record in history]
    figure, (top, bottom) = _pyplot().subplots(2, 1, figsize=(6, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lines = top.plot(epochs, [r["train_loss"] for r in history], label="train loss", color="tab:red")
    top.set_ylabel("loss")
    scores = score_keys(history)
    if scores:
        right = top.twinx()
        values = []
        for name in scores:
            points = [(r["epoch"], r[name]) for r in history if r.get(name) is not None]
            lines += right.plot(*zip(*points), marker=".", label=name)
            values += [value for _, value in points]
        right.set_ylabel(scores[0] if len(scores) == 1 else "score")
        if all(0 <= value <= 1 for value in values):
            right.set_ylim(0, 1)
    # One legend above the curves, so it never hides them.
    top.legend(lines, [line.get_label() for line in lines], loc="lower center", bbox_to_anchor=(0.5, 1.0),
               ncol=len(lines), frameon=False, fontsize="small")
    for name in sorted({k for r in history for k in r if k.startswith("lr")}):
        bottom.plot(epochs, [r.get(name) for r in history], label=name)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.legend(loc="best", fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def score_keys(history: Sequence[dict]) -> list[str]:
    """The evaluation scores in a training history: every numeric entry other than the epoch, losses and learning
    rates (``validation_accuracy`` for classification, ``validation_miou`` and ``validation_pixel_accuracy`` for
    segmentation)."""
    return sorted({
        key
        for record in history
        for key, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        and key != "epoch" and not key.endswith("loss") and not key.startswith("lr")
    })


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def plot_benchmark(
    tasks: Sequence[tuple[str, Optional[float], Optional[float], Optional[float]]],
    means: Sequence[tuple[str, Optional[float], Optional[float]]],
    path: Union[str, Path],
    title: str = "",
) -> Path:
    """Horizontal bars of a benchmark's test top-1 %: one per task ``(name, mean, std, paper)`` with the spread over
    seeds, then one per mean over tasks ``(name, mean, paper)`` (VTAB groups, overall); the paper's numbers as black
    marks. Rows without a result yet stay empty."""
    rows = [(name, mean, std, paper, "tab:blue") for name, mean, std, paper in tasks]
    rows += [(name, mean, None, paper, "tab:orange") for name, mean, paper in means]
    positions = list(range(len(rows)))[::-1]
    figure, axis = _pyplot().subplots(figsize=(7, 1.4 + 0.32 * len(rows)))
    axis.barh(positions, [m or 0.0 for _, m, _, _, _ in rows], xerr=[s or 0.0 for _, _, s, _, _ in rows],
              color=[c for *_, c in rows])
    paper = [(y, p) for y, (_, _, _, p, _) in zip(positions, rows) if p is not None]
    if paper:
        axis.scatter([p for _, p in paper], [y for y, _ in paper], marker="|", s=200, color="black", zorder=3,
                     label="paper")
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35 / (1 + 0.1 * len(rows))), fontsize="small")
    axis.set_yticks(positions)
    axis.set_yticklabels([name for name, *_ in rows])
    axis.set_xlabel("test top-1 % (task: mean ± std over seeds; orange: means over tasks)")
    axis.set_xlim(0, 100)
    if title:
        axis.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path
