"""Where ``gated-vpt protocol --cluster slurm|local`` sends its runs: one submitit job per run (a Slurm job array per
submission, or submitit's local executor on this machine), each the training script in a process of its own; what
each run's state is (``--status``: done, running, queued, failed, not submitted); and the cluster settings, checked
before anything is submitted.

A job that the scheduler signals before its time limit (Slurm: USR2, 90 s ahead) or pre-empts asks its training
process to save a checkpoint (the script's ``--stop_signals``) and requeues itself through submitit's checkpointing
protocol (``checkpoint`` / ``__submitit_checkpoint__``); the requeued job continues from that checkpoint exactly as a run does
after a kill.

Each submitted run records its job in ``<run>/job.json``; submitit's files (sbatch scripts, its pickled jobs, the
jobs' logs) go to ``<output root>/submitit/``, the training output to ``<run>/train.log``. submitit is imported
only when a cluster is used (``pip install gated-vpt[cluster]``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

EXECUTORS = ("slurm", "local")
JOB_FILE = "job.json"
TRAIN_LOG = "train.log"
SUBMITIT_FOLDER = "submitit"
# Slurm signals a job 90 s before its time limit (submitit's signal_delay_s): the checkpoint has 60 s of that.
SIGNAL_DELAY_S = 90
STOP_WAIT_S = 60
MAX_TIMEOUT_REQUEUES = 10
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
# A queued run shows up in sacct a moment after sbatch returns; until then it is not yet "failed".
SACCT_GRACE_S = 120

QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD", "RESIZING"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED"}
_PARTITION = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")
_SBATCH_KEY = re.compile(r"[a-z][a-z0-9_-]*")
_MEMORY = re.compile(r"(\d+)\s*([KMGT]?)B?", re.IGNORECASE)
_ERROR_LINE = re.compile(r"error|exception|killed|cancelled|out of memory|oom|time limit", re.IGNORECASE)
# sbatch settings these flags own (--slurm_extra may not set them)
_OWN_SBATCH = {"partition", "account", "time", "gpus-per-node", "cpus-per-task", "mem", "array", "output", "error",
               "job-name", "signal", "nodes", "ntasks-per-node", "open-mode"}


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    """The ``--cluster`` flags of ``gated-vpt protocol``."""
    group = parser.add_argument_group("cluster (through submitit: pip install gated-vpt[cluster])")
    group.add_argument("--cluster", choices=EXECUTORS, default=None,
                       help="submit every run as a job: 'slurm' (job arrays) or 'local' (submitit's local executor, "
                            "at most --max_parallel_jobs at a time, one --gpus each when given); the command returns "
                            "after submitting (run it again, or --wait, for the final runs and the table)")
    group.add_argument("--slurm_partition", default=None, help="sbatch --partition (one name, or several comma-separated)")
    group.add_argument("--slurm_account", default=None, help="sbatch --account")
    group.add_argument("--slurm_time", type=int, default=60,
                       help="each job's time limit in minutes (default: 60); a run that needs longer saves a "
                            "checkpoint at the limit and requeues itself")
    group.add_argument("--gpus_per_job", type=int, default=1, help="GPUs of each job (default: 1; the runs use one)")
    group.add_argument("--cpus_per_job", type=int, default=None, help="CPUs of each job (sbatch --cpus-per-task)")
    group.add_argument("--mem_per_job", default=None, help="memory of each job, e.g. 32G or 500M (sbatch --mem)")
    group.add_argument("--max_parallel_jobs", type=int, default=None,
                       help="runs at a time: Slurm's array throttle (%%N; default: no limit) or the local executor's "
                            "processes (default: the --gpus given, else 1)")
    group.add_argument("--slurm_extra", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch setting, e.g. qos=high or constraint=a100 (repeat the flag for more)")
    group.add_argument("--status", action="store_true",
                       help="print one line per run (done, running, queued, failed with its log and last error "
                            "line, not submitted) and exit")
    group.add_argument("--wait", action="store_true",
                       help="stay until every run is settled, submitting the final runs once a task is tuned, then "
                            "write the table")
    group.add_argument("--retry_failed", action="store_true", help="submit failed runs again (they resume)")
    group.add_argument("--poll_seconds", type=float, default=None,
                       help="with --wait: seconds between looks at the runs (default: 60 on Slurm, 2 locally)")


@dataclass
class ClusterSettings:
    """Where and with what each job runs. ``check`` refuses bad settings with one message before anything is
    submitted.

    Example:

    ```py
    >>> ClusterSettings("slurm", partition="gpu", time_minutes=120, max_parallel_jobs=16).sbatch_parameters(40)["array_parallelism"]
    16
    ```
    """

    executor: str
    partition: Optional[str] = None
    account: Optional[str] = None
    time_minutes: int = 60
    gpus_per_job: int = 1
    cpus_per_job: Optional[int] = None
    memory: Optional[str] = None
    max_parallel_jobs: Optional[int] = None
    extra: Sequence[str] = ()
    gpus: Sequence[str] = ()
    job_name: str = "gated-vpt"
    keep_checkpoints: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, job_name: str = "gated-vpt") -> "ClusterSettings":
        return cls(args.cluster, args.slurm_partition, args.slurm_account, args.slurm_time, args.gpus_per_job,
                   args.cpus_per_job, args.mem_per_job, args.max_parallel_jobs, tuple(args.slurm_extra),
                   tuple(args.gpus), job_name, args.keep_checkpoints)

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad setting and its fix; also when submitit (or, for Slurm,
        ``sbatch``) is missing."""
        if self.executor not in EXECUTORS:
            raise ValueError(f"--cluster {self.executor!r}: use one of {list(EXECUTORS)}.")
        if self.partition is not None and not _PARTITION.fullmatch(self.partition):
            raise ValueError(f"--slurm_partition {self.partition!r}: expected a partition name such as gpu, or several "
                             "comma-separated (letters, digits, '_', '-', '.').")
        if self.time_minutes <= 0:
            raise ValueError(f"--slurm_time {self.time_minutes}: the time limit must be a positive number of minutes.")
        for flag, value, least in (("--gpus_per_job", self.gpus_per_job, 0), ("--cpus_per_job", self.cpus_per_job, 1),
                                   ("--max_parallel_jobs", self.max_parallel_jobs, 1)):
            if value is not None and value < least:
                raise ValueError(f"{flag} {value}: expected a whole number of at least {least}.")
        if self.memory is not None:
            self.slurm_memory()
        self.extra_parameters()
        if self.executor == "local" and not all(gpu.isdigit() for gpu in self.gpus):
            raise ValueError(f"--gpus {','.join(self.gpus)}: the local executor takes GPU indices such as 0,1.")
        if self.executor == "slurm" and self.gpus:
            raise ValueError("--gpus picks this machine's GPUs; with --cluster slurm use --gpus_per_job.")
        require_submitit()
        if self.executor == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
            raise ValueError("--cluster slurm: sbatch and srun are not on PATH; run this on a Slurm login node "
                             "(or use --cluster local).")

    def slurm_memory(self) -> str:
        """``--mem_per_job`` as sbatch writes it (``32G``, ``500M``; a bare number is gigabytes)."""
        match = _MEMORY.fullmatch(self.memory.strip())
        if not match or int(match.group(1)) <= 0:
            raise ValueError(f"--mem_per_job {self.memory!r}: expected a positive amount such as 32G or 500M.")
        return f"{match.group(1)}{(match.group(2) or 'G').upper()}"

    def extra_parameters(self) -> dict[str, Any]:
        """``--slurm_extra key=value`` settings as sbatch options (a bare ``key`` is a flag without value)."""
        parameters: dict[str, Any] = {}
        for item in self.extra:
            key, equals, value = item.partition("=")
            key = key.strip().replace("_", "-")
            if not _SBATCH_KEY.fullmatch(key) or (equals and not value.strip()):
                raise ValueError(f"--slurm_extra {item!r}: expected KEY=VALUE with an sbatch option name, e.g. qos=high.")
            if key in _OWN_SBATCH:
                raise ValueError(f"--slurm_extra {item!r}: {key} is set by its own flag (see gated-vpt protocol --help).")
            parameters[key] = value.strip() if equals else True
        return parameters

    def sbatch_parameters(self, num_jobs: int) -> dict[str, Any]:
        """submitit's ``SlurmExecutor.update_parameters`` for an array of ``num_jobs`` runs, one task on one node."""
        parameters = {
            "job_name": self.job_name, "time": self.time_minutes, "nodes": 1, "ntasks_per_node": 1,
            "gpus_per_node": self.gpus_per_job or None, "signal_delay_s": SIGNAL_DELAY_S,
            "array_parallelism": self.max_parallel_jobs or num_jobs,
            "partition": self.partition, "account": self.account, "cpus_per_task": self.cpus_per_job,
            "mem": self.slurm_memory() if self.memory else None,
            "additional_parameters": self.extra_parameters() or None,
        }
        return {key: value for key, value in parameters.items() if value is not None}


