"""The paper's evaluation protocol (VPT's) as one command: for every task, train the learning-rate grid on the tune
split (VTAB-1k: train800, validated on val200) and keep the rate with the best last-epoch validation top-1 (ties: the
smaller rate); train that rate on the final split (VTAB-1k: train800val200) with several seeds and take each run's
last-epoch test top-1; then write the table in the paper's form with the paper's numbers alongside
(``protocol_report``).

    gated-vpt protocol --benchmark vtab1k --backbone mae --method gated              # all runs, one after another
    gated-vpt protocol --benchmark fgvc --backbone mocov3 --gpus 0,1,2,3             # one run per GPU at a time
    gated-vpt protocol --benchmark vtab1k --print_jobs > jobs.txt                    # the commands, for a scheduler
    gated-vpt protocol --benchmark vtab1k --paper_rates                              # released run.sh: Table 5 rates, seed 42
    gated-vpt protocol --recipes a.json b.json -- --num_train_epochs 50              # flags after -- go to every run
    gated-vpt protocol --benchmark vtab1k --cluster slurm --slurm_partition gpu      # Slurm job arrays (executors)
    gated-vpt protocol --benchmark vtab1k --dry_run --images_per_second 400          # runs, images, GPU-hours

Each run is ``examples/train_image_classification.py`` with the task's recipe; its results stay under the output root
in ``<root>/<task>/<stage>/lr<rate>_seed<seed>/`` (``metrics.json``, adapter, plots). A run with a ``metrics.json``
is finished and never redone, so running the command again resumes: an interrupted run continues from its latest
checkpoint, and the checkpoints of finished runs are deleted (``--keep_checkpoints`` keeps them). A run whose loss
turned non-finite leaves ``stopped.json`` instead: it is not redone and counts as losing in the grid.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import queue
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from gated_vpt.recipes import CLASSIFICATION, RECIPES_DIR, load_recipe
from gated_vpt.tokens import token_argument

from .paper_benchmarks import (
    BACKBONE_NAMES,
    BENCHMARKS,
    METHODS,
    PAPER_FGVC,
    PAPER_FGVC_MEAN,
    PAPER_VTAB1K,
    RECIPE_FAMILY,
    VTAB_GROUPS,
    method_args,
)
from .executors import ClusterSettings, add_cluster_args, format_statuses, run_on_cluster
from .protocol_cost import add_cost_args, format_costs, measure_speed, stage_costs
from .protocol_report import REPORTED, TaskResult, read_score, write_report

logger = logging.getLogger(__name__)

DEFAULT_LEARNING_RATES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
PAPER_SEED = 42  # the released run.sh: one run per task at its Table 5 rate
TRAIN_SCRIPT = RECIPES_DIR.parent / "examples" / "train_image_classification.py"


@dataclass(frozen=True)
class ProtocolTask:
    """One row of the table: its recipe, the training-script flags added to it (method, data folder), its VTAB group
    and the paper's number for it."""

    name: str
    recipe: Path
    recipe_learning_rate: float
    group: Optional[str] = None
    paper_top1: Optional[float] = None
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Run:
    """One training run: ``argv`` are the training script's arguments."""

    task: ProtocolTask
    stage: str
    learning_rate: float
    seed: int
    output_dir: Path
    argv: tuple[str, ...]

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.json"

    @property
    def finished(self) -> bool:
        return self.metrics_path.is_file()

    @property
    def stopped(self) -> bool:
        """The run stopped for good (e.g. its loss turned non-finite): settled, without a score."""
        from .results import STOPPED_FILE  # results imports peft and matplotlib: not for `--help`

        return (self.output_dir / STOPPED_FILE).is_file() and not self.finished

    @property
    def settled(self) -> bool:
        return self.finished or self.stopped

    def launch_argv(self) -> list[str]:
        """``argv``, continuing from the run's latest checkpoint when an earlier attempt left one."""
        from .checkpointing import latest_checkpoint

        resume = ["--resume_from_checkpoint", "latest"] if latest_checkpoint(self.output_dir) is not None else []
        return [*self.argv, *resume]

    def command(self) -> str:
        """The shell command of this run (for a job list)."""
        return shlex.join(["accelerate", "launch", "--num_processes", "1", _display_path(TRAIN_SCRIPT), *self.launch_argv()])


