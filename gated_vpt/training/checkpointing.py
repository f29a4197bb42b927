"""Resumable training state, written without pickle: trainable weights (the adapter and head) with the buffers of
the modules that own them (e.g. a trainable BatchNorm's running statistics), optimizer and scheduler state, every
process's RNG states, the data position and the metrics history.

A checkpoint directory holds ``trainable.safetensors``, ``optimizer.safetensors`` + ``optimizer.json``,
``scheduler.json``, ``rng_<rank>.safetensors`` + ``rng_<rank>.json`` and ``state.json`` (position, history and
the run's configuration, which a resume must match).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

STATE_FILE = "state.json"
CHECKPOINT_PREFIXES = ("epoch_", "step_")


@dataclass
class TrainState:
    """Where a run is: ``epoch`` being trained, micro-batches of it already consumed, optimizer updates done, the
    running loss of the current epoch and the per-epoch history."""

    epoch: int = 0
    batches_in_epoch: int = 0
    completed_steps: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    history: list[dict] = field(default_factory=list)


def save_checkpoint(
    path: Union[str, Path],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    run_config: dict,
    process_index: int = 0,
    is_main_process: bool = True,
) -> Path:
    """Write a checkpoint (every process calls this: each one stores its own RNG states). ``model`` is unwrapped."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _save_rng(path, process_index)
    if is_main_process:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in _trainable_tensors(model).items()},
            str(path / "trainable.safetensors"),
        )
        tensors, rest = _split_tensors(optimizer.state_dict())
        save_file(tensors, str(path / "optimizer.safetensors"))
        _write_json(path / "optimizer.json", rest)
        _write_json(path / "scheduler.json", scheduler.state_dict())
        _write_json(path / STATE_FILE, {"state": asdict(state), "run_config": run_config})
    follow_umask(path)
    return path


def load_checkpoint(
    path: Union[str, Path],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    process_index: int = 0,
) -> TrainState:
    """Restore what ``save_checkpoint`` wrote into ``model`` (unwrapped), ``optimizer``, ``scheduler`` and the RNGs.
    Call ``check_run_config`` first: it reads nothing but ``state.json``."""
    path = Path(path)
    weights = load_file(str(path / "trainable.safetensors"))
    current = _trainable_tensors(model)
    if set(weights) != set(current):
        raise ValueError(
            f"Checkpoint {path} holds trainable weights and buffers {sorted(set(weights) ^ set(current))[:5]}... "
            "that do not match this model's; it was made for another model or configuration."
        )
    with torch.no_grad():
        for name, value in weights.items():
            current[name].copy_(value)
    tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer.load_state_dict(_join_tensors(tensors, _read_json(path / "optimizer.json")))
    scheduler.load_state_dict(_read_json(path / "scheduler.json"))
    _load_rng(path, process_index)
    return TrainState(**_read_json(path / STATE_FILE)["state"])


def check_run_config(path: Union[str, Path], run_config: dict) -> None:
    """Refuse to resume from a checkpoint made with another configuration (names the differing settings)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"{path} is not a checkpoint of this script (no {STATE_FILE}).")
    saved = _read_json(path / STATE_FILE)["run_config"]
    differences = [
        f"{key}: checkpoint {saved.get(key)!r}, now {run_config.get(key)!r}"
        for key in sorted(set(saved) | set(run_config))
        if saved.get(key) != run_config.get(key)
    ]
    if differences:
        raise ValueError(
            f"Cannot resume from {path}: it was made with another configuration ("
            + "; ".join(differences)
            + "). Resume with the same settings, or start a new run in another --output_dir."
        )


def checkpoints_by_progress(output_dir: Union[str, Path]) -> list[Path]:
    """The checkpoints in ``output_dir``, oldest first (by optimizer updates, then position)."""
    found = []
    for candidate in Path(output_dir).glob("*"):
        if candidate.name.startswith(CHECKPOINT_PREFIXES) and (candidate / STATE_FILE).is_file():
            state = _read_json(candidate / STATE_FILE)["state"]
            found.append(((state["completed_steps"], state["epoch"], state["batches_in_epoch"]), candidate))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: Union[str, Path]) -> Optional[Path]:
    """The checkpoint in ``output_dir`` furthest into training (by optimizer updates, then position), or None."""
    found = checkpoints_by_progress(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: Union[str, Path], keep: int, protected: Optional[Path] = None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints in ``output_dir``, never ``protected`` (the checkpoint a run
    resumed from); returns the deleted ones."""
    old = checkpoints_by_progress(output_dir)[:-keep]
    deleted = [path for path in old if protected is None or path.resolve() != Path(protected).resolve()]
    for path in deleted:
        shutil.rmtree(path)
    return deleted


