"""A protocol run's results in the paper's form: per task the tuned learning rate, its validation top-1 and the
test top-1 over the seeds; VTAB group means and the overall mean (over tasks, as the paper averages its 19 tasks);
the paper's numbers alongside. Read from the runs' ``metrics.json`` files; written as markdown, CSV and a PNG.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

# --report_epoch -> the metrics.json key of the test top-1 the table reports, and how the table names it
REPORTED = {"last": "test_accuracy", "best_validation": "test_accuracy_at_best_validation"}
REPORTED_TITLES = {"last": "test top-1, last epoch", "best_validation": "test top-1 at the best validation epoch"}
CSV_COLUMNS = (
    "row", "task", "group", "learning_rate", "validation_top1", "test_top1_mean", "test_top1_std", "seeds", "tasks",
    "paper_top1", "test_top1_epoch",
)


@dataclass
class TaskResult:
    """One task's finished runs: the chosen ``learning_rate`` (None until chosen), the validation top-1 % it won
    with (None without a tune stage), the test top-1 % of each finished seed, the paper's number, and the runs that
    stopped on a non-finite loss (e.g. ``"tune lr 5 seed 0"``) and how many finished runs have no score of the
    reported kind (no test top-1 at the best validation epoch: the run had no validation split, or did not test
    every epoch)."""

    name: str
    group: Optional[str]
    learning_rate: Optional[float]
    validation_top1: Optional[float]
    test_top1: dict[int, float] = field(default_factory=dict)
    paper_top1: Optional[float] = None
    stopped: list[str] = field(default_factory=list)
    unscored: int = 0

    @property
    def mean(self) -> Optional[float]:
        return statistics.mean(self.test_top1.values()) if self.test_top1 else None

    @property
    def std(self) -> Optional[float]:
        values = list(self.test_top1.values())
        return statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)


@dataclass
class Summary:
    """A mean over tasks (a VTAB group, or all tasks) next to the paper's."""

    name: str
    mean: Optional[float]
    finished: int
    total: int
    paper_top1: Optional[float] = None


def read_score(metrics_path: Union[str, Path], key: str, optional: bool = False) -> Optional[float]:
    """``key`` (e.g. ``test_accuracy``) of a finished run's ``metrics.json``, in percent; None when ``optional`` and
    the run has no such score."""
    metrics = json.loads(Path(metrics_path).read_text())
    value = metrics.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, (int, float)):
        raise ValueError(f"{metrics_path} has no {key}; the run did not evaluate that split. Delete the run to redo it.")
    return 100.0 * value


def summaries(
    results: Sequence[TaskResult], paper_groups: dict[str, float], paper_overall: Optional[float]
) -> list[Summary]:
    """The group means (in the order groups first appear) and the overall mean, each over the finished tasks."""
    groups = list(dict.fromkeys(r.group for r in results if r.group))
    rows = []
    for name, members in [(g, [r for r in results if r.group == g]) for g in groups] + [("Overall", list(results))]:
        means = [r.mean for r in members if r.mean is not None]
        paper = paper_overall if name == "Overall" else paper_groups.get(name)
        rows.append(Summary(name, statistics.mean(means) if means else None, len(means), len(members), paper))
    return rows


def _number(value: Optional[float], digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def format_markdown(title: str, results: Sequence[TaskResult], rows: Sequence[Summary], report_epoch: str = "last") -> str:
    """The table as markdown: one line per task, then the group means and the overall mean; ``report_epoch`` names
    which test top-1 it holds (``REPORTED``)."""
    lines = [
        f"## {title}",
        "",
        f"| task | group | learning rate | val top-1 (tune) | {REPORTED_TITLES[report_epoch]} (mean ± std) | seeds | paper |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        test = f"{r.mean:.2f} ± {r.std:.2f}" if r.mean is not None else "n/a" if r.unscored else "pending"
        lr = "" if r.learning_rate is None else f"{r.learning_rate:g}"
        lines.append(
            f"| {r.name} | {r.group or ''} | {lr} | {_number(r.validation_top1)} | {test} | {len(r.test_top1)} | "
            f"{_number(r.paper_top1)} |"
        )
    for s in rows:
        count = f"{s.finished} of {s.total}" if s.finished < s.total else f"{s.total}"
        label = f"**{s.name}** (mean of {count} task{'s' if s.total > 1 else ''})"
        lines.append(f"| {label} | | | | {_number(s.mean) or 'pending'} | | {_number(s.paper_top1)} |")
    other = next(kind for kind in REPORTED if kind != report_epoch)
    lines += ["", f"Reported: the {REPORTED_TITLES[report_epoch]} (`--report_epoch {report_epoch}`; every run's metrics.json "
              f"also holds the {REPORTED_TITLES[other]}: `--report_only --report_epoch {other}`)."]
    if any(r.unscored for r in results):
        lines.append("n/a: the runs have no test top-1 at a best validation epoch (no validation split, as in VTAB-1k "
                     "final runs, which train on train800val200; or the test split was not evaluated every epoch).")
    stopped = [f"{r.name} {run}" for r in results for run in r.stopped]
    if stopped:
        lines += ["", "Stopped on a non-finite loss (no score; delete the run's stopped.json to retry): " + "; ".join(stopped)]
    return "\n".join(lines) + "\n"


def write_report(
    output_root: Union[str, Path],
    title: str,
    results: Sequence[TaskResult],
    paper_groups: dict[str, float],
    paper_overall: Optional[float],
    report_epoch: str = "last",
) -> str:
    """Write ``results.md``, ``results.csv`` (full precision, percent; its ``test_top1_epoch`` column names
    ``report_epoch``) and ``results.png`` under ``output_root`` with the test top-1 of ``report_epoch``
    (``REPORTED``); return the markdown."""
    from .plots import plot_benchmark

    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    rows = summaries(results, paper_groups, paper_overall)
    markdown = format_markdown(title, results, rows, report_epoch)
    (root / "results.md").write_text(markdown)
    with open(root / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            writer.writerow(["task", r.name, r.group or "", _csv(r.learning_rate), _csv(r.validation_top1), _csv(r.mean),
                             _csv(r.std), len(r.test_top1), 1, _csv(r.paper_top1), report_epoch])
        for s in rows:
            writer.writerow(["group" if s.name != "Overall" else "overall", s.name, "", "", "", _csv(s.mean), "", "",
                             s.finished, _csv(s.paper_top1), report_epoch])
    plot_benchmark(
        [(r.name, r.mean, r.std, r.paper_top1) for r in results], [(s.name, s.mean, s.paper_top1) for s in rows],
        root / "results.png", title=title,
    )
    return markdown


def _csv(value: Optional[float]) -> str:
    return "" if value is None else repr(value)
