"""The command-line options every benchmark shares, and running a benchmark from them."""

from __future__ import annotations

import argparse
from typing import Callable, Optional

import torch

from .report import emit
from .setups import SIZES


def common_parser(doc: str, size: str, batch: Optional[int]) -> argparse.ArgumentParser:
    """A parser with --size, --batch, --prompts, --device, --threads, --clock, --out and --quick."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=size)
    batch_help = f"Default: {batch}." if batch else "Default: 8 on CPU, 64 on CUDA."
    parser.add_argument("--batch", type=int, default=batch, help=batch_help)
    parser.add_argument("--prompts", type=int, default=10, help="Prompt tokens (per block for VPT-deep).")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... Default: cuda when available.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice). 1 is steadier on a shared machine.")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="'cpu': process CPU time instead of wall time (CPU only; steadiest with --threads 1 on a "
                        "shared machine).")
    parser.add_argument("--out", default=None, help="Also write the markdown report to this file.")
    parser.add_argument("--quick", action="store_true",
                        help="Tiny model, small batch, few repetitions: checks that everything runs (CI); the "
                        "numbers mean nothing.")
    return parser


def default_batch(args: argparse.Namespace, device: torch.device) -> int:
    return args.batch or (64 if device.type == "cuda" else 8)


def main(parse_args: Callable[[Optional[list[str]]], argparse.Namespace],
         run: Callable[[argparse.Namespace], str], argv: Optional[list[str]] = None) -> None:
    """Parse, apply --threads, run, print the markdown and write it to --out."""
    args = parse_args(argv)
    if args.batch is not None and args.batch < 1:
        raise SystemExit("--batch must be a positive integer.")
    if args.threads:
        torch.set_num_threads(args.threads)
    emit(run(args), args.out)
