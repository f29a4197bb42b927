"""The protocol runner's decisions, without training: when a task's learning rate is chosen (every tune run settled;
ties go to the smaller rate), the seed of the tune runs, the paper's numbers for a subset of tasks (per task, looked
up by name; no benchmark means beside a subset), the means over the tasks that finished, and the splits each stage
of each benchmark reads. tests/test_protocol.py runs the whole protocol end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gated_vpt.training import protocol
from gated_vpt.training.benchmark_data import load_layout_datasets
from gated_vpt.training.paper_benchmarks import FGVC_TASKS, PAPER_FGVC_MEAN, PAPER_VTAB1K, VTAB_GROUPS
from gated_vpt.training.protocol_report import TaskResult, format_markdown, summaries

from conftest import write_vtab1k_task
from test_benchmark_data import _fgvc_folder

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "hub_configs" / "mae-vtab-dtd.json"


def _as_written(folder: Path, entries) -> list[tuple[bytes, int]]:
    return [(np.asarray(Image.open(folder / path).convert("RGB")).tobytes(), label) for path, label in entries]


def _as_loaded(split) -> list[tuple[bytes, int]]:
    return [(np.asarray(row["image"].convert("RGB")).tobytes(), row["label"]) for row in split]


def _finish(run: protocol.Run, validation: float) -> None:
    run.output_dir.mkdir(parents=True, exist_ok=True)
    run.metrics_path.write_text(json.dumps({"validation_accuracy": validation}))


def test_a_rate_is_chosen_only_once_every_tune_run_is_settled_and_ties_go_to_the_smaller_rate(tmp_path):
    task = protocol.ProtocolTask("t", RECIPE, 0.25)
    plan = protocol.Protocol("t", [task], tmp_path, learning_rates=(0.1, 0.2, 0.3), seeds=(0, 1))
    low, middle, high = plan.tune_runs(task)
    _finish(low, 0.5)
    _finish(high, 0.9)
    # the middle rate failed (a crash leaves its log and a checkpoint, no metrics): it is still pending
    (middle.output_dir / "step_4").mkdir(parents=True)
    (middle.output_dir / "train.log").write_text("Traceback ...")
    assert plan.chosen_learning_rate(task) == (None, None)
    assert plan.final_runs(task) == [] and plan.pending_runs() == [middle]
    _finish(middle, 0.9)  # ties with the highest rate
    assert plan.chosen_learning_rate(task) == (0.2, 90.0)
    assert [(r.stage, r.learning_rate, r.seed) for r in plan.pending_runs()] == [("final", 0.2, 0), ("final", 0.2, 1)]


def test_tune_seed_seeds_every_tune_run_and_no_final_run(tmp_path):
    args = protocol.parse_args(["--recipes", str(RECIPE), "--output_root", str(tmp_path), "--tune_seed", "7",
                                "--learning_rates", "0.1,0.2", "--seeds", "0,1"])
    plan = protocol.build_protocol(args)
    [task] = plan.tasks
    tune = plan.tune_runs(task)
    assert [(r.seed, r.argv[r.argv.index("--seed") + 1], r.output_dir.name) for r in tune] == [
        (7, "7", "lr0.1_seed7"), (7, "7", "lr0.2_seed7")]
    for run in tune:
        _finish(run, 0.5)
    assert [r.seed for r in plan.final_runs(task)] == [0, 1]
    default = protocol.build_protocol(protocol.parse_args(["--recipes", str(RECIPE), "--output_root", str(tmp_path)]))
    assert {r.seed for r in default.tune_runs(default.tasks[0])} == {0}


def test_a_subset_of_tasks_shows_no_benchmark_means_and_the_full_benchmark_shows_the_papers():
    full = protocol.build_protocol(protocol.parse_args(["--benchmark", "vtab1k", "--backbone", "mocov3"]))
    *groups, overall = PAPER_VTAB1K["mocov3"]["gated"]
    assert (full.paper_groups, full.paper_overall) == (dict(zip(VTAB_GROUPS, groups)), overall)
    fgvc = protocol.build_protocol(protocol.parse_args(["--benchmark", "fgvc", "--method", "vpt-deep"]))
    assert (fgvc.paper_groups, fgvc.paper_overall) == ({}, PAPER_FGVC_MEAN["mae"]["vpt-deep"])
    for argv in (["--benchmark", "vtab1k", "--tasks", "dtd,eurosat"], ["--benchmark", "fgvc", "--tasks", "cars"]):
        subset = protocol.build_protocol(protocol.parse_args(argv))
        assert (subset.paper_groups, subset.paper_overall) == ({}, None)
        assert [t.name for t in subset.tasks] == argv[-1].split(",")


@pytest.mark.parametrize("method", ["gated", "vpt-shallow", "vpt-deep"])
@pytest.mark.parametrize("backbone", ["mae", "mocov3"])
def test_each_fgvc_task_alone_or_in_any_subset_gets_its_own_paper_number(backbone, method):
    """The number each shipped recipe file carries for its task and method (tests/test_recipes.py checks those
    against the paper), whatever the subset."""
    suffix = "" if method == "gated" else f"-{method}"

    def recipe_number(slug: str) -> float:
        path = REPO / "hub_configs" / f"{backbone}-fgvc-{slug}{suffix}.json"
        return json.loads(path.read_text())["paper"]["reported_top1"]

    slugs = [t.slug for t in FGVC_TASKS]
    for only in ([slug] for slug in slugs):
        [task] = protocol.benchmark_tasks("fgvc", backbone, method, only=only)
        assert task.paper_top1 == recipe_number(task.name), task.name
    subset = protocol.benchmark_tasks("fgvc", backbone, method, only=slugs[::-2])
    assert [(t.name, t.paper_top1) for t in subset] == [(s, recipe_number(s)) for s in slugs if s in slugs[::-2]]


def test_group_and_overall_means_are_over_the_finished_tasks():
    """The overall mean is over tasks (as the paper averages its 19), not over group means; pending tasks are left
    out and counted."""
    results = [
        TaskResult("a", "Natural", 0.1, 50.0, {0: 40.0, 1: 60.0}),
        TaskResult("b", "Natural", 0.1, 50.0, {0: 70.0}),
        TaskResult("c", "Specialized", 0.1, 50.0, {0: 90.0}),
        TaskResult("d", "Specialized", None, None),
    ]
    rows = {s.name: s for s in summaries(results, {"Natural": 1.0}, 2.0)}
    assert (rows["Natural"].mean, rows["Natural"].finished, rows["Natural"].paper_top1) == (60.0, 2, 1.0)
    assert (rows["Specialized"].mean, rows["Specialized"].finished, rows["Specialized"].total) == (90.0, 1, 2)
    assert (rows["Overall"].mean, rows["Overall"].finished, rows["Overall"].total) == (pytest.approx(70.0), 3, 4)
    table = format_markdown("t", results, list(rows.values()))
    assert "| **Overall** (mean of 3 of 4 tasks) | | | | 70.00 | | 2.00 |" in table
    assert "| d | Specialized |  |  | pending | 0 |  |" in table


def test_each_stage_of_each_benchmark_reads_its_splits(tmp_path):
    """VTAB-1k: tune on train800, validated on val200; final on train800val200, tested on test. FGVC (VPT's code):
    train in both stages, validated on val; test only in the final stage. No tune stage ever sees the test split."""
    vtab = tmp_path / "vtab"
    lists = write_vtab1k_task(vtab, (3, 5), sizes=(6, 4, 5))
    fgvc, splits = _fgvc_folder(tmp_path)

    def fgvc_written(name: str) -> list:
        return _as_written(fgvc / "images", [(path, (1, 2, 7).index(label)) for path, label in splits[name]])

    expected = {
        ("vtab1k", "tune"): {"train": _as_written(vtab, lists["train800"]), "validation": _as_written(vtab, lists["val200"])},
        ("vtab1k", "final"): {"train": _as_written(vtab, lists["train800val200"]), "test": _as_written(vtab, lists["test"])},
        ("fgvc", "tune"): {"train": fgvc_written("train"), "validation": fgvc_written("val")},
        ("fgvc", "final"): {"train": fgvc_written("train"), "validation": fgvc_written("val"), "test": fgvc_written("test")},
    }
    for (layout, stage), roles in expected.items():
        loaded = load_layout_datasets(vtab if layout == "vtab1k" else fgvc, layout, stage)
        assert set(loaded) == set(roles), (layout, stage)
        for role, written in roles.items():
            assert _as_loaded(loaded[role]) == written, (layout, stage, role)
