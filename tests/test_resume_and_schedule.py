"""What a resume must refuse, and the learning-rate schedule's length under gradient accumulation.

A checkpoint holds the scheduler's position, not its length: resuming with another epoch count, warm-up, batch
size, accumulation or process count would silently bend the cosine mid-run, so every setting that changes what the
run computes must match. The schedule stepped per update must end exactly at the last update, also when the last
accumulation of an epoch is shorter."""

from __future__ import annotations

import math

import pytest
import torch

from gated_vpt.training import args as cli
from gated_vpt.training.checkpointing import TrainState, checked_resume_path, save_checkpoint
from gated_vpt.training.loop import LoopSettings, train, updates_per_epoch
from gated_vpt.training.optim import build_scheduler

from conftest import load_example

script = load_example("train_image_classification")
BASE = ["--num_train_epochs", "4", "--warmup_epochs", "1", "--per_device_train_batch_size", "4",
        "--gradient_accumulation_steps", "2", "--learning_rate", "0.5"]


def _run_config(*extra: str, processes: int = 1) -> dict:
    return cli.run_config(script.parse_args([*BASE, *extra]), processes)


@pytest.fixture
def checkpoint(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = build_scheduler(optimizer, 4, 1, 3, "step")
    save_checkpoint(tmp_path / "step_3", model, optimizer, scheduler, TrainState(completed_steps=3), _run_config())
    return tmp_path


@pytest.mark.parametrize(
    "changed, key",
    [
        (["--num_train_epochs", "6"], "num_train_epochs"),
        (["--warmup_epochs", "2"], "warmup_epochs"),
        (["--gradient_accumulation_steps", "1"], "gradient_accumulation_steps"),
        (["--per_device_train_batch_size", "8"], "per_device_train_batch_size"),
        (["--scheduler_step", "step"], "scheduler_step"),
        (["--min_learning_rate", "0.01"], "min_learning_rate"),
        ([], "num_processes"),
    ],
)
def test_a_resume_that_would_change_the_schedule_is_refused_naming_the_setting(checkpoint, changed, key):
    config = _run_config(*changed, processes=2 if key == "num_processes" else 1)
    with pytest.raises(ValueError, match=rf"another configuration \({key}: checkpoint "):
        checked_resume_path("latest", checkpoint, config)


def test_settings_that_do_not_change_the_run_may_differ_on_resume(checkpoint):
    config = _run_config("--max_train_steps", "2", "--checkpointing_steps", "5", "--save_total_limit", "1",
                         "--per_device_eval_batch_size", "3", "--gradient_checkpointing")
    assert checked_resume_path("latest", checkpoint, config) == checkpoint / "step_3"


class _Recorder(torch.nn.Module):
    """loss = w * mean(x); records the learning rate each micro-batch trains with."""

    def __init__(self, optimizer_box: list):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.optimizer_box, self.rates = optimizer_box, []

    def forward(self, pixel_values, labels):
        from types import SimpleNamespace

        self.rates.append(self.optimizer_box[0].param_groups[0]["lr"])
        return SimpleNamespace(loss=self.w * pixel_values.mean())


@pytest.mark.parametrize("batches, accumulation", [(7, 2), (6, 3), (5, 1)])
def test_the_per_update_schedule_ends_at_the_last_update_with_accumulation(tmp_path, batches, accumulation):
    """ceil(batches / accumulation) updates per epoch (the last accumulation of an epoch may be shorter); the
    cosine over all of them reaches 0 exactly after the last one, and every micro-batch of one accumulation trains
    with its update's rate."""
    from accelerate import Accelerator

    epochs, base = 2, 0.4
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    box: list = []
    model = _Recorder(box)
    optimizer = torch.optim.SGD(model.parameters(), lr=base)
    data = [{"pixel_values": torch.tensor([float(i)]), "labels": torch.tensor(0)} for i in range(batches)]
    loader = torch.utils.data.DataLoader(data, batch_size=1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    box.append(optimizer)
    updates = updates_per_epoch(len(loader), accumulation)
    assert updates == math.ceil(batches / accumulation)
    scheduler = build_scheduler(optimizer, epochs, 0, updates, "step")
    settings = LoopSettings(num_train_epochs=epochs, output_dir=tmp_path, run_config={}, scheduler_step="step")
    state = train(accelerator, model, optimizer, scheduler, loader, [], settings, TrainState())
    total = epochs * updates
    assert state.completed_steps == total and scheduler.last_epoch == total
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    expected = [base * 0.5 * (1 + math.cos(math.pi * (epoch * updates + i // accumulation) / total))
                for epoch in range(epochs) for i in range(batches)]
    assert accelerator.unwrap_model(model).rates == pytest.approx(expected)