@dataclass
class Protocol:
    """What to run: the tasks, the grid, the seeds, where results go, and the paper's summary numbers.

    Example:

    ```py
    >>> protocol = Protocol("mae gated VTAB-1k", benchmark_tasks("vtab1k", "mae", "gated"), Path("outputs/p"))
    >>> [run.command() for run in protocol.pending_runs()][:1]
    ['accelerate launch --num_processes 1 .../examples/train_image_classification.py --config .../hub_configs/mae-vtab-caltech101.json --recipe_stage tune --learning_rate 0.05 --seed 0 --output_dir outputs/p/caltech101/tune/lr0.05_seed0']
    ```
    """

    title: str
    tasks: list[ProtocolTask]
    output_root: Path
    learning_rates: tuple[float, ...] = DEFAULT_LEARNING_RATES
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    tune_seed: int = 0
    tune: bool = True
    train_args: tuple[str, ...] = ()
    paper_groups: dict[str, float] = field(default_factory=dict)
    paper_overall: Optional[float] = None
    report_epoch: str = "last"

    def run(self, task: ProtocolTask, stage: str, learning_rate: float, seed: int) -> Run:
        output = self.output_root / task.name / stage / f"lr{learning_rate:g}_seed{seed}"
        argv = ("--config", str(task.recipe), "--recipe_stage", stage, "--learning_rate", repr(learning_rate),
                "--seed", str(seed), "--output_dir", str(output), *task.overrides, *self.train_args)
        return Run(task, stage, learning_rate, seed, output, argv)

    def tune_runs(self, task: ProtocolTask) -> list[Run]:
        if not self.tune:
            return []
        return [self.run(task, "tune", lr, self.tune_seed) for lr in self.learning_rates]

    def chosen_learning_rate(self, task: ProtocolTask) -> tuple[Optional[float], Optional[float]]:
        """(learning rate, its validation top-1 %) once every tune run of ``task`` is settled and one finished, else
        (None, None); without a tune stage, the recipe's rate. Stopped runs (a non-finite loss) lose."""
        if not self.tune:
            return task.recipe_learning_rate, None
        runs = self.tune_runs(task)
        scores = [(read_score(run.metrics_path, "validation_accuracy"), run.learning_rate) for run in runs if run.finished]
        if not scores or not all(run.settled for run in runs):
            return None, None
        best, rate = max(scores, key=lambda pair: (pair[0], -pair[1]))
        return rate, best

    def final_runs(self, task: ProtocolTask) -> list[Run]:
        rate, _ = self.chosen_learning_rate(task)
        return [] if rate is None else [self.run(task, "final", rate, seed) for seed in self.seeds]

    def pending_runs(self) -> list[Run]:
        """The unsettled runs that can start now: tune runs, and the final runs of tasks whose tuning is done."""
        return [run for run in self.all_runs() if not run.settled]

    def all_runs(self) -> list[Run]:
        """Every run known now (final runs only for tasks whose tuning is done)."""
        return [run for task in self.tasks for run in self.tune_runs(task) + self.final_runs(task)]

    def results(self) -> list[TaskResult]:
        results = []
        for task in self.tasks:
            rate, validation = self.chosen_learning_rate(task)
            scores = {run.seed: read_score(run.metrics_path, REPORTED[self.report_epoch], self.report_epoch != "last")
                      for run in self.final_runs(task) if run.finished}
            tests = {seed: score for seed, score in scores.items() if score is not None}
            stopped = [f"{run.stage} lr {run.learning_rate:g} seed {run.seed}" for run in self.tune_runs(task) + self.final_runs(task)
                       if run.stopped]
            results.append(TaskResult(task.name, task.group, rate, validation, tests, task.paper_top1, stopped,
                                      unscored=len(scores) - len(tests)))
        return results

    def planned_runs(self) -> int:
        """All runs of the protocol, the final runs of tasks not tuned yet included."""
        return len(self.tasks) * ((len(self.learning_rates) if self.tune else 0) + len(self.seeds))

    def write_report(self) -> str:
        """The table (``protocol_report``), its title marked partial while runs are missing."""
        settled = sum(run.settled for run in self.all_runs())
        title = self.title if settled == self.planned_runs() else f"{self.title} (partial: {settled} of {self.planned_runs()} runs)"
        return write_report(self.output_root, title, self.results(), self.paper_groups, self.paper_overall,
                            self.report_epoch)


