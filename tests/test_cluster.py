"""``gated-vpt protocol --cluster``: the sbatch scripts and job arrays submitted through submitit (to stand-in
``sbatch`` / ``srun`` / ``sacct`` commands that record what they get), the run states ``--status`` reads from sacct,
never resubmitting a queued, running or failed run (unless ``--retry_failed``), bad settings refused before anything
is submitted, the cost printout, and a local-executor job that the scheduler's signal stops mid-run: it checkpoints,
requeues itself and ends with the adapter of an uninterrupted run, bit for bit."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from gated_vpt.training import executors, protocol

from conftest import write_vtab1k_task

pytest.importorskip("submitit")
pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parent.parent
SACCT_HEADER = "JobID|State"


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = protocol.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _recipe(tmp: Path, name: str, classes, **args) -> Path:
    folder = tmp / "data" / name
    write_vtab1k_task(folder, classes, (24, 12, 20), seed=len(name))
    recipe = json.loads((REPO / "hub_configs" / "mae-vtab-dtd.json").read_text())
    recipe["args"].update(
        model_name_or_path=str(REPO / "assets" / "mae-tiny"), data_dir=str(folder), num_labels=len(classes),
        image_size=32, per_device_train_batch_size=8, per_device_eval_batch_size=64, num_train_epochs=2,
        warmup_epochs=1, output_dir=str(tmp / "unused"), **args,
    )
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(recipe))
    return path


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    return [_recipe(tmp, "digits-a", (0, 1, 6)), _recipe(tmp, "digits-b", (2, 7))]


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """Stand-in Slurm commands on PATH: sbatch keeps each script it gets and answers job 1000, 1001, ...; sacct
    prints what the test writes to ``sacct.txt``; srun exists (submitit looks for it)."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir()
    scripts.mkdir()
    commands = {
        "sbatch": f'n=$(ls "{scripts}" | wc -l)\ncp "$1" "{scripts}/$n.sh"\necho "Submitted batch job $((1000 + n))"\n',
        "sacct": f'cat "{tmp_path / "sacct.txt"}"\n',
        "srun": "exit 0\n",
    }
    for name, body in commands.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "sacct.txt").write_text(SACCT_HEADER + "\n")
    return {"scripts": scripts, "sacct": tmp_path / "sacct.txt"}


def _submitted(scripts: Path) -> list[str]:
    return [(scripts / f"{i}.sh").read_text() for i in range(len(list(scripts.iterdir())))]


