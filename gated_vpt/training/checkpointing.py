"""Resumable training state, written without pickle: trainable weights (the adapter and head) with the buffers of
the modules that own them (e.g. a trainable BatchNorm's running statistics), optimizer and scheduler state, every
process's RNG states, the data position and the metrics history.

A checkpoint directory holds ``trainable.safetensors``, ``optimizer.safetensors`` + ``optimizer.json``,
``scheduler.json``, ``rng_<rank>.safetensors`` + ``rng_<rank>.json`` and ``state.json`` (position, history and
the run's configuration, which a resume must match).

Writes are atomic: the files go to a hidden staging folder next to the checkpoint (``.<name>.partial``), each one
flushed to disk, and the folder is renamed to its name only when complete; a crash or a full disk leaves at most a
staging folder, which is never resumed from. Reads are defensive: ``latest`` skips damaged checkpoints (an empty or
truncated file, non-finite values), naming each one and why, and an explicitly named damaged one is refused.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
CHECKPOINT_PREFIXES = ("epoch_", "step_")
TENSOR_FILES = ("trainable.safetensors", "optimizer.safetensors")
JSON_FILES = (STATE_FILE, "optimizer.json", "scheduler.json")


@dataclass
class TrainState:
    """Where a run is: ``epoch`` being trained, micro-batches of it already consumed, optimizer updates done, the
    running loss of the current epoch (the sum of per-sample losses and the number of samples) and the per-epoch
    history."""

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
    commit: bool = True,
) -> Path:
    """Write a checkpoint (every process calls this: each one stores its own RNG states). ``model`` is unwrapped.

    The files go to the staging folder of ``path``; with ``commit`` (one process) it is then renamed to ``path``.
    With several processes pass ``commit=False``: the main process calls ``clear_staging`` before and
    ``commit_checkpoint`` after all processes have written (``gated_vpt.training.loop`` does)."""
    path, staging = Path(path), staging_dir(path)
    if commit and is_main_process:
        clear_staging(path)
    staging.mkdir(parents=True, exist_ok=True)
    _save_rng(staging, process_index)
    if is_main_process:
        _write_bytes(
            staging / "trainable.safetensors",
            save({k: v.detach().contiguous().cpu() for k, v in _trainable_tensors(model).items()}),
        )
        tensors, rest = _split_tensors(optimizer.state_dict())
        _write_bytes(staging / "optimizer.safetensors", save(tensors))
        _write_json(staging / "optimizer.json", rest)
        _write_json(staging / "scheduler.json", scheduler.state_dict())
        _write_json(staging / STATE_FILE, {"state": asdict(state), "run_config": run_config})
    if commit and is_main_process:
        commit_checkpoint(path)
    return path


def staging_dir(path: Union[str, Path]) -> Path:
    """Where the files of the checkpoint ``path`` are written before it is complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def clear_staging(path: Union[str, Path]) -> None:
    """Remove what an interrupted write of the checkpoint ``path`` left behind."""
    shutil.rmtree(staging_dir(path), ignore_errors=True)


def commit_checkpoint(path: Union[str, Path]) -> Path:
    """Make the staged checkpoint ``path`` complete: rename its staging folder to ``path`` (replacing an older
    checkpoint of the same name) and flush the rename to disk."""
    path, staging = Path(path), staging_dir(path)
    _fsync(staging)
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old)
    else:
        os.replace(staging, path)
    _fsync(path.parent)
    return path


def checkpoint_problem(path: Union[str, Path]) -> Optional[str]:
    """Why the checkpoint ``path`` cannot be resumed from (a missing, empty or truncated file, non-finite
    values), or None when it is intact. Reads every file."""
    path = Path(path)
    rng_files = sorted(p.name for p in path.glob("rng_*.safetensors"))
    for name in (*JSON_FILES, *TENSOR_FILES, *rng_files, *(n.replace(".safetensors", ".json") for n in rng_files)):
        try:
            if name.endswith(".json"):
                value = _read_json(path / name)
                if name == STATE_FILE and not (isinstance(value, dict) and {"state", "run_config"} <= set(value)):
                    return f"{name} does not hold a training state"
                continue
            non_finite = [key for key, tensor in load_file(str(path / name)).items() if _non_finite(tensor)]
        except FileNotFoundError:
            return f"{name} is missing"
        except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
            return f"{name} is empty or truncated"
        except (SafetensorError, OSError) as error:
            return f"{name} is unreadable, probably truncated ({error})"
        if non_finite:
            return f"{name} holds NaN or infinite values ({', '.join(non_finite[:3])})"
    if not rng_files:
        return "rng_0.safetensors is missing"
    return None