def require_submitit():
    """The submitit module, or ``ValueError`` saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise ValueError("--cluster needs submitit, which is not installed: pip install 'gated-vpt[cluster]'.") from None
    return submitit


def stop_signal() -> str:
    """The signal a scheduler's job gets before its time limit or a pre-emption (submitit's, USR2 by default)."""
    from submitit.core.job_environment import JobEnvironment

    return JobEnvironment.USR_SIG


class TrainingJob:
    """One protocol run as a submitit job: the training script in a process of its own (its output appended to the
    run's ``train.log``) with ``--stop_signals`` set to the scheduler's signal. When that signal reaches the job,
    submitit calls ``checkpoint``: the training process saves a checkpoint and exits, and submitit
    requeues a fresh copy of the job, which continues from that checkpoint.

    Example:

    ```py
    executor = submitit.LocalExecutor("outputs/p/submitit")
    job = executor.submit(TrainingJob(protocol.pending_runs()[0], TRAIN_SCRIPT))
    ```
    """

    def __init__(self, run, script: Path, keep_checkpoints: bool = False, stop_wait_s: float = STOP_WAIT_S):
        self.run, self.script, self.keep_checkpoints, self.stop_wait_s = run, Path(script), keep_checkpoints, stop_wait_s
        self._process: Optional[subprocess.Popen] = None

    def command(self) -> list[str]:
        """The training process's command (resuming from the run's latest checkpoint when it has one)."""
        return [sys.executable, str(self.script), *self.run.launch_argv(), "--stop_signals", stop_signal()]

    def __call__(self) -> str:
        if self.run.finished:  # e.g. finished in the moment the scheduler requeued it
            return str(self.run.metrics_path)
        log = Path(self.run.output_dir) / TRAIN_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as handle:
            process = self._process = subprocess.Popen(self.command(), stdout=handle, stderr=subprocess.STDOUT)
            # Waiting in another thread keeps this one free for the scheduler's signal, whose handler waits too.
            waiter = threading.Thread(target=process.wait, daemon=True)
            waiter.start()
            try:
                while waiter.is_alive():
                    waiter.join(1.0)
            finally:  # a job cancelled or requeued leaves no training process behind
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    waiter.join()
        if process.returncode == 0 and self.run.finished:
            if not self.keep_checkpoints:
                from .checkpointing import remove_checkpoints

                remove_checkpoints(self.run.output_dir)
            return str(self.run.metrics_path)
        raise RuntimeError(f"the training process exited with status {process.returncode}: {last_error_line(log)} "
                           f"(log: {log})")

    def checkpoint(self, *args, **kwargs):
        """Called by submitit when the scheduler's signal reaches the job: stop the training process at its next
        update with a checkpoint (killed after ``stop_wait_s``: it then resumes from its previous checkpoint) and
        return the job to requeue."""
        from submitit.helpers import DelayedSubmission

        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(getattr(signal, f"SIG{stop_signal()}"))
            try:
                process.wait(timeout=self.stop_wait_s)
            except subprocess.TimeoutExpired:  # resumed from its previous checkpoint instead
                process.kill()
                process.wait(timeout=10)
        return DelayedSubmission(TrainingJob(self.run, self.script, self.keep_checkpoints, self.stop_wait_s))

    # submitit's name for the method (it requeues only callables that also have ``checkpoint``)
    __submitit_checkpoint__ = checkpoint

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_process": None}


@dataclass(frozen=True)
class RunStatus:
    """A run's state: ``done``, ``stopped`` (a non-finite loss), ``running``, ``queued``, ``failed`` or ``not
    submitted``, with its job id and, for a failed run, the log and its last error line.

    Example:

    ```py
    for status in run_statuses(protocol.all_runs()):
        print(status.line())  # e.g. "queued        dtd tune lr 0.5 seed 0  job 4242_3"
    ```
    """

    run: Any
    state: str
    job_id: str = ""
    detail: str = ""

    def line(self) -> str:
        run = self.run
        name = f"{run.task.name} {run.stage} lr {run.learning_rate:g} seed {run.seed}"
        job = f"  job {self.job_id}" if self.job_id else ""
        return f"{self.state:<13} {name}{job}" + (f"  {self.detail}" if self.detail else "")


def read_job_record(run) -> Optional[dict]:
    """What ``submit`` recorded for ``run`` (``<run>/job.json``), or None."""
    path = Path(run.output_dir) / JOB_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_statuses(runs: Sequence) -> list[RunStatus]:
    """The state of every run: its files first (``metrics.json``, ``stopped.json``), then its job as the scheduler
    (``sacct``) or this machine's processes see it."""
    records = {id(run): read_job_record(run) for run in runs}
    slurm = [r["job_id"] for run in runs if not run.settled and (r := records[id(run)]) and r.get("executor") == "slurm"]
    states = slurm_states(slurm) if slurm else {}
    statuses = []
    for run in runs:
        record = records[id(run)]
        if record is None or run.settled:
            state = "done" if run.finished else "stopped" if run.stopped else "not submitted"
            statuses.append(RunStatus(run, state, record["job_id"] if record else ""))
            continue
        if record.get("executor") == "slurm":
            state = states.get(record["job_id"], "")
        else:
            state = "RUNNING" if local_job_alive(record) else "COMPLETED"
        statuses.append(classify(run, record, state))
    return statuses


