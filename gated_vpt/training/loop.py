"""The training loop shared by the task scripts: epochs of accumulated updates under Accelerate, the learning-rate
schedule per epoch or per update, checkpoints (every epoch, optionally every N updates), resuming mid-epoch, a
progress bar on the main process, tracker logging, an evaluation callback after every epoch, and a checkpoint
then ``RunInterrupted`` when one of ``--stop_signals`` arrives (a scheduler's notice before its time limit).

The model must return ``outputs.loss`` when called as ``model(**batch)``.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpointing import (
    TrainState,
    clear_staging,
    commit_checkpoint,
    latest_checkpoint,
    prune_checkpoints,
    resolve_resume_path,
    save_checkpoint,
)
from .results import write_stopped
from .run import RunInterrupted, RunStopped

logger = logging.getLogger(__name__)


@dataclass
class LoopSettings:
    """What the loop needs besides the prepared objects."""

    num_train_epochs: int
    output_dir: Path
    run_config: dict
    scheduler_step: str = "epoch"
    checkpointing_steps: Union[str, int, None] = "epoch"
    save_total_limit: Optional[int] = None
    resumed_from: Optional[Path] = None
    max_train_steps: Optional[int] = None
    with_tracking: bool = False
    stop_signals: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace, run_config: dict) -> "LoopSettings":
        """The settings named by the arguments of ``gated_vpt.training.args``."""
        return cls(
            num_train_epochs=args.num_train_epochs,
            output_dir=Path(args.output_dir),
            run_config=run_config,
            scheduler_step=args.scheduler_step,
            checkpointing_steps=args.checkpointing_steps,
            save_total_limit=args.save_total_limit,
            resumed_from=resolve_resume_path(args.resume_from_checkpoint, args.output_dir) if args.resume_from_checkpoint else None,
            max_train_steps=args.max_train_steps,
            with_tracking=args.with_tracking,
            stop_signals=tuple(getattr(args, "stop_signals", ())),
        )


def updates_per_epoch(num_batches: int, gradient_accumulation_steps: int) -> int:
    """Optimizer updates per epoch (Accelerate also steps on the last, shorter accumulation of an epoch)."""
    return math.ceil(num_batches / gradient_accumulation_steps)


class StopRequest:
    """While entered, any of ``signals`` (names such as ``"USR2"``) only records that a stop was asked for; the loop
    asks ``agreed`` at every optimizer update (all processes decide together) and stops there. Without signals
    (or off the main thread) it installs nothing and never asks the other processes.

    Example:

    ```py
    with StopRequest(("USR2",)) as stop:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested
    ```
    """

    def __init__(self, signals: Sequence[str] = ()):
        self.signals = [getattr(signal, f"SIG{name}") for name in signals]
        self.active = bool(self.signals) and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if self.active:
            self._previous = {number: signal.signal(number, self._record) for number in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _record(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any process was asked to stop (one small gather per call with several processes)."""
        if not self.active:
            return False
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=accelerator.device)
        return bool(accelerator.gather(flag).sum().item())