def benchmark_tasks(
    benchmark: str,
    backbone: str,
    method: str,
    recipes_dir: Optional[Path] = None,
    data_root: Optional[Path] = None,
    only: Optional[Sequence[str]] = None,
) -> list[ProtocolTask]:
    """The tasks of ``benchmark`` (``vtab1k`` or ``fgvc``) from the gated recipes ``<backbone>-<vtab|fgvc>-<task>.json``
    in ``recipes_dir``, with ``method``'s adapter settings as flags, the paper's number per task where it reports one
    (FGVC) and, with ``data_root``, each data folder moved under it."""
    if benchmark not in BENCHMARKS or backbone not in BACKBONE_NAMES or method not in METHODS:
        raise ValueError(
            f"Unknown benchmark, backbone or method ({benchmark!r}, {backbone!r}, {method!r}): use {list(BENCHMARKS)}, "
            f"{list(BACKBONE_NAMES)}, {list(METHODS)}."
        )
    definitions = BENCHMARKS[benchmark]
    if only:
        unknown = sorted(set(only) - {t.slug for t in definitions})
        if unknown:
            raise ValueError(f"Unknown {benchmark} tasks {unknown}: use some of {[t.slug for t in definitions]}.")
        definitions = [t for t in definitions if t.slug in only]
    directory = RECIPES_DIR if recipes_dir is None else Path(recipes_dir)
    tasks = []
    for definition in definitions:
        path = directory / f"{backbone}-{RECIPE_FAMILY[benchmark]}-{definition.slug}.json"
        args = load_recipe(path, task_type=CLASSIFICATION)
        wanted = method_args(method, args["num_prompt_tokens"], args.get("gate_init", 5.0))
        overrides = _flags({k: v for k, v in wanted.items() if args.get(k) != v}) + _data_flags(path, args, data_root)
        paper = PAPER_FGVC[backbone][method][BENCHMARKS["fgvc"].index(definition)] if benchmark == "fgvc" else None
        tasks.append(ProtocolTask(definition.slug, path, args["learning_rate"], definition.group, paper, overrides))
    return tasks


def recipe_tasks(paths: Sequence[Path], data_root: Optional[Path] = None) -> list[ProtocolTask]:
    """One task per recipe file, named by its file name; its VTAB group and reported top-1 from its ``paper`` field."""
    tasks = []
    for path in map(Path, paths):
        args = load_recipe(path, task_type=CLASSIFICATION)
        paper = _read_paper(path)
        tasks.append(ProtocolTask(path.stem, path, args["learning_rate"], paper.get("vtab_group"),
                                  paper.get("reported_top1"), _data_flags(path, args, data_root)))
    if len({t.name for t in tasks}) < len(tasks):
        raise ValueError("Two recipes share a file name; the output folders are named after them. Rename one.")
    return tasks


def paper_summary(benchmark: str, backbone: str, method: str) -> tuple[dict[str, float], float]:
    """The paper's group means (VTAB-1k) and its overall mean for a benchmark, backbone and method."""
    if benchmark == "vtab1k":
        *groups, overall = PAPER_VTAB1K[backbone][method]
        return dict(zip(VTAB_GROUPS, groups)), overall
    return {}, PAPER_FGVC_MEAN[backbone][method]


def _read_paper(path: Path) -> dict:
    import json

    return json.loads(path.read_text()).get("paper", {})


def _flags(values: dict) -> tuple[str, ...]:
    flags = []
    for key, value in values.items():
        flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return tuple(flags)