def classify(run, record: dict, state: str, now: Optional[float] = None) -> RunStatus:
    """A submitted, unsettled run's status from its scheduler state (sacct's ``State``; '' when sacct does not
    know the job)."""
    job_id = record["job_id"]
    state = state.split()[0] if state else ""
    if state in RUNNING_STATES:
        return RunStatus(run, "running", job_id)
    if state in QUEUED_STATES or (not state and (now or time.time()) - record.get("submitted", 0) < SACCT_GRACE_S):
        return RunStatus(run, "queued", job_id)
    if run.finished:
        return RunStatus(run, "done", job_id)
    why = f"job {state.lower()}" if state and state != "COMPLETED" else ("unknown to sacct" if not state else "")
    log, line = failure_line(run, record)
    return RunStatus(run, "failed", job_id, f"{why + ': ' if why else ''}{log}: {line}")


def failure_line(run, record: dict) -> tuple[str, str]:
    """The log that says why a run failed and its last error line: the job's log (submitit's, with the scheduler's
    messages and the job's exception) when it has one, else the run's ``train.log``."""
    candidates = [Path(record["log"])] if record.get("log") else []
    candidates.append(Path(run.output_dir) / TRAIN_LOG)
    for path in candidates:
        if path.is_file() and _error_lines(path):
            return str(path), _error_lines(path)[-1]
    existing = [p for p in candidates if p.is_file()]
    if existing:
        return str(existing[-1]), last_error_line(existing[-1])
    return str(candidates[-1]), "(no log written)"


