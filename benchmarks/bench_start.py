"""How long the ``gated-vpt`` command takes to answer: ``--help`` of every command and ``info`` of an adapter.

Each command runs as a new process, as a user types it (the installed ``gated-vpt`` entry point, found next to
this Python), ``--reps`` times round-robin; reported: median, minimum and maximum wall time and the median CPU time
(user + system of the child), which does not grow with the load of a shared machine. The adapter is a tiny random
one written into a temporary run folder (``<run>/adapter/``), so nothing is downloaded. ``--hub`` also serves it from
the tests' local Hub server (``tests/hub_server.py``, on 127.0.0.1) and times ``info`` of its repo id.

    python -m benchmarks.bench_start
    python -m benchmarks.bench_start --hub
    python -m benchmarks.bench_start --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import torch

from .measure import median
from .report import emit, environment, table

COMMANDS = ("push", "pull", "info", "predict", "convert", "protocol")
# (what, goal in seconds of wall time): the targets on 2 cores.
GOALS = {"--help": 1.0, "info": 2.0}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="Runs of each command (median reported).")
    parser.add_argument("--out", default=None, help="Also write the markdown report to this file.")
    parser.add_argument("--hub", action="store_true", help="Also time info of a Hub repo id (a local test Hub server).")
    parser.add_argument("--quick", action="store_true", help="One run of three commands: checks that it works (CI).")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be a positive integer.")
    return args


def command_lines(run_folder: Path, quick: bool = False) -> list[list[str]]:
    """The argument lists timed: ``--help`` of the command and of each subcommand, ``info`` three ways (quick: one
    of each kind)."""
    adapter = str(run_folder / "adapter")
    if quick:
        return [["--help"], ["info", "--help"], ["info", str(run_folder)]]
    return [
        ["--help"],
        *([command, "--help"] for command in COMMANDS),
        ["data", "check", "--help"],
        ["info", str(run_folder)],
        ["info", adapter],
        ["info", adapter, "--json"],
    ]


def write_run_folder(folder: Path) -> None:
    """A training run's output folder holding a tiny random gated_vpt adapter (4 blocks, width 32)."""
    from peft import get_peft_model
    from transformers import ViTConfig, ViTForImageClassification

    from gated_vpt import GatedPromptConfig

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    model = get_peft_model(ViTForImageClassification(config), GatedPromptConfig())
    model.save_pretrained(folder / "adapter")


@contextlib.contextmanager
def local_hub(adapter: Path, home: Path) -> Iterator[tuple[str, dict]]:
    """The tests' Hub server on 127.0.0.1 holding ``adapter`` as ``bench/tiny``: (the repo id, the environment that
    points the command at it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hub_server import Repo, running_hub

    with running_hub() as hub:
        files = {file.name: file.read_bytes() for file in adapter.iterdir() if file.is_file()}
        hub.repos["bench/tiny"] = Repo(commits=[("b" * 40, files)])
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0"}
        yield "bench/tiny", env


def time_command(executable: str, argv: list[str], env: Optional[dict] = None) -> tuple[float, float, int]:
    """Wall seconds, child CPU seconds (user + system) and exit status of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    status = subprocess.run([executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env).returncode
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), status


def run(args: argparse.Namespace) -> str:
    executable = str(Path(sys.executable).with_name("gated-vpt"))
    if not os.access(executable, os.X_OK):
        raise SystemExit(f"No gated-vpt command next to {sys.executable}: install the package (pip install -e .).")
    reps = 1 if args.quick else args.reps
    with tempfile.TemporaryDirectory() as temporary, contextlib.ExitStack() as stack:
        run_folder = Path(temporary) / "run"
        write_run_folder(run_folder)
        lines = command_lines(run_folder, args.quick)
        env = None
        if args.hub:
            repo_id, env = stack.enter_context(local_hub(run_folder / "adapter", Path(temporary) / "hf"))
            lines.append(["info", repo_id])
        results: dict[int, list[tuple[float, float, int]]] = {i: [] for i in range(len(lines))}
        for _ in range(reps):
            for index, argv in enumerate(lines):
                results[index].append(time_command(executable, argv, env))
    rows = []
    for index, argv in enumerate(lines):
        walls = [wall for wall, _, _ in results[index]]
        statuses = sorted({status for _, _, status in results[index]})
        goal = GOALS["--help" if "--help" in argv else "info"]
        shown = " ".join(part.replace(temporary, "<tmp>") for part in argv)
        rows.append([f"`gated-vpt {shown}`", f"{median(walls):.2f}", f"{min(walls):.2f}-{max(walls):.2f}",
                     f"{median([cpu for _, cpu, _ in results[index]]):.2f}", f"{goal:.0f}",
                     "yes" if median(walls) < goal else "no", ",".join(map(str, statuses))])
    headers = ["command", "wall s (median)", "wall s (min-max)", "CPU s (median)", "goal s", "met", "exit status"]
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return "\n\n".join([
        "# Start time of the gated-vpt command",
        environment(torch.device("cpu")) + f"\n- runs per command: {reps}; load average at the end: {load}",
        table(headers, rows),
    ])


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