def _non_finite(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())


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
    non_finite = [name for name, value in weights.items() if _non_finite(value)]
    if non_finite:
        raise ValueError(f"Checkpoint {path} holds NaN or infinite values ({', '.join(non_finite[:3])}); resume from another checkpoint.")
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
    """The checkpoints in ``output_dir`` whose state reads, oldest first (by optimizer updates, then position); the
    others are skipped with a warning naming each one and why."""
    found = []
    for candidate in sorted(Path(output_dir).glob("*")):
        if not candidate.name.startswith(CHECKPOINT_PREFIXES) or not candidate.is_dir():
            continue
        try:
            state = _read_json(candidate / STATE_FILE)["state"]
            found.append(((state["completed_steps"], state["epoch"], state["batches_in_epoch"]), candidate))
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError):
            logger.warning(f"Skipping damaged checkpoint {candidate}: {checkpoint_problem(candidate) or STATE_FILE + ' is unreadable'}.")
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: Union[str, Path]) -> Optional[Path]:
    """The intact checkpoint in ``output_dir`` furthest into training (by optimizer updates, then position), or
    None. Damaged checkpoints further on are skipped with a warning naming each one and why."""
    for candidate in reversed(checkpoints_by_progress(output_dir)):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        logger.warning(f"Skipping damaged checkpoint {candidate}: {problem}.")
    return None


def prune_checkpoints(output_dir: Union[str, Path], keep: int, protected: Optional[Path] = None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints in ``output_dir``, never ``protected`` (the checkpoint a run
    resumed from); returns the deleted ones."""
    old = checkpoints_by_progress(output_dir)[:-keep]
    deleted = [path for path in old if protected is None or path.resolve() != Path(protected).resolve()]
    for path in deleted:
        shutil.rmtree(path)
    return deleted


def remove_checkpoints(output_dir: Union[str, Path]) -> None:
    """Delete every checkpoint in ``output_dir`` (a finished run's, which nothing resumes from; another process may
    be deleting them too)."""
    for candidate in Path(output_dir).glob("*"):
        if candidate.name.startswith(CHECKPOINT_PREFIXES) and (candidate / STATE_FILE).is_file():
            shutil.rmtree(candidate, ignore_errors=True)


def follow_umask(directory: Union[str, Path]) -> None:
    """Give the files in ``directory`` the mode the umask gives new files (usually 0644): safetensors' ``save_file``
    (which peft's ``save_pretrained`` uses) writes 0600, unlike the JSON beside them."""
    umask = os.umask(0)
    os.umask(umask)
    for file in Path(directory).iterdir():
        if file.is_file():
            file.chmod(0o666 & ~umask)


def resolve_resume_path(resume_from_checkpoint: str, output_dir: Union[str, Path]) -> Path:
    """``"latest"`` (the latest intact checkpoint in ``output_dir``) or a checkpoint directory, refused when
    damaged."""
    if resume_from_checkpoint == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint in {output_dir} that is intact.")
        return path
    path = Path(resume_from_checkpoint)
    if not (path / STATE_FILE).exists():
        raise ValueError(f"--resume_from_checkpoint {path}: not a checkpoint directory (no {STATE_FILE}).")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(
            f"--resume_from_checkpoint {path}: the checkpoint is damaged ({problem}). Resume from another checkpoint "
            "(--resume_from_checkpoint latest skips damaged ones) or start a new run."
        )
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
    _write_bytes(path / f"rng_{process_index}.safetensors", save(tensors))
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
    _write_bytes(path, (json.dumps(value, indent=1) + "\n").encode())


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk (a checkpoint is renamed complete only after this)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(directory: Path) -> None:
    """Flush a directory's entries (new files, renames) to disk."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_json(path: Path):
    return json.loads(path.read_text())
