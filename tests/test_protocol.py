"""The protocol runner end to end on a tiny VTAB-layout benchmark made from scikit-learn's digits (two tasks, a
two-rate grid, two seeds, two epochs, the embedded MAE): the chosen rate, the splits and seeds of the runs, the
table against an independent recomputation from the metrics files, resuming, the job list and GPU scheduling."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics
import threading
import time
from pathlib import Path

import pytest

from gated_vpt.training import protocol
from gated_vpt.training.paper_benchmarks import PAPER_VTAB1K, VTAB1K_TASKS
from gated_vpt.training.protocol_report import read_score

from conftest import write_vtab1k_task

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parent.parent
RATES = (0.05, 2.5)
SEEDS = (0, 1)
# task -> (digit classes, VTAB group, made-up paper number); sizes (train800, val200, test)
TASKS = {"digits-a": ((0, 1, 6), "Natural", 50.0), "digits-b": ((2, 7), "Specialized", None)}
SIZES = (24, 12, 20)


def _recipe(tmp: Path, name: str, folder: Path, classes, group, paper) -> Path:
    recipe = json.loads((REPO / "hub_configs" / "mae-vtab-dtd.json").read_text())
    recipe["args"].update(
        model_name_or_path=str(REPO / "assets" / "mae-tiny"), data_dir=str(folder), num_labels=len(classes),
        image_size=32, per_device_train_batch_size=8, per_device_eval_batch_size=64, num_train_epochs=2,
        warmup_epochs=1, output_dir=str(tmp / "unused"),
    )
    recipe["paper"] = {"table": "made up for the test", "reported_top1": paper, "vtab_group": group}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(recipe))
    return path


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = protocol.main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocol")
    recipes, lists = [], {}
    for i, (name, (classes, group, paper)) in enumerate(TASKS.items()):
        lists[name] = write_vtab1k_task(tmp / "data" / name, classes, SIZES, seed=i)
        recipes.append(_recipe(tmp, name, tmp / "data" / name, classes, group, paper))
    root = tmp / "results"
    argv = ["--recipes", *map(str, recipes), "--output_root", str(root), "--learning_rates", "0.05,2.5", "--seeds", "0,1"]
    code, out, _ = _main(*argv)
    assert code == 0, out
    return {"root": root, "argv": argv, "recipes": recipes, "lists": lists, "out": out, "tmp": tmp}


def _metrics(root: Path, task: str, stage: str, lr: float, seed: int) -> dict:
    return json.loads((root / task / stage / f"lr{lr:g}_seed{seed}" / "metrics.json").read_text())


def _best_rate(root: Path, task: str) -> float:
    scores = {lr: _metrics(root, task, "tune", lr, 0)["validation_accuracy"] for lr in RATES}
    return max(RATES, key=lambda lr: (scores[lr], -lr))  # ties: the smaller rate


def test_tune_picks_the_best_validation_rate_and_final_runs_use_all_1000_images_and_each_seed(bench):
    root = bench["root"]
    for task in TASKS:
        lists = bench["lists"][task]
        for lr in RATES:
            tune = _metrics(root, task, "tune", lr, 0)
            assert tune["examples"] == {"train": len(lists["train800"]), "validation": len(lists["val200"])}
            assert (tune["learning_rate"], tune["seed"]) == (lr, 0)
        best = _best_rate(root, task)
        finals = sorted(p.name for p in (root / task / "final").iterdir())
        assert finals == [f"lr{best:g}_seed{s}" for s in SEEDS]
        adapters = []
        for seed in SEEDS:
            final = _metrics(root, task, "final", best, seed)
            assert final["examples"] == {"train": len(lists["train800val200"]), "test": len(lists["test"])}
            assert (final["learning_rate"], final["seed"]) == (best, seed)
            run = root / task / "final" / f"lr{best:g}_seed{seed}"
            assert not list(run.glob("epoch_*")), "a finished run's checkpoints are removed"
            adapters.append((run / "adapter" / "adapter_model.safetensors").read_bytes())
        assert adapters[0] != adapters[1]


def test_table_equals_an_independent_recomputation_from_the_metrics_files(bench):
    root = bench["root"]
    rows = {row["task"]: row for row in csv.DictReader(open(root / "results.csv"))}
    means = {}
    for task, (_, group, paper) in TASKS.items():
        best = _best_rate(root, task)
        tests = [100 * _metrics(root, task, "final", best, s)["test_accuracy"] for s in SEEDS]
        means[task] = statistics.mean(tests)
        row = rows[task]
        assert float(row["learning_rate"]) == best and row["group"] == group and int(row["seeds"]) == len(SEEDS)
        assert float(row["validation_top1"]) == pytest.approx(100 * _metrics(root, task, "tune", best, 0)["validation_accuracy"])
        assert float(row["test_top1_mean"]) == pytest.approx(means[task], abs=1e-9)
        assert float(row["test_top1_std"]) == pytest.approx(statistics.stdev(tests), abs=1e-9)
        assert row["paper_top1"] == ("" if paper is None else repr(paper))
        assert f"| {task} | {group} | {best:g} |" in bench["out"]
    assert float(rows["Natural"]["test_top1_mean"]) == pytest.approx(means["digits-a"])
    assert float(rows["Specialized"]["test_top1_mean"]) == pytest.approx(means["digits-b"])
    assert float(rows["Overall"]["test_top1_mean"]) == pytest.approx(statistics.mean(means.values()))
    assert f"{statistics.mean(means.values()):.2f}" in (root / "results.md").read_text()
    assert (root / "results.png").stat().st_size > 0


def test_a_second_call_redoes_nothing_and_a_lost_run_is_redone_alone(bench, monkeypatch):
    root = bench["root"]
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("metrics.json")}
    assert len(stamps) == len(TASKS) * (len(RATES) + len(SEEDS))
    code, out, _ = _main(*bench["argv"])
    assert code == 0 and "== ran 0 runs" in out
    assert {p: p.stat().st_mtime_ns for p in root.rglob("metrics.json")} == stamps

    best = _best_rate(root, "digits-b")
    lost = root / "digits-b" / "final" / f"lr{best:g}_seed1" / "metrics.json"
    lost.unlink()
    monkeypatch.chdir(REPO)
    code, out, err = _main(*bench["argv"], "--print_jobs")
    expected = (
        f"accelerate launch --num_processes 1 examples/train_image_classification.py --config {bench['recipes'][1]} "
        f"--recipe_stage final --learning_rate {best!r} --seed 1 --output_dir {lost.parent}"
    )
    assert (code, out.splitlines()) == (0, [expected]) and "# 1 runs can start now" in err
    code, out, _ = _main(*bench["argv"])
    assert code == 0 and "== ran 1 runs" in out and lost.is_file()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("metrics.json") if p != lost} == {
        p: t for p, t in stamps.items() if p != lost
    }


def test_print_jobs_lists_the_tune_runs_first(bench, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    fresh = tmp_path / "fresh"
    argv = [*bench["argv"][:-6], "--output_root", str(fresh), "--learning_rates", "0.05,2.5", "--seeds", "0,1"]
    code, out, err = _main(*argv, "--print_jobs")
    expected = [
        f"accelerate launch --num_processes 1 examples/train_image_classification.py --config {recipe} "
        f"--recipe_stage tune --learning_rate {lr!r} --seed 0 --output_dir {fresh / recipe.stem / 'tune' / f'lr{lr:g}_seed0'}"
        for recipe in bench["recipes"] for lr in RATES
    ]
    assert code == 0 and out.splitlines() == expected
    assert "2 tasks wait for their tune runs" in err and not fresh.exists()
    # --skip_tune: the final runs straight away, at the recipe's own learning rate (0.25 in mae-vtab-dtd.json)
    code, out, _ = _main(*argv, "--print_jobs", "--skip_tune")
    assert len(out.splitlines()) == len(TASKS) * len(SEEDS) and all("--recipe_stage final --learning_rate 0.25 " in l for l in out.splitlines())


def test_bad_input_stops_before_any_run(bench, tmp_path):
    paths = []
    for name in ("no-such-task", "another"):  # every missing folder is listed, not only the first
        missing = json.loads(bench["recipes"][0].read_text())
        missing["args"]["data_dir"] = str(tmp_path / name)
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(missing))
    code, _, err = _main("--recipes", *map(str, paths), "--output_root", str(tmp_path / "out"))
    assert code == 1 and not (tmp_path / "out").exists()
    assert all(f"  - {name}: No data folder {tmp_path / name}" in err for name in ("no-such-task", "another"))
    with contextlib.redirect_stderr(io.StringIO()):
        code, _, err = _main(*bench["argv"][:3], "--output_root", str(tmp_path / "out"), "--", "--no_such_flag", "1")
    assert code == 1 and "refused the arguments" in err and not (tmp_path / "out").exists()


def test_gpu_runs_are_separate_processes_one_per_gpu_at_a_time(bench, tmp_path, monkeypatch):
    """The scheduling only: each launch is replaced by a stand-in that records its GPU and writes what a run
    leaves: metrics, stopped.json for a loss gone non-finite (lr 0.3), nothing for a crash (seed 2, once)."""
    from gated_vpt.training.results import write_stopped

    running, seen, crashed, lock = {}, [], [], threading.Lock()

    def fake_call(command, stdout, stderr, env):
        gpu = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            assert gpu not in running, "two runs on one GPU"
            running[gpu] = command
            seen.append((gpu, command))
        time.sleep(0.05)
        output = Path(command[command.index("--output_dir") + 1])
        lr = float(command[command.index("--learning_rate") + 1])
        seed = int(command[command.index("--seed") + 1])
        with lock:
            del running[gpu]
            if lr == 0.3:
                write_stopped(output, "The training loss is nan at epoch 3")
                return 1
            if seed == 2 and not crashed:
                crashed.append(output)
                return 1
        (output / "metrics.json").write_text(json.dumps({"validation_accuracy": lr / 10, "test_accuracy": 0.5}))
        return 0

    monkeypatch.setattr(protocol.subprocess, "call", fake_call)
    task = protocol.ProtocolTask("t", bench["recipes"][0], 0.25)
    plan = protocol.Protocol("test", [task], tmp_path, learning_rates=(0.1, 0.2, 0.3), seeds=(0, 1, 2))
    done, stopped, failed = protocol.execute(plan, gpus=["0", "1"])
    assert (len(done), len(stopped), len(failed)) == (4, 1, 1) and {gpu for gpu, _ in seen} == {"0", "1"}
    assert all(c[1:6] == ["-m", "accelerate.commands.launch", "--num_processes", "1", str(protocol.TRAIN_SCRIPT)] for _, c in seen)
    assert plan.chosen_learning_rate(task) == (0.2, 2.0)  # the stopped rate loses, and is not run again
    assert [r.output_dir for r in failed] == crashed
    done, stopped, failed = protocol.execute(plan, gpus=["0", "1"])  # the crashed run is retried, nothing else
    assert ([r.output_dir for r in done], stopped, failed) == (crashed, [], [])
    assert "Stopped on a non-finite loss (no score; delete the run's stopped.json to retry): t tune lr 0.3 seed 0" in plan.write_report()


def test_benchmark_tasks_use_the_shipped_recipes_with_the_method_settings():
    tasks = protocol.benchmark_tasks("vtab1k", "mae", "vpt-deep")
    assert [t.name for t in tasks] == [t.slug for t in VTAB1K_TASKS]
    script = protocol.load_training_script()
    cifar = next(t for t in tasks if t.name == "cifar100")
    via_runner = vars(script.parse_args(["--config", str(cifar.recipe), *cifar.overrides]))
    shipped = vars(script.parse_args(["--config", str(REPO / "hub_configs" / "mae-vtab-cifar100-vpt-deep.json")]))
    differ = {k for k in shipped if shipped[k] != via_runner[k]}
    assert differ <= {"config", "output_dir"}  # the shipped baseline recipe is the gated one with the method's flags
    gated = protocol.benchmark_tasks("fgvc", "mocov3", "gated", data_root=Path("/datasets/fgvc"))
    assert [t.paper_top1 for t in gated] == [82.86, 93.71, 79.02, 83.37, 76.02]
    assert gated[0].overrides == ("--data_dir", "/datasets/fgvc/cub")
    # the paper's 19-task mean is the task-weighted mean of its group means (7, 4, 8 tasks): the table is consistent
    for backbone in PAPER_VTAB1K.values():
        for natural, specialized, structured, overall in backbone.values():
            assert (7 * natural + 4 * specialized + 8 * structured) / 19 == pytest.approx(overall, abs=0.006)
    assert protocol.paper_summary("vtab1k", "mae", "gated") == ({"Natural": 47.61, "Specialized": 76.86, "Structured": 36.8}, 49.22)


def test_the_command_line_forwards_to_the_runner(capsys):
    from gated_vpt.cli import main as cli_main

    with pytest.raises(SystemExit) as exit:
        cli_main(["protocol", "--help"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("usage: gated-vpt protocol")
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    listing = capsys.readouterr().out
    assert all(f"\n    {command} " in listing for command in ("data", "protocol"))


def test_paper_rates_trains_each_recipe_rate_once_with_seed_42_and_says_which_test_top1_it_reports(bench, tmp_path, monkeypatch):
    """The released run.sh: no grid, one run per task at the recipe's (Table 5) rate with seed 42. VTAB-1k final
    runs have no validation split, so metrics.json has no test top-1 at a best validation epoch, and says why."""
    monkeypatch.chdir(REPO)
    root = tmp_path / "paper"
    argv = ["--recipes", *map(str, bench["recipes"]), "--output_root", str(root), "--paper_rates"]
    code, out, _ = _main(*argv, "--print_jobs")
    expected = [
        f"accelerate launch --num_processes 1 examples/train_image_classification.py --config {recipe} "
        f"--recipe_stage final --learning_rate 0.25 --seed 42 --output_dir {root / recipe.stem / 'final' / 'lr0.25_seed42'}"
        for recipe in bench["recipes"]
    ]
    assert code == 0 and out.splitlines() == expected
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        protocol.parse_args([*argv, "--learning_rates", "0.1"])
    assert "--paper_rates trains at each recipe's rate and skips the grid: drop --learning_rates" in err.getvalue()

    code, out, _ = _main(*argv)
    assert code == 0 and "== ran 2 runs" in out
    for task in TASKS:
        metrics = _metrics(root, task, "final", 0.25, 42)
        assert metrics["seed"] == 42 and isinstance(metrics["test_accuracy"], float)
        assert metrics["test_accuracy_at_best_validation"] is None and "no validation split" in metrics["best_validation_note"]
        assert f"| {task} | {TASKS[task][1]} | 0.25 |  | {100 * metrics['test_accuracy']:.2f} ± 0.00 | 1 |" in out
    assert "test top-1, last epoch (mean ± std)" in out and "seed 42" in out
    code, out, _ = _main(*argv, "--report_only", "--report_epoch", "best_validation")
    assert code == 0 and "test top-1 at the best validation epoch (mean ± std)" in out
    assert out.count("| n/a |") == len(TASKS) and "(no validation split, as in VTAB-1k final runs" in out
    assert {row["test_top1_epoch"] for row in csv.DictReader(open(root / "results.csv"))} == {"best_validation"}


@pytest.mark.slow
def test_the_local_executor_runs_the_same_protocol_and_writes_the_same_table(bench, tmp_path, monkeypatch):
    """--cluster local: each run a submitit job (a process of its own); the command submits and returns, --status
    tells the states, and --wait finishes the protocol with the table of the in-process runs."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs compute as this process does (one thread)
    root = tmp_path / "local"
    argv = [*bench["argv"][:-6], "--output_root", str(root), *bench["argv"][-4:], "--cluster", "local",
            "--max_parallel_jobs", "2", "--poll_seconds", "0.5"]
    code, out, _ = _main(*argv)
    assert code == 0 and "== submitted 2 runs (local)" in out and "run the same command again" in out
    code, out, _ = _main(*argv, "--status")
    lines = out.splitlines()
    assert code == 0 and lines[-1].startswith("4 runs: ") and lines[-2].startswith("not planned   the final runs of")
    assert [line.split()[0] for line in lines[2:4]] == ["not", "not"]  # digits-b's tune runs wait for a free place
    code, out, _ = _main(*argv, "--wait")
    assert code == 0 and "== 8 done" in out
    ours, theirs = (list(csv.DictReader(open(r / "results.csv"))) for r in (root, bench["root"]))
    assert ours == theirs
    assert (root / "results.md").read_text() == (bench["root"] / "results.md").read_text()
    assert not list(root.rglob("epoch_*"))  # the finished runs' checkpoints are removed, as in-process