def test_slurm_submits_one_throttled_array_with_the_settings_and_the_status_reads_sacct(recipes, slurm, tmp_path):
    from submitit.core.utils import DelayedSubmission

    root = tmp_path / "out"
    argv = ["--recipes", *map(str, recipes), "--output_root", str(root), "--learning_rates", "0.05,0.5,2.5",
            "--seeds", "0,1", "--cluster", "slurm", "--slurm_partition", "gpu,gpu-long", "--slurm_account", "vision",
            "--slurm_time", "90", "--gpus_per_job", "1", "--cpus_per_job", "6", "--mem_per_job", "32G",
            "--max_parallel_jobs", "4", "--slurm_extra", "qos=high", "--slurm_extra", "constraint=a100"]
    code, out, _ = _main(*argv)
    assert code == 0 and "== submitted 6 runs (slurm): jobs 1000_[0-5]" in out
    [script] = _submitted(slurm["scripts"])
    lines = set(script.splitlines())
    for expected in ("#SBATCH --partition=gpu,gpu-long", "#SBATCH --account=vision", "#SBATCH --time=90",
                     "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=6", "#SBATCH --mem=32G",
                     "#SBATCH --array=0-5%4", "#SBATCH --qos=high", "#SBATCH --constraint=a100",
                     "#SBATCH --signal=USR2@90", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1"):
        assert expected in lines, script
    assert f"-u -m submitit.core._submit {root / 'submitit'}" in script
    # each array task runs one run: its pickled job (written by this test) holds the run's training command
    tune = [protocol.build_protocol(protocol.parse_args(argv)).run(t, "tune", lr, 0)
            for t in protocol.recipe_tasks(recipes) for lr in (0.05, 0.5, 2.5)]
    for index, run in enumerate(tune):
        record = json.loads((run.output_dir / "job.json").read_text())
        assert record["job_id"] == f"1000_{index}" and record["executor"] == "slurm"
        job = DelayedSubmission.load(root / "submitit" / f"1000_{index}_submitted.pkl").function
        assert job.command() == [sys.executable, str(protocol.TRAIN_SCRIPT), *run.argv, "--stop_signals", "USR2"]

    # the scheduler's view: done (with metrics.json), running, queued, failed (its log's last error line),
    # cancelled, and one run whose record is gone (not submitted)
    (tune[0].output_dir / "metrics.json").write_text(json.dumps({"validation_accuracy": 0.5}))
    log = root / "submitit" / "1000_3_0_log.err"
    log.write_text("INFO starting\nTraceback (most recent call last):\nRuntimeError: CUDA error: out of memory\nsrun: done\n")
    (tune[5].output_dir / "job.json").unlink()
    slurm["sacct"].write_text(SACCT_HEADER + "\n1000_0|COMPLETED\n1000_1|RUNNING\n1000_2|PENDING\n1000_3|FAILED\n"
                              "1000_4|CANCELLED by 42\n1000_4.batch|CANCELLED\n")
    code, out, _ = _main(*argv, "--status")
    lines = out.splitlines()
    assert code == 0 and lines[:6] == [
        "done          digits-a tune lr 0.05 seed 0  job 1000_0",
        "running       digits-a tune lr 0.5 seed 0  job 1000_1",
        "queued        digits-a tune lr 2.5 seed 0  job 1000_2",
        f"failed        digits-b tune lr 0.05 seed 0  job 1000_3  job failed: {log}: RuntimeError: CUDA error: out of memory",
        f"failed        digits-b tune lr 0.5 seed 0  job 1000_4  job cancelled: {tune[4].output_dir / 'train.log'}: (no log written)",
        "not submitted digits-b tune lr 2.5 seed 0",
    ]
    assert "6 runs: 1 done, 1 running, 1 queued, 2 failed, 1 not submitted" in out

    # running again submits only the run never submitted: not the running, queued or failed ones
    code, out, _ = _main(*argv)
    assert code == 0 and "== submitted 1 runs (slurm): jobs 1001" in out and "2 failed runs were not resubmitted" in out
    single = _submitted(slurm["scripts"])[1]
    assert "#SBATCH --array" not in single and json.loads((tune[5].output_dir / "job.json").read_text())["job_id"] == "1001"
    code, out, _ = _main(*argv, "--retry_failed")
    assert code == 0 and "== submitted 2 runs (slurm): jobs 1002_[0-1]" in out
    assert "#SBATCH --array=0-1%2" in _submitted(slurm["scripts"])[2].splitlines()
    assert [json.loads((run.output_dir / "job.json").read_text())["job_id"] for run in tune[3:5]] == ["1002_0", "1002_1"]


def test_classify_reads_every_scheduler_state():
    run = protocol.Run(protocol.ProtocolTask("t", Path("t.json"), 0.1), "tune", 0.1, 0, Path("/nonexistent/run"), ())
    record = {"job_id": "7_1", "submitted": 1000.0}
    states = {"PENDING": "queued", "REQUEUED": "queued", "RUNNING": "running", "COMPLETING": "running",
              "TIMEOUT": "failed", "OUT_OF_MEMORY": "failed", "NODE_FAIL": "failed", "PREEMPTED": "failed",
              "COMPLETED": "failed"}  # completed without metrics.json: the run did not finish
    assert {state: executors.classify(run, record, state, now=5000.0).state for state in states} == states
    assert executors.classify(run, record, "", now=1000.0 + executors.SACCT_GRACE_S - 1).state == "queued"
    late = executors.classify(run, record, "", now=1000.0 + executors.SACCT_GRACE_S + 1)
    assert late.state == "failed" and late.detail.startswith("unknown to sacct")


@pytest.mark.parametrize("flags, message", [
    (["--slurm_partition", "gpu;rm -rf /"], "--slurm_partition 'gpu;rm -rf /': expected a partition name"),
    (["--slurm_time", "-5"], "--slurm_time -5: the time limit must be a positive number of minutes."),
    (["--mem_per_job", "lots"], "--mem_per_job 'lots': expected a positive amount such as 32G"),
    (["--slurm_extra", "time=5"], "--slurm_extra 'time=5': time is set by its own flag"),
    (["--max_parallel_jobs", "0"], "--max_parallel_jobs 0: expected a whole number of at least 1."),
])
def test_bad_settings_stop_with_one_message_before_anything_is_submitted(recipes, slurm, tmp_path, flags, message):
    code, out, err = _main("--recipes", str(recipes[0]), "--output_root", str(tmp_path / "out"), "--cluster", "slurm", *flags)
    assert (code, out) == (1, "") and err == f"gated-vpt protocol: error: {err.split('error: ', 1)[1]}"
    assert message in err and len(err.strip().splitlines()) == 1
    assert _submitted(slurm["scripts"]) == [] and not (tmp_path / "out").exists()


def test_a_cluster_without_submitit_says_how_to_install_it(recipes, slurm, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    code, _, err = _main("--recipes", str(recipes[0]), "--output_root", str(tmp_path / "out"), "--cluster", "slurm")
    assert code == 1 and err.strip() == ("gated-vpt protocol: error: --cluster needs submitit, which is not installed: "
                                         "pip install 'gated-vpt[cluster]'.")
    assert _submitted(slurm["scripts"]) == [] and not (tmp_path / "out").exists()


def test_cost_printout_counts_runs_images_and_gpu_hours(recipes, tmp_path):
    code, out, _ = _main("--recipes", *map(str, recipes), "--output_root", str(tmp_path / "out"), "--learning_rates",
                         "0.05,2.5", "--seeds", "0,1,2", "--dry_run", "--images_per_second", "10")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "Cost of recipes: digits-a, digits-b: 10 runs, 10 not done yet"
    # tune: train800 (24 images) x 2 epochs, val200 (12) evaluated every epoch; final: 36 images, test (20) once
    assert lines[2].split() == ["digits-a", "tune", "2", "2", "24", "x", "2", "24"]
    assert lines[3].split() == ["digits-a", "final", "3", "3", "36", "x", "2", "20"]
    trained, evaluated = 2 * (2 * 24 * 2 + 3 * 36 * 2), 2 * (2 * 24 + 3 * 20)
    assert f"not done: {trained:,} training images and {evaluated:,} evaluated images" in out
    hours = (trained / 10 + evaluated / 30) / 3600
    assert f"estimate: {hours:,.1f} GPU-hours" in out and not (tmp_path / "out").exists()


def test_the_full_vtab1k_protocol_is_costed_without_data_or_backbone():
    code, out, _ = _main("--benchmark", "vtab1k", "--backbone", "mae", "--dry_run")
    assert code == 0 and out.splitlines()[0] == "Cost of mae gated on vtab1k: 228 runs, 228 not done yet"
    # 19 tasks x (7 rates x 800 images + 5 seeds x 1000 images) x 100 epochs, 200 validation images per tune epoch
    assert "not done: 20,140,000 training images and 2,660,000 evaluated images (+ the test splits of 19 tasks" in out


@pytest.mark.slow
def test_a_signalled_local_job_checkpoints_requeues_and_ends_as_an_uninterrupted_run(recipes, tmp_path, monkeypatch):
    """The scheduler's signal (USR2) sent to a running job: its training process saves a checkpoint and exits,
    submitit requeues the job, and the run resumes: adapter and metrics equal an uninterrupted run's."""
    import psutil

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = ["--recipes", str(recipes[0]), "--skip_tune", "--seeds", "0"]
    train = ["--", "--num_train_epochs", "6", "--checkpointing_steps", "1", "--save_total_limit", "none"]
    code, _, _ = _main(*common, "--output_root", str(tmp_path / "reference"), *train)
    assert code == 0
    root = tmp_path / "local"
    code, out, _ = _main(*common, "--output_root", str(root), "--cluster", "local", *train)
    assert code == 0 and "== submitted 1 runs (local)" in out
    run_dir = root / "digits-a" / "final" / "lr0.25_seed0"
    controller = int(json.loads((run_dir / "job.json").read_text())["job_id"])
    deadline = time.time() + 300
    while not (run_dir / "step_1").is_dir():  # training has started (its signal handler is installed)
        assert time.time() < deadline and psutil.pid_exists(controller), (run_dir / "train.log").read_text()
        time.sleep(0.02)
    [job] = psutil.Process(controller).children()
    os.kill(job.pid, signal.SIGUSR2)
    while not (run_dir / "metrics.json").is_file():
        assert time.time() < deadline, (run_dir / "train.log").read_text()
        time.sleep(0.2)
    log = (run_dir / "train.log").read_text()
    assert log.count("Stopped on a signal after optimizer update") == 1 and "Resuming from" in log
    job_log = Path(json.loads((run_dir / "job.json").read_text())["log"])  # submitit's stderr; its messages: stdout
    assert "this job is preempted" in job_log.read_text() and "Requeued job" in job_log.with_suffix(".out").read_text()
    reference = tmp_path / "reference" / "digits-a" / "final" / "lr0.25_seed0"
    adapter = "adapter/adapter_model.safetensors"
    assert (run_dir / adapter).read_bytes() == (reference / adapter).read_bytes()
    metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert {k: v for k, v in metrics.items() if k != "train_seconds"} == {k: v for k, v in expected.items() if k != "train_seconds"}
    while psutil.pid_exists(controller) and psutil.Process(controller).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.2)
    assert not list(run_dir.glob("step_*")) and not list(run_dir.glob("epoch_*"))


def test_report_only_marks_a_partial_table(recipes, tmp_path):
    argv = ["--recipes", *map(str, recipes), "--output_root", str(tmp_path), "--learning_rates", "0.05,2.5", "--seeds", "0,1"]
    plan = protocol.build_protocol(protocol.parse_args(argv))
    for run in plan.tune_runs(plan.tasks[0]):
        run.output_dir.mkdir(parents=True)
        (run.output_dir / "metrics.json").write_text(json.dumps({"validation_accuracy": run.learning_rate / 10}))
    code, out, _ = _main(*argv, "--report_only")
    assert code == 0 and out.startswith("## recipes: digits-a, digits-b (partial: 2 of 8 runs)\n")
    assert "| digits-a | Natural | 2.5 | 25.00 | pending | 0 |" in (tmp_path / "results.md").read_text()


def test_measure_speed_times_the_first_recipe_on_this_device(recipes, tmp_path):
    code, out, _ = _main("--recipes", str(recipes[0]), "--output_root", str(tmp_path / "out"), "--skip_tune",
                         "--dry_run", "--measure_speed")
    [estimate] = [line for line in out.splitlines() if line.startswith("estimate: ")]
    assert code == 0 and "training images/s from --measure_speed on CPU; evaluation" in estimate and "measured)" in estimate
    rate = float(estimate.split("GPU per run; ")[1].split(" training")[0].replace(",", ""))
    assert rate > 0
