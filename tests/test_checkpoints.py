"""Checkpoints are written atomically and read defensively: a write killed half-way leaves no folder that looks
complete, ``--resume_from_checkpoint latest`` skips damaged checkpoints (saying which and why) and resumes from
the newest intact one, and an explicitly named damaged checkpoint is refused."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gated_vpt.training import checkpointing
from gated_vpt.training.checkpointing import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    resolve_resume_path,
    save_checkpoint,
)
from gated_vpt.training.optim import build_optimizer, build_scheduler


def _training(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = build_optimizer(model, "sgd", learning_rate=0.1)
    scheduler = build_scheduler(optimizer, 5, 1, 3, "step")
    return model, optimizer, scheduler


def _save(output: Path, name: str, steps: int) -> Path:
    model, optimizer, scheduler = _training(seed=steps)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    state = TrainState(epoch=steps // 4, batches_in_epoch=steps % 4, completed_steps=steps)
    return save_checkpoint(output / name, model, optimizer, scheduler, state, {"seed": 0})


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _poison(path: Path) -> None:
    tensors = load_file(path)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone().fill_(math.nan)
    save_file(tensors, path)


DAMAGE = {
    "empty state.json": (lambda p: (p / "state.json").write_text(""), "state.json is empty or truncated"),
    "truncated state.json": (lambda p: _truncate(p / "state.json"), "state.json is empty or truncated"),
    "empty trainable.safetensors": (lambda p: (p / "trainable.safetensors").write_bytes(b""), "trainable.safetensors is unreadable"),
    "truncated trainable.safetensors": (lambda p: _truncate(p / "trainable.safetensors"), "trainable.safetensors is unreadable"),
    "NaN weights": (lambda p: _poison(p / "trainable.safetensors"), "trainable.safetensors holds NaN or infinite values"),
    "NaN optimizer state": (lambda p: _poison(p / "optimizer.safetensors"), "optimizer.safetensors holds NaN"),
    "missing scheduler.json": (lambda p: (p / "scheduler.json").unlink(), "scheduler.json is missing"),
    "truncated RNG state": (lambda p: _truncate(p / "rng_0.json"), "rng_0.json is empty or truncated"),
    "state.json of another kind": (lambda p: (p / "state.json").write_text("[1]"), "state.json does not hold a training state"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_latest_skips_a_damaged_newest_checkpoint_and_says_why(tmp_path, caplog, damage):
    corrupt, reason = DAMAGE[damage]
    _save(tmp_path, "step_2", 2)
    intact = _save(tmp_path, "step_4", 4)
    newest = _save(tmp_path, "epoch_1", 8)
    assert latest_checkpoint(tmp_path) == newest
    corrupt(newest)
    with caplog.at_level(logging.WARNING):
        assert resolve_resume_path("latest", tmp_path) == intact
    assert f"Skipping damaged checkpoint {newest}: {reason}" in caplog.text
    with pytest.raises(ValueError, match=f"{newest}: the checkpoint is damaged \\({reason}"):
        resolve_resume_path(str(newest), tmp_path)
    model, optimizer, scheduler = _training()
    assert load_checkpoint(intact, model, optimizer, scheduler).completed_steps == 4


def test_when_every_checkpoint_is_damaged_latest_says_so(tmp_path, caplog):
    for name, steps in (("step_2", 2), ("step_4", 4)):
        (_save(tmp_path, name, steps) / "trainable.safetensors").write_bytes(b"")
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="no checkpoint in .* that is intact"):
        resolve_resume_path("latest", tmp_path)
    assert caplog.text.count("Skipping damaged checkpoint") == 2


def test_load_checkpoint_refuses_non_finite_weights(tmp_path):
    path = _save(tmp_path, "step_2", 2)
    _poison(path / "trainable.safetensors")
    model, optimizer, scheduler = _training()
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_checkpoint(path, model, optimizer, scheduler)


def test_a_write_that_fails_half_way_leaves_no_checkpoint_and_the_next_write_succeeds(tmp_path, monkeypatch):
    """A full disk (ENOSPC) after the first two files: no ``step_4`` folder, ``latest`` is still ``step_2``, and
    the staging folder left behind is cleared by the next write of that checkpoint."""
    previous = _save(tmp_path, "step_2", 2)
    real, written = checkpointing._write_bytes, []

    def fail_on_third(path, data):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(path)
        real(path, data)

    monkeypatch.setattr(checkpointing, "_write_bytes", fail_on_third)
    with pytest.raises(OSError, match="No space left"):
        _save(tmp_path, "step_4", 4)
    assert not (tmp_path / "step_4").exists() and (tmp_path / ".step_4.partial").is_dir()
    assert latest_checkpoint(tmp_path) == previous
    monkeypatch.setattr(checkpointing, "_write_bytes", real)
    assert latest_checkpoint(tmp_path) == previous
    _save(tmp_path, "step_4", 4)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_4"
    assert not (tmp_path / ".step_4.partial").exists()


# Dies by SIGKILL half-way through the third file it writes. A new interpreter (not a fork: forking after autograd
# ran is unsafe with the standard torch build's autograd threads).
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from gated_vpt.training import checkpointing
from test_checkpoints import _save

real, count = checkpointing._write_bytes, []

def write_then_die(path, data):
    count.append(path)
    if len(count) == 3:
        path.write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, data)

checkpointing._write_bytes = write_then_die
_save(Path(sys.argv[1]), sys.argv[2], 6)
"""


def test_a_process_killed_mid_write_leaves_the_previous_checkpoints_intact(tmp_path):
    """SIGKILL half-way through writing a file of a checkpoint, for a new checkpoint and for one that replaces an
    existing folder."""
    _save(tmp_path, "step_2", 2)
    _save(tmp_path, "step_4", 4)
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])}
    for name in ("step_6", "step_4"):
        child = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path), name], env=env,
                               capture_output=True, text=True, timeout=300)
        assert child.returncode == -signal.SIGKILL, child.stderr
        assert latest_checkpoint(tmp_path) == tmp_path / "step_4"
        assert json.loads((tmp_path / "step_4" / "state.json").read_text())["state"]["completed_steps"] == 4
    assert not (tmp_path / "step_6").exists()
