"""``torch.compile`` against eager for one configuration (default: gated + temperature).

Two copies of the same model: one eager, one wrapped in ``torch.compile``. The first call in each mode (training
step, inference batch) compiles and is reported separately as compile time; then the eager and compiled copies are
timed alternately, median of ``--reps``.

    python -m benchmarks.bench_compile --size vit-s16 --batch 8
    python -m benchmarks.bench_compile --quick
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Optional

import torch

from .cli import common_parser, default_batch, main
from .measure import median, pick_device, time_call
from .report import environment, ratio, table
from .setups import CONFIGS, Setup, build
from .steps import Runner, random_batch


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = common_parser(__doc__, size="vit-s16", batch=None)
    parser.add_argument("--config", choices=CONFIGS, default="gated_temp")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--attention", choices=("eager", "sdpa"), default="sdpa")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.reps = "tiny", 4, 2
    return args


def run(args: argparse.Namespace) -> str:
    device = pick_device(args.device)
    batch = default_batch(args, device)
    pixel_values, labels = random_batch(args.size, batch, device)

    runners = {}
    for variant in ("eager", "compiled"):
        setup = build(args.config, args.size, args.prompts, device)
        setup.set_attention(args.attention)
        if variant == "compiled":
            setup = Setup(setup.name, torch.compile(setup.model), setup.backbone)
        runners[variant] = Runner(setup, pixel_values, labels)

    first: dict[tuple[str, str], float] = {}
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rep in range(1 + args.reps):
        for kind in ("train", "inference"):
            for variant, runner in runners.items():
                runner.prepare(args.attention, training=kind == "train")
                seconds = time_call(runner.train_step if kind == "train" else runner.inference, device, args.clock)
                if rep == 0:
                    first[variant, kind] = seconds
                else:
                    times[variant, kind].append(seconds)

    rows = []
    for kind in ("train", "inference"):
        eager = median(times["eager", kind])
        compiled = median(times["compiled", kind])
        rows.append([kind, f"{eager * 1e3:.1f}", f"{compiled * 1e3:.1f}", ratio(compiled, eager),
                     f"{first['compiled', kind]:.1f}"])
    sections = [
        f"## torch.compile: {args.config}, {args.size}, batch {batch}, {args.prompts} prompts, {args.attention} "
        f"attention, device {device.type}",
        environment(device),
        f"- {args.clock} clock, median of {args.reps} alternating repetitions after the first (compiling) call; the "
        "first call's time shrinks when inductor's on-disk cache already holds the kernels, and the cpu clock does "
        "not count inductor's compile worker processes",
        "",
        table(["step", "eager ms", "compiled ms", "compiled x eager", "first compiled call s"], rows),
    ]
    return "\n".join(sections) + "\n"


if __name__ == "__main__":
    main(parse_args, run)
