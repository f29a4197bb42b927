"""Markdown output of the benchmarks: the environment block (command, versions, machine) and tables."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys

import peft
import torch
import transformers

import gated_vpt


def cpu_model() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    for line in lscpu.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def environment(device: torch.device) -> str:
    """The block every result file starts with: how to reproduce the numbers and where they were taken."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    script = f"-m {spec.name}" if spec is not None else shlex.quote(sys.argv[0])
    command = " ".join(["python", script, *(shlex.quote(part) for part in sys.argv[1:])])
    if device.type == "cuda":
        accelerator = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        accelerator = "none (CPU run)"
    lines = [
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}, gated_vpt {gated_vpt.__version__}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}; "
        f"accelerator: {accelerator}",
    ]
    return "\n".join(lines)


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def parse_table(markdown: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """The headers and rows of the first table in ``markdown`` whose first column is ``first_header``."""
    lines = markdown.splitlines()
    for start, line in enumerate(lines):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_header:
            rows = []
            for row in lines[start + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([cell.strip() for cell in row.strip().strip("|").split("|")])
            return cells, rows
    raise ValueError(f"No table with first column {first_header!r} found.")


def mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f}"


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.3f}x"


def emit(markdown: str, out: str | None) -> None:
    """Print the report, and write it to ``out`` when given."""
    print(markdown)
    if out:
        with open(out, "w") as handle:
            handle.write(markdown)