def _data_flags(path: Path, args: dict, data_root: Optional[Path]) -> tuple[str, ...]:
    if data_root is None:
        return ()
    if not args.get("data_dir"):
        raise ValueError(f"--data_root needs recipes with a data_dir; {path} has none.")
    return ("--data_dir", str(Path(data_root) / Path(args["data_dir"]).name))


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_training_script():
    """``examples/train_image_classification.py`` as a module (its ``parse_args`` and ``main``)."""
    if not TRAIN_SCRIPT.is_file():
        raise FileNotFoundError(
            f"The protocol runs {TRAIN_SCRIPT}, which ships with the source repository; run it from a checkout."
        )
    from ..registration import register

    register()  # the script builds its models in this process; the gated-vpt command loads no core for `protocol`
    spec = importlib.util.spec_from_file_location("train_image_classification", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def check_runs(protocol: Protocol, script) -> None:
    """Before anything runs: every task's arguments parse for both stages (recipes, flags after --), and every
    benchmark folder holds its split files and images. Raises ``ValueError`` listing every problem."""
    from .benchmark_data import DataLayoutError, read_layout
    from .run import RunStopped, require_prepared_backbone

    problems = []
    for task in protocol.tasks:
        for stage in ("tune", "final") if protocol.tune else ("final",):
            run = protocol.run(task, stage, task.recipe_learning_rate, protocol.tune_seed)
            try:
                args = script.parse_args(list(run.argv))
            except SystemExit:
                raise ValueError(f"The training script refused the arguments of {task.name} (above): {shlex.join(run.argv)}") from None
        try:
            require_prepared_backbone(args)
        except RunStopped as stop:
            raise ValueError(str(stop)) from None
        if getattr(args, "data_dir", None):
            try:
                layout, splits = read_layout(args.data_dir, args.data_layout)
            except DataLayoutError as error:
                problems.append(f"{task.name}: {str(error).split('. Expected')[0]}")
                continue
            problems += [f"{task.name}: {p}" for s in splits.values() for p in s.problems[:3]]
    if problems:
        raise ValueError(
            "The data is not ready (`gated-vpt data check <folder>` lists every problem; docs/RECIPES.md says where the "
            "data comes from):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def execute(
    protocol: Protocol, gpus: Sequence[str] = (), keep_checkpoints: bool = False
) -> tuple[list[Run], list[Run], list[Run]]:
    """Run every pending run (tune runs first; final runs once their task is tuned) in this process, or as
    ``accelerate launch`` processes one per GPU in ``gpus``. Returns (finished, stopped, failed) runs: a stopped
    run wrote ``stopped.json`` (e.g. a non-finite loss) and is settled; a failed one is retried by the next call."""
    from .checkpointing import remove_checkpoints

    script = None if gpus else load_training_script()
    done, stopped, failed = [], [], []
    while True:
        runs = [run for run in protocol.pending_runs() if run not in failed]
        if not runs:
            return done, stopped, failed
        if gpus:
            outcomes = _run_on_gpus(runs, gpus)
        else:
            outcomes = [(run, _run_in_process(script, run)) for run in runs]
        for run, _ in outcomes:
            (done if run.finished else stopped if run.stopped else failed).append(run)
            if run.settled and not keep_checkpoints:
                remove_checkpoints(run.output_dir)


def _run_in_process(script, run: Run) -> bool:
    from .run import RunStopped

    print(f"== {run.task.name} {run.stage} lr {run.learning_rate:g} seed {run.seed}", flush=True)
    try:
        script.main(run.launch_argv())
    except RunStopped as stop:  # e.g. a non-finite loss: its message says what happened, no traceback needed
        print(f"== stopped: {stop}", file=sys.stderr, flush=True)
        return False
    except Exception:  # one failed run must not stop the others; its traceback is shown
        logger.exception("Run %s failed.", run.output_dir)
        return False
    finally:  # the next run starts with the GPU memory this one held given back (a full collection costs ~1 s)
        import torch

        if torch.cuda.is_available():
            import gc

            gc.collect()
            torch.cuda.empty_cache()
    return True


def _run_on_gpus(runs: Sequence[Run], gpus: Sequence[str]) -> list[tuple[Run, bool]]:
    free: queue.Queue = queue.Queue()
    for gpu in gpus:
        free.put(gpu)

    def launch(run: Run) -> tuple[Run, bool]:
        gpu = free.get()
        try:
            run.output_dir.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", str(TRAIN_SCRIPT),
                       *run.launch_argv()]
            print(f"== GPU {gpu}: {run.task.name} {run.stage} lr {run.learning_rate:g} seed {run.seed}", flush=True)
            with open(run.output_dir / "train.log", "a") as log:
                code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu})
            if code:
                print(f"== failed (exit {code}): {run.output_dir}; see {run.output_dir / 'train.log'}", flush=True)
            return run, code == 0
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        return list(pool.map(launch, runs))


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(sorted({float(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.05,0.1, got {text!r}") from None
    if not values or not all(0 < v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected positive finite learning rates, got {text!r}")
    return values


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    refused = token_argument(argv)  # before any message could show the arguments passed on to the runs
    if refused:
        raise SystemExit(f"gated-vpt protocol: error: {refused}")
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="gated-vpt protocol",
        description="Run the paper's protocol (learning-rate grid on the tune split, final runs with several seeds, "
                    "the table with the paper's numbers). Flags after -- are passed to every training run.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--benchmark", choices=sorted(BENCHMARKS), help="the paper's VTAB-1k (19 tasks) or FGVC (5)")
    what.add_argument("--recipes", nargs="+", type=Path, help="recipe files, one task each (instead of --benchmark)")
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, default="mae", help="with --benchmark (default: mae)")
    parser.add_argument("--method", choices=METHODS, default="gated", help="with --benchmark (default: gated)")
    parser.add_argument("--tasks", type=lambda t: [v for v in t.split(",") if v], default=None,
                        help="with --benchmark: only these tasks, e.g. dtd,eurosat (the paper's means then are omitted)")
    parser.add_argument("--recipes_dir", type=Path, default=None, help="where the benchmark's recipes are (default: hub_configs/)")
    parser.add_argument("--data_root", type=Path, default=None,
                        help="a folder holding the benchmark's data folders (default: each recipe's data_dir)")
    parser.add_argument("--output_root", type=Path, default=None,
                        help="where every run and the table go (default: outputs/protocol/<backbone>-<method>-<benchmark>)")
    parser.add_argument("--learning_rates", type=_float_list, default=None,
                        help="the tune grid, comma-separated (default: the paper's 0.05,0.1,0.25,0.5,1,2.5,5)")
    parser.add_argument("--seeds", type=_int_list, default=None,
                        help=f"final-run seeds (default: 0,1,2,3,4; with --paper_rates {PAPER_SEED})")
    parser.add_argument("--tune_seed", type=int, default=0, help="seed of the tune runs (default: 0)")
    parser.add_argument("--skip_tune", action="store_true",
                        help="no grid: the final runs use each recipe's learning rate (the paper's Table 5 choice)")
    parser.add_argument("--paper_rates", action="store_true",
                        help=f"the released run.sh: no grid, each task once at its recipe's (Table 5) rate with seed "
                             f"{PAPER_SEED} (default output root: ...-paper-rates)")
    parser.add_argument("--report_epoch", choices=sorted(REPORTED), default="last",
                        help="the test top-1 in the table: the last epoch's (VPT's protocol) or the one at the epoch of the "
                             "best validation top-1 (also derived by the released code's log; FGVC only: VTAB-1k final "
                             "runs have no validation split) (default: last)")
    parser.add_argument("--gpus", type=lambda t: [v.strip() for v in t.split(",") if v.strip()], default=[],
                        help="GPU ids, e.g. 0,1,2,3: one run per GPU at a time, each an `accelerate launch` process "
                             "(default: the runs one after another in this process)")
    parser.add_argument("--print_jobs", action="store_true",
                        help="print the runs that can start now, one shell command per line, and exit (tune runs "
                             "first; a task's final runs once its tune runs have finished: print again then)")
    parser.add_argument("--report_only", action="store_true", help="write the table from the finished runs; run nothing")
    parser.add_argument("--keep_checkpoints", action="store_true", help="keep the checkpoints of finished runs")
    add_cost_args(parser)
    add_cluster_args(parser)
    args = parser.parse_args(argv)
    if args.paper_rates and args.learning_rates is not None:
        parser.error("--paper_rates trains at each recipe's rate and skips the grid: drop --learning_rates")
    args.learning_rates = args.learning_rates or DEFAULT_LEARNING_RATES
    args.seeds = args.seeds or ((PAPER_SEED,) if args.paper_rates else DEFAULT_SEEDS)
    args.skip_tune = args.skip_tune or args.paper_rates
    args.train_args = train_args
    return args


def build_protocol(args: argparse.Namespace) -> Protocol:
    suffix = "-paper-rates" if args.paper_rates else ""
    if args.benchmark:
        tasks = benchmark_tasks(args.benchmark, args.backbone, args.method, args.recipes_dir, args.data_root, args.tasks)
        groups, overall = paper_summary(args.benchmark, args.backbone, args.method)
        if args.tasks:
            groups, overall = {}, None
        title = f"{args.backbone} {args.method} on {args.benchmark}"
        root = args.output_root or Path("outputs/protocol") / f"{args.backbone}-{args.method}-{args.benchmark}{suffix}"
    else:
        tasks = recipe_tasks(args.recipes, args.data_root)
        groups, overall, title = {}, None, "recipes: " + ", ".join(t.name for t in tasks)
        root = args.output_root or Path(f"outputs/protocol/recipes{suffix}")
    if args.paper_rates:
        title += f" (the released run: each recipe's rate, seed {', '.join(map(str, args.seeds))})"
    return Protocol(title, tasks, root, args.learning_rates, args.seeds, args.tune_seed, not args.skip_tune,
                    tuple(args.train_args), groups, overall, args.report_epoch)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the protocol; returns the exit status (1 when a run failed or the input is wrong)."""
    args = parse_args(argv)
    try:
        protocol = build_protocol(args)
        cluster = ClusterSettings.from_args(args, f"gvpt-{protocol.output_root.name}") if args.cluster else None
        if cluster is not None:
            cluster.check()
        elif args.wait or args.retry_failed:
            raise ValueError("--wait and --retry_failed go with --cluster slurm or --cluster local.")
        if args.status:
            print(format_statuses(protocol))
            return 0
        if args.dry_run or (args.measure_speed and not args.print_jobs):
            return _print_costs(protocol, args, sys.stdout)
        if not args.report_only:
            check_runs(protocol, load_training_script())
        if args.print_jobs:
            return _print_jobs(protocol, args)
        if cluster is not None and not args.report_only:
            return run_on_cluster(protocol, cluster, TRAIN_SCRIPT, args)
    except (ValueError, OSError) as error:
        print(f"gated-vpt protocol: error: {error}", file=sys.stderr)
        return 1
    failed = []
    if not args.report_only:
        done, stopped, failed = execute(protocol, args.gpus, args.keep_checkpoints)
        print(f"== ran {len(done)} runs" + (f"; {len(stopped)} stopped (non-finite loss)" if stopped else "")
              + (f"; {len(failed)} failed: " + ", ".join(str(r.output_dir) for r in failed) if failed else ""))
    print(protocol.write_report())
    print(f"Table: {protocol.output_root / 'results.md'} (also results.csv, results.png)")
    return 1 if failed else 0


def _print_jobs(protocol: Protocol, args: argparse.Namespace) -> int:
    runs = protocol.pending_runs()
    for run in runs:
        print(run.command())
    waiting = [t.name for t in protocol.tasks if protocol.chosen_learning_rate(t)[0] is None]
    print(f"# {len(runs)} runs can start now" + (f"; {len(waiting)} tasks wait for their tune runs before their "
          "final runs (print the jobs again once those finished)" if waiting else ""), file=sys.stderr)
    return _print_costs(protocol, args, sys.stderr, prefix="# ")


def _print_costs(protocol: Protocol, args: argparse.Namespace, stream, prefix: str = "") -> int:
    script = load_training_script()
    speed, eval_speed, source = args.images_per_second, None, "--images_per_second"
    if speed is not None and not 0 < speed < float("inf"):
        raise ValueError(f"--images_per_second {speed}: expected a positive speed, e.g. 400.")
    if args.measure_speed:
        speed, eval_speed, device = measure_speed(protocol, script)
        source = f"--measure_speed on {device}"
    text = format_costs(protocol.title, stage_costs(protocol, script), speed, eval_speed, args.gpus_per_job, source)
    print("\n".join(prefix + line for line in text.splitlines()), file=stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
