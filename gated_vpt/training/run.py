"""A task script's run around the training loop: the Accelerator (logging, seed), preparing the model and
loaders, the state to start from (fresh or a checkpoint), and finishing (the final metrics to the trackers, the
results written by the main process). The arguments are those of ``gated_vpt.training.args``.

Example (the shape of ``examples/train_semantic_segmentation.py``):

```py
accelerator = start_accelerator(args)
resume_path = checked_resume_path(args.resume_from_checkpoint, args.output_dir, run_config)
model, optimizer, train_loader, eval_loaders = prepare(accelerator, model, optimizer, train_loader, eval_loaders)
state = initial_state(accelerator, resume_path, model, optimizer, scheduler)
state = train(accelerator, model, optimizer, scheduler, train_loader, ..., LoopSettings.from_args(args, run_config), state)
metrics = finish_run(accelerator, model, {"test_miou": ...}, state, args, task="semantic-segmentation")
```
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import PeftModel
from torch import nn
from torch.utils.data import DataLoader

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from .checkpointing import TrainState, load_checkpoint
from .results import write_results

# The lock file that marks a run's output folder as in use (``claim_output_dir``).
RUN_LOCK = ".run.lock"
_CLAIMED: dict[Path, object] = {}


class RunStopped(RuntimeError):
    """A run that cannot start or go on (a backbone not prepared, a non-finite loss...), for the reason its message
    gives. ``exit_on_stop`` prints the message without a traceback and exits with its ``exit_status`` (1)."""

    exit_status = 1


class RunInterrupted(RunStopped):
    """A run stopped on request (a signal named by ``--stop_signals``, e.g. a scheduler's notice before its time
    limit) right after saving a checkpoint: the same command with ``--resume_from_checkpoint latest`` continues it
    exactly. Its exit status is 3."""

    exit_status = 3


def exit_on_stop(main: Callable[[], object]) -> None:
    """Run a script's ``main``; a ``RunStopped``, or a ``ValueError`` (what bad input raises, e.g. an argument or a
    recipe), ends the process with its message on one line of stderr and its exit status (1; 3 for a
    ``RunInterrupted``)."""
    try:
        main()
    except (RunStopped, ValueError) as stop:
        print("error: " + " ".join(str(stop).split()), file=sys.stderr)
        sys.exit(getattr(stop, "exit_status", 1))


def require_prepared_backbone(args: argparse.Namespace) -> None:
    """Stop at once (``RunStopped``: no Hub lookups, no traceback) when the recipe given with ``--config`` expects a
    local backbone folder that has not been prepared, saying which checkpoint it is made from and the command
    that makes it. A ``--model_name_or_path`` given on the command line is left to transformers."""
    from gated_vpt.recipes import recipe_backbone

    backbone = recipe_backbone(args.config) if args.config else None
    if backbone is not None and args.model_name_or_path == backbone.folder and not backbone.prepared:
        raise RunStopped(backbone.missing_message())


def start_accelerator(args: argparse.Namespace) -> Accelerator:
    """The run's ``Accelerator`` (gradient accumulation, trackers when ``--with_tracking``, ``--torch_compile``),
    logging (quiet libraries on all but the main process) and the seed, after checking that ``--output_dir`` can be
    written (``check_output_dir``)."""
    check_output_dir(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        dynamo_backend="inductor" if args.torch_compile else None,
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if not accelerator.is_local_main_process:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    return accelerator


def check_output_dir(output_dir: Union[str, Path]) -> None:
    """Refuse an output directory that cannot be written (a file, a path below a file, a read-only folder, a
    symbolic link to nothing) at the start, not when the first checkpoint is due. Creates nothing."""
    path = Path(output_dir)
    existing = path
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            raise ValueError(
                f"--output_dir {path}: {existing} is a symbolic link to {os.readlink(existing)}, which does not exist. "
                "Create its target or choose another --output_dir."
            )
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--output_dir {path}: {existing} is a file, not a folder. Choose another --output_dir.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"--output_dir {path}: cannot write in {existing} ({error.strerror}). Choose another --output_dir.") from error


def claim_output_dir(accelerator: Accelerator, output_dir: Union[str, Path]) -> None:
    """Hold ``output_dir`` for this run until its process ends (creating it), so that a second run on it is refused
    instead of overwriting its checkpoints. The hold is an operating-system lock on ``RUN_LOCK`` in the folder: a run
    that dies releases it, and the next run takes the folder over (e.g. resuming it). Where the operating system
    has no such lock (Windows), nothing is held."""
    path = Path(output_dir).resolve()
    if not accelerator.is_main_process or fcntl is None or path in _CLAIMED:
        return
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / RUN_LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise ValueError(
            f"--output_dir {output_dir} is in use by another run ({holder or 'a running process'}); wait for it to "
            "end, or choose another --output_dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}\n")
    handle.flush()
    _CLAIMED[path] = handle  # open, and so locked, until the process exits


def prepare(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer,
    train_loader: DataLoader,
    eval_loaders: dict[str, DataLoader],
) -> tuple[nn.Module, object, DataLoader, dict[str, DataLoader]]:
    """``accelerator.prepare`` on the model, optimizer and loaders; the evaluation loaders stay keyed by split."""
    model, optimizer, train_loader, *prepared = accelerator.prepare(model, optimizer, train_loader, *eval_loaders.values())
    return model, optimizer, train_loader, dict(zip(eval_loaders, prepared))


def initial_state(
    accelerator: Accelerator, resume_path: Optional[Path], model: nn.Module, optimizer, scheduler
) -> TrainState:
    """A fresh ``TrainState``, or the one of the checkpoint at ``resume_path`` with the model, optimizer, scheduler
    and RNGs restored from it."""
    if resume_path is None:
        return TrainState()
    accelerator.print(f"Resuming from {resume_path}")
    return load_checkpoint(resume_path, accelerator.unwrap_model(model), optimizer, scheduler, accelerator.process_index)


def finish_run(
    accelerator: Accelerator,
    model: nn.Module,
    metrics: dict,
    state: TrainState,
    args: argparse.Namespace,
    *,
    task: str,
    title: str = "",
    save_adapter: Optional[Callable[[PeftModel, Path], object]] = None,
) -> dict:
    """Log the final ``metrics`` to the trackers and close them; the main process writes the results
    (``results.write_results``: adapter, card, metrics.json, PNGs, the push when ``--push_to_hub``). Returns
    ``metrics``."""
    if args.with_tracking:
        accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=state.completed_steps)
        accelerator.end_training()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_results(
            accelerator.unwrap_model(model), args.output_dir, metrics, state.history, task=task, title=title,
            dataset=_dataset_name(args), save_adapter=save_adapter,
            hub_model_id=args.hub_model_id if args.push_to_hub else None,
        )
    accelerator.wait_for_everyone()
    return metrics


def _dataset_name(args: argparse.Namespace) -> str:
    """The run's data as its card names it: a Hub id, a local folder's name, or the data built into the scripts."""
    if args.dataset_name:
        return args.dataset_name
    if getattr(args, "data_dir", None):
        return f"{Path(args.data_dir).name} (a local {args.data_layout or 'benchmark'} folder)"
    if args.train_dir:
        return f"{Path(args.train_dir).name} (a local image folder)"
    if getattr(args, "quick", False):
        return "synthetic shapes (gated_vpt.segmentation.synthetic)"
    return "scikit-learn digits (sklearn.datasets.load_digits, split 800/200/797)"
