"""Timing and peak-memory measurement that means the same on CPU and CUDA.

Time: wall clock around one call, with the device synchronised before and after; or, on CPU, the process's CPU
time (``clock="cpu"``), which a machine shared with other work disturbs far less than the wall clock (with one
torch thread it counts only the work itself, not the time spent waiting for a core).

Peak memory of a call: the bytes live when it starts (``live_bytes``: parameters, buffers, gradients, optimizer
state, inputs) plus the most the call allocated beyond that at any moment. CUDA reads the allocator's counters
(``max_memory_allocated``). The CPU allocator keeps no counters, so on CPU the call runs once under
``torch.profiler`` with ``profile_memory=True`` and the curve of live bytes is rebuilt from its events: each
operator's own (self) net allocation at its start (a net release at its end), and each free recorded outside an
operator. This counts tensors allocated through torch, resolved per operator (a temporary created and freed
inside one operator counts only through its net effect); memory outside torch's allocator (Python objects, oneDNN
scratch space) is not included, so CPU numbers are tensor memory, not the process's resident set size.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_call(fn: Callable[[], object], device: torch.device, clock: str = "wall") -> float:
    """Seconds taken by ``fn()`` on ``clock`` (``CLOCKS``), device work included."""
    if clock == "cpu" and device.type != "cpu":
        raise ValueError(f"clock='cpu' measures CPU work only; use clock='wall' on {device.type}.")
    now = CLOCKS[clock]
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return now() - start


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def live_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by ``tensors``, each storage counted once."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        if tensor is None or not isinstance(tensor, torch.Tensor):
            continue
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def model_state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def transient_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """The most bytes ``fn()`` had allocated at once beyond what was live when it started."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = []
    for event in prof.events():
        if event.device_type.name != "CPU":
            continue
        if event.name == "[memory]":
            changes.append((event.time_range.start, event.cpu_memory_usage))
        elif event.self_cpu_memory_usage > 0:
            changes.append((event.time_range.start, event.self_cpu_memory_usage))
        elif event.self_cpu_memory_usage < 0:
            # An operator's net frees (e.g. saved tensors released by a backward node) happen as it finishes.
            changes.append((event.time_range.end, event.self_cpu_memory_usage))
    level = peak = 0
    for _, amount in sorted(changes, key=lambda change: change[0]):
        level += amount
        peak = max(peak, level)
    return peak