def follow_umask(directory: Union[str, Path]) -> None:
    """Give the files in ``directory`` the mode the umask gives new files (usually 0644): safetensors writes its
    files with 0600, unlike the JSON beside them."""
    umask = os.umask(0)
    os.umask(umask)
    for file in Path(directory).iterdir():
        if file.is_file():
            file.chmod(0o666 & ~umask)


def resolve_resume_path(resume_from_checkpoint: str, output_dir: Union[str, Path]) -> Path:
    """``"latest"`` (the latest checkpoint in ``output_dir``) or a checkpoint directory."""
    if resume_from_checkpoint == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint in {output_dir}.")
        return path
    path = Path(resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"--resume_from_checkpoint {path}: not a checkpoint directory (no {STATE_FILE}).")
    return path


def _trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's trainable parameters and the persistent buffers of every module that owns one (a trainable
    BatchNorm's running statistics change in training as its weights do), by name."""
    tensors = {}
    for prefix, module in model.named_modules():
        owned = [(name, p) for name, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not owned:
            continue
        owned += [(name, b) for name, b in module.named_buffers(recurse=False) if name not in module._non_persistent_buffers_set]
        tensors.update({f"{prefix}.{name}" if prefix else name: tensor for name, tensor in owned})
    return tensors


def checked_resume_path(
    resume_from_checkpoint: Optional[str], output_dir: Union[str, Path], run_config: dict
) -> Optional[Path]:
    """The checkpoint ``--resume_from_checkpoint`` names (None when it is not given), after checking that it was
    made with ``run_config`` (``resolve_resume_path``, then ``check_run_config``)."""
    if not resume_from_checkpoint:
        return None
    path = resolve_resume_path(resume_from_checkpoint, output_dir)
    check_run_config(path, run_config)
    return path


def _split_tensors(value, prefix: str = "") -> tuple[dict[str, torch.Tensor], object]:
    """Replace every tensor in a nested dict/list by ``{"__tensor__": key}``; return the tensors and the rest."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(item, key: str):
        if isinstance(item, torch.Tensor):
            tensors[key] = item.detach().contiguous().cpu()
            return {"__tensor__": key}
        if isinstance(item, dict):
            return {"__keys__": [[_encode_key(k), walk(v, f"{key}.{k}")] for k, v in item.items()]}
        if isinstance(item, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(item)]
        return item

    return tensors, walk(value, prefix or "root")


def _join_tensors(tensors: dict[str, torch.Tensor], value):
    if isinstance(value, dict) and "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if isinstance(value, dict):
        return {_decode_key(k): _join_tensors(tensors, v) for k, v in value["__keys__"]}
    if isinstance(value, list):
        return [_join_tensors(tensors, v) for v in value]
    return value


def _encode_key(key) -> list:
    return ["int", key] if isinstance(key, int) else ["str", key]


def _decode_key(key: list):
    return int(key[1]) if key[0] == "int" else key[1]


def _save_rng(path: Path, process_index: int) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    save_file(tensors, str(path / f"rng_{process_index}.safetensors"))
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    _write_json(
        path / f"rng_{process_index}.json",
        {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), position, has_gauss, cached]},
    )


def _load_rng(path: Path, process_index: int) -> None:
    file = path / f"rng_{process_index}.safetensors"
    if not file.is_file():
        raise ValueError(f"Checkpoint {path} has no RNG state for process {process_index}; resume with the same number of processes.")
    tensors = load_file(str(file))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    saved = _read_json(path / f"rng_{process_index}.json")
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")


def _read_json(path: Path):
    return json.loads(path.read_text())
