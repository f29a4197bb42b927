"""Peak memory of one training step with and without gradient (activation) checkpointing.

Each case builds a fresh model, creates the optimizer state a first step would create (SGD momentum buffers), and
runs one training step, timed and measured for peak memory (see benchmarks/measure.py for what peak memory means
on CPU and CUDA; on CPU the step runs under the memory profiler, which adds little to a step of this size). Checkpointing is
switched on with the backbone's own ``activation_checkpointing_enable()`` (``gradient_checkpointing_enable()`` on
older transformers), as a training script would.

    python -m benchmarks.bench_memory --size vit-b16 --batch 32
    python -m benchmarks.bench_memory --quick
"""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Optional

import torch

from .cli import common_parser, main
from .measure import pick_device, time_call
from .report import environment, mib, ratio, table
from .setups import CONFIGS, GATED, PLAIN, build
from .steps import Runner, random_batch

# configuration:checkpointing[:plain]
DEFAULT_CASES = [
    "full_ft:off",
    "full_ft:on",
    "ideal:off",
    "gated_temp:off",
    "gated_temp:off:plain",
    "gated_temp:on",
    "gated_temp:on:plain",
]


def enable_checkpointing(backbone: torch.nn.Module) -> None:
    enable = getattr(backbone, "activation_checkpointing_enable", None) or backbone.gradient_checkpointing_enable
    enable()


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = common_parser(__doc__, size="vit-b16", batch=32)
    parser.add_argument("--attention", choices=("eager", "sdpa"), default="sdpa")
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, metavar="CONFIG:on|off[:plain]",
                        help="Cases to measure: configuration, checkpointing on or off, and ':plain' for a gated_vpt "
                        "configuration with its fast path off. full_ft:off is the reference.")
    args = parser.parse_args(argv)
    for case in args.cases:
        config, checkpointing, *plain = case.split(":")
        if config not in CONFIGS or checkpointing not in ("on", "off") or plain not in ([], ["plain"]) or (
                plain and config not in GATED):
            parser.error(f"invalid case {case!r}: use CONFIG:on|off[:plain] with CONFIG in {', '.join(CONFIGS)} (':plain' "
                         f"only for {', '.join(GATED)}).")
    if "full_ft:off" not in args.cases:
        parser.error("--cases must include full_ft:off: peaks are compared against it.")
    if args.quick:
        args.size, args.batch = "tiny", 4
    return args


def measure_case(args, device, name: str, checkpointing: bool, plain: bool) -> tuple[float, int]:
    setup = build(name + (PLAIN if plain else ""), args.size, args.prompts, device)
    if checkpointing:
        enable_checkpointing(setup.backbone)
    pixel_values, labels = random_batch(args.size, args.batch, device)
    runner = Runner(setup, pixel_values, labels)
    runner.prepare(args.attention, training=True)
    runner.init_optimizer_state()
    peak = 0

    def step() -> None:
        nonlocal peak
        peak = runner.peak_bytes(runner.train_step, device)

    return time_call(step, device, args.clock), peak


def run(args: argparse.Namespace) -> str:
    device = pick_device(args.device)
    results = []
    for case in args.cases:
        name, switch, *plain = case.split(":")
        checkpointing = switch == "on"
        seconds, peak = measure_case(args, device, name, checkpointing, bool(plain))
        path = ("plain" if plain else "fast") if name in GATED else "-"
        results.append((name, checkpointing, path, seconds, peak))
        print(f"{name} checkpointing={checkpointing} path={path}: {seconds:.1f} s", file=sys.stderr, flush=True)
        gc.collect()
    full = next(peak for name, ckpt, _, _, peak in results if name == "full_ft" and not ckpt)
    rows = [[name, "on" if ckpt else "off", path, f"{seconds:.2f}", mib(peak), ratio(peak, full)]
            for name, ckpt, path, seconds, peak in results]
    sections = [
        f"## Peak training memory: {args.size}, batch {args.batch}, {args.prompts} prompts, {args.attention} attention, "
        f"device {device.type}",
        environment(device),
        f"- one step per case ({args.clock} clock, single run, not a median; CPU: under the memory profiler); peak = tensor bytes live "
        "at the start (weights, momentum buffers, inputs) plus the most allocated during the step",
        "",
        table(["config", "checkpointing", "path", "step s", "peak MiB", "peak x full FT"], rows),
    ]
    return "\n".join(sections) + "\n"


if __name__ == "__main__":
    main(parse_args, run)