def last_error_line(path: Path) -> str:
    """The last line of a log that names an error, or its last line."""
    errors = _error_lines(path)
    if errors:
        return errors[-1]
    lines = [line.strip() for line in _read_lines(path) if line.strip()]
    return lines[-1] if lines else "(empty log)"


def _error_lines(path: Path) -> list[str]:
    return [line.strip() for line in _read_lines(path) if _ERROR_LINE.search(line) and " INFO " not in line]


def _read_lines(path: Path) -> list[str]:
    try:
        # a progress bar rewrites its line with carriage returns: keep the last state of each line
        return [line.rsplit("\r", 1)[-1] for line in Path(path).read_text(errors="replace").splitlines()]
    except OSError:
        return []


def slurm_states(job_ids: Sequence[str]) -> dict[str, str]:
    """sacct's ``State`` of each job id (``<array>_<index>``); ids sacct does not list are left out."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    command = ["sacct", "-o", "JobID,State", "--parsable2"]
    for array in sorted({job.split("_")[0] for job in job_ids}):
        command += ["-j", array]
    try:
        output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise ValueError(f"Cannot read the jobs' states with sacct ({error}); run this where Slurm's sacct works.") from None
    info = SlurmInfoWatcher().read_info(output)
    return {job: info[job].get("State", "") for job in job_ids if job in info}


def local_job_alive(record: dict) -> bool:
    """Whether a local executor's job (its controller process) still runs on this machine."""
    if record.get("host") != socket.gethostname():
        return False
    pid = int(record["job_id"])
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"submitit" in command