def train(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_loader: DataLoader,
    epoch_aware: Iterable,
    settings: LoopSettings,
    state: TrainState,
    evaluate: Optional[Callable[[], dict]] = None,
) -> Optional[TrainState]:
    """Train from ``state`` to the last epoch; return the final state, or None when ``max_train_steps`` stopped
    the run early. ``epoch_aware`` are further objects with ``set_epoch`` (e.g. a data set whose augmentation depends
    on the epoch). One of ``settings.stop_signals`` saves a checkpoint after the current update and raises
    ``RunInterrupted``."""
    with StopRequest(settings.stop_signals) as stop:
        epoch_aware = list(epoch_aware)
        total_batches = settings.num_train_epochs * len(train_loader)
        done = state.epoch * len(train_loader) + state.batches_in_epoch
        bar = tqdm(total=total_batches, initial=done, disable=not accelerator.is_local_main_process, desc="training")
        for epoch in range(state.epoch, settings.num_train_epochs):
            model.train()
            loader = train_loader
            if state.batches_in_epoch:
                loader = accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
            # Accelerate's loaders re-seed their sampler from their own iteration count when they start, and a loader
            # made to skip batches starts that count at 0: set the epoch explicitly, after the loader is chosen.
            for item in (loader, *epoch_aware):
                item.set_epoch(epoch)
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    # Every process's loss sum and sample count: the epoch's loss is a per-sample mean, so the last,
                    # shorter batch counts for what it holds.
                    size = float(len(batch["pixel_values"]))
                    local = torch.stack((loss.detach().float() * size, torch.tensor(size, device=loss.device)))
                    loss_sum, count = accelerator.gather(local).view(-1, 2).sum(0).tolist()
                    if not math.isfinite(loss_sum):
                        bar.close()
                        message = _non_finite_message(loss_sum, epoch, state, len(train_loader), settings.output_dir)
                        if accelerator.is_main_process:
                            write_stopped(settings.output_dir, message)
                        raise RunStopped(message)
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
                state.batches_in_epoch += 1
                state.epoch_loss_sum += loss_sum
                state.epoch_loss_count += int(count)
                bar.update(1)
                if not accelerator.sync_gradients:
                    continue
                state.completed_steps += 1
                if settings.scheduler_step == "step":
                    scheduler.step()
                if settings.with_tracking:
                    logged = {"train/loss": loss.item(), **_learning_rates(optimizer)}
                    accelerator.log(logged, step=state.completed_steps)
                last_batch = state.batches_in_epoch == len(train_loader)
                steps = settings.checkpointing_steps
                due = isinstance(steps, int) and state.completed_steps % steps == 0
                stopping = not last_batch and stop.agreed(accelerator)  # an epoch's last update: after its checkpoint
                if (due or stopping) and not last_batch:
                    name = f"step_{state.completed_steps}"
                    _checkpoint(accelerator, model, optimizer, scheduler, state, settings, name)
                if stopping:
                    bar.close()
                    raise RunInterrupted(_interrupted_message(settings.output_dir, state))
                if settings.max_train_steps is not None and state.completed_steps >= settings.max_train_steps:
                    bar.close()
                    accelerator.print(f"Stopped after {state.completed_steps} updates (--max_train_steps).")
                    return None
            record = {
                "epoch": epoch,
                "train_loss": state.epoch_loss_sum / max(1, state.epoch_loss_count),
                **_learning_rates(optimizer),
            }
            if settings.scheduler_step == "epoch":
                scheduler.step()
            if evaluate is not None:
                record.update(evaluate())
            state.history.append(record)
            state.epoch, state.batches_in_epoch = epoch + 1, 0
            state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "epoch"})
            if settings.with_tracking:
                accelerator.log({f"epoch/{k}": v for k, v in record.items()}, step=state.completed_steps)
            stopping = stop.agreed(accelerator)
            if settings.checkpointing_steps is not None or stopping:
                _checkpoint(accelerator, model, optimizer, scheduler, state, settings, f"epoch_{epoch}")
            if stopping:
                bar.close()
                raise RunInterrupted(_interrupted_message(settings.output_dir, state))
        bar.close()
        return state


def _interrupted_message(output_dir: Path, state: TrainState) -> str:
    return (
        f"Stopped on a signal after optimizer update {state.completed_steps} (epoch {state.epoch}, batch "
        f"{state.batches_in_epoch}), with a checkpoint in {output_dir}: the same command with "
        "--resume_from_checkpoint latest continues it."
    )


def _non_finite_message(value: float, epoch: int, state: TrainState, batches: int, output_dir: Path) -> str:
    checkpoint = latest_checkpoint(output_dir) if output_dir.is_dir() else None
    kept = (
        f"The last checkpoint, {checkpoint}, is kept (written before the loss went bad)." if checkpoint
        else "No checkpoint had been written yet."
    )
    return (
        f"The training loss is {value} at epoch {epoch}, batch {state.batches_in_epoch + 1} of {batches} (optimizer "
        f"update {state.completed_steps + 1}); training stopped before that update and wrote no results. {kept} "
        "Lower --learning_rate (or --gate_learning_rate), or check the data for broken images."
    )


def _learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate each parameter group trained with (``lr`` or ``lr/<group name>``)."""
    groups = optimizer.param_groups
    if len(groups) == 1:
        return {"lr": groups[0]["lr"]}
    return {f"lr/{group.get('name', i)}": group["lr"] for i, group in enumerate(groups)}


def _checkpoint(accelerator, model, optimizer, scheduler, state: TrainState, settings: LoopSettings, name: str) -> None:
    """Every process writes into the staging folder; the main process renames it complete once all have."""
    path = settings.output_dir / name
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        clear_staging(path)
    accelerator.wait_for_everyone()
    save_checkpoint(
        path,
        accelerator.unwrap_model(model),
        optimizer,
        scheduler,
        state,
        settings.run_config,
        process_index=accelerator.process_index,
        is_main_process=accelerator.is_main_process,
        commit=False,
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        commit_checkpoint(path)
        if settings.save_total_limit is not None:
            prune_checkpoints(settings.output_dir, settings.save_total_limit, settings.resumed_from)
    accelerator.wait_for_everyone()