def submit(runs: Sequence, settings: ClusterSettings, folder: Path, script: Path, busy: Sequence[dict] = ()) -> list[str]:
    """Submit ``runs`` (Slurm: one job array; local: one process each, on the ``--gpus`` that the running local jobs
    ``busy`` leave free) and record each job in its run's ``job.json``. Returns the job ids; the local executor
    takes at most its free places, so fewer runs than given may be submitted."""
    submitit = require_submitit()
    folder = Path(folder).absolute()
    if settings.executor == "slurm":
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUT_REQUEUES)
        executor.update_parameters(**settings.sbatch_parameters(len(runs)))
        jobs = executor.submit_array([TrainingJob(run, script, settings.keep_checkpoints) for run in runs]) if runs else []
        placed = list(zip(runs, jobs, [None] * len(jobs)))
    else:
        placed = []
        for run, gpu in zip(runs, local_slots(settings, busy)):
            executor = submitit.LocalExecutor(folder=folder, max_num_timeout=MAX_TIMEOUT_REQUEUES)
            gpus = {"visible_gpus": (int(gpu),), "gpus_per_node": 1} if gpu is not None else {"gpus_per_node": settings.gpus_per_job}
            executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, signal_delay_s=SIGNAL_DELAY_S, **gpus)
            placed.append((run, executor.submit(TrainingJob(run, script, settings.keep_checkpoints)), gpu))
    for run, job, gpu in placed:
        Path(run.output_dir).mkdir(parents=True, exist_ok=True)
        record = {"executor": settings.executor, "job_id": job.job_id, "submitted": time.time(),
                  "host": socket.gethostname(), "log": str(job.paths.stderr), "gpu": gpu}
        (Path(run.output_dir) / JOB_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return [job.job_id for _, job, _ in placed]


def local_slots(settings: ClusterSettings, busy: Sequence[dict] = ()) -> list[Optional[str]]:
    """The local executor's free places: the ``--gpus`` no running job holds, or ``--max_parallel_jobs`` (default
    1) minus the running jobs, without a GPU of their own."""
    if settings.gpus:
        taken = {record.get("gpu") for record in busy}
        free = [gpu for gpu in settings.gpus if gpu not in taken]
        return free[: settings.max_parallel_jobs] if settings.max_parallel_jobs else free
    return [None] * max(0, (settings.max_parallel_jobs or 1) - len(busy))


@dataclass
class Submission:
    """What one pass of ``submit_pending`` did: the job ids and runs it submitted, the runs left for a free place
    (local executor), the failed runs it left alone and the queued or running ones.

    Example:

    ```py
    submission = submit_pending(protocol, ClusterSettings("local", max_parallel_jobs=2), TRAIN_SCRIPT)
    print(job_list(submission.job_ids), len(submission.waiting))
    ```
    """

    job_ids: list[str] = field(default_factory=list)
    submitted: list = field(default_factory=list)
    waiting: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    active: list = field(default_factory=list)


def submit_pending(protocol, settings: ClusterSettings, script: Path, retry_failed: bool = False) -> Submission:
    """Submit the runs that can start now and are neither settled, queued nor running (failed ones only with
    ``retry_failed``)."""
    statuses = run_statuses(protocol.pending_runs())
    active = [s for s in statuses if s.state in ("queued", "running")]
    failed = [s for s in statuses if s.state == "failed"]
    wanted = [s.run for s in statuses if s.state == "not submitted" or (s.state == "failed" and retry_failed)]
    busy = [read_job_record(s.run) or {} for s in active] if settings.executor == "local" else []
    room = len(local_slots(settings, busy)) if settings.executor == "local" else len(wanted)
    wanted, waiting = wanted[:room], wanted[room:]
    job_ids = submit(wanted, settings, Path(protocol.output_root) / SUBMITIT_FOLDER, script, busy) if wanted else []
    return Submission(job_ids, wanted, waiting, [] if retry_failed else failed, active)


def run_on_cluster(protocol, settings: ClusterSettings, script: Path, args: argparse.Namespace) -> int:
    """``gated-vpt protocol --cluster ...``: submit what can start and return (``--wait``: until every run is
    settled), then write the table once every run is. Returns the exit status."""
    poll = args.poll_seconds or (60.0 if settings.executor == "slurm" else 2.0)
    retry = args.retry_failed
    while True:
        submission = submit_pending(protocol, settings, script, retry)
        retry = False  # a run failing again is reported, not resubmitted in a loop
        if submission.job_ids:
            print(f"== submitted {len(submission.job_ids)} runs ({settings.executor}): jobs {job_list(submission.job_ids)}",
                  flush=True)
        if not args.wait or not (submission.job_ids or submission.active or submission.waiting):
            break
        time.sleep(poll)
    statuses = run_statuses(protocol.all_runs())
    counts = {state: sum(s.state == state for s in statuses) for state in ("done", "running", "queued", "failed", "not submitted")}
    untuned = [task.name for task in protocol.tasks if protocol.chosen_learning_rate(task)[0] is None]
    print("== " + ", ".join(f"{n} {state}" for state, n in counts.items() if n)
          + (f"; {len(untuned)} tasks' final runs follow their tune runs" if untuned else ""))
    if counts["failed"]:
        print(f"== {counts['failed']} failed runs were not resubmitted: see --status, then --retry_failed resubmits them")
    if any(counts[state] for state in ("running", "queued", "not submitted")) or untuned and not counts["failed"]:
        print("== run the same command again to submit what follows and write the table (or add --wait; --status "
              "shows each run; --report_only writes a partial table)")
        return 0
    if not settings.keep_checkpoints:  # the jobs delete them too, but may still be exiting
        from .checkpointing import remove_checkpoints

        for status in statuses:
            if status.state == "done":
                remove_checkpoints(status.run.output_dir)
    print(protocol.write_report())
    print(f"Table: {Path(protocol.output_root) / 'results.md'} (also results.csv, results.png)")
    return 1 if counts["failed"] else 0


def format_statuses(protocol) -> str:
    """``--status``: one line per run known now, then the counts and the tasks whose final runs are not known."""
    statuses = run_statuses(protocol.all_runs())
    lines = [status.line() for status in statuses]
    untuned = [task.name for task in protocol.tasks if protocol.chosen_learning_rate(task)[0] is None]
    if untuned:
        lines.append(f"{'not planned':<13} the final runs of {', '.join(untuned)} (once their tune runs are done)")
    counts = {}
    for status in statuses:
        counts[status.state] = counts.get(status.state, 0) + 1
    lines.append(f"{len(statuses)} runs: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(lines)


def job_list(job_ids: Sequence[str]) -> str:
    """Job ids compactly: a Slurm array as ``<id>_[0-39]``, local jobs (process ids) one by one."""
    arrays: dict[str, list[str]] = {}
    for job in job_ids:
        array, _, index = job.partition("_")
        arrays.setdefault(array, []).append(index)
    parts = []
    for array, indices in arrays.items():
        numbers = sorted(int(i) for i in indices if i)
        parts.append(f"{array}_[{numbers[0]}-{numbers[-1]}]" if len(numbers) > 1 else "_".join(filter(None, (array, *indices))))
    return ", ".join(parts)
