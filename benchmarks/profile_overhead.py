"""Where a configuration spends time that the hand-written ideal does not: a torch.profiler diff per operator.

Both models run ``--steps`` training steps (or inference batches) under the profiler after one warm-up; operators
are listed by how much more self time (CPU, plus device time on CUDA) they take in the configuration than in the
ideal, per step. ``--plain`` runs a gated_vpt configuration with its fast path off.

    python -m benchmarks.profile_overhead --size vit-s16 --batch 8 --kind train --attention sdpa
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Optional

import torch
from torch.profiler import ProfilerActivity, profile

from .cli import common_parser, main
from .measure import pick_device, synchronize
from .report import environment, table
from .setups import CONFIGS, GATED, PLAIN, build
from .steps import Runner, random_batch


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = common_parser(__doc__, size="vit-s16", batch=8)
    parser.add_argument("--config", choices=CONFIGS, default="gated_temp")
    parser.add_argument("--kind", choices=("train", "inference"), default="train")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attention", choices=("eager", "sdpa"), default="sdpa")
    parser.add_argument("--plain", action="store_true", help="Run the gated_vpt configuration with its fast path off.")
    parser.add_argument("--top", type=int, default=15, help="Operators listed.")
    args = parser.parse_args(argv)
    if args.plain and args.config not in GATED:
        parser.error(f"--plain applies to the gated_vpt configurations only: {', '.join(GATED)}.")
    if args.quick:
        args.size, args.batch, args.steps = "tiny", 4, 1
    return args


def profile_runner(runner: Runner, kind: str, steps: int, device: torch.device) -> dict[str, tuple[int, float]]:
    """Operator name -> (calls, self microseconds) per step."""
    fn = runner.train_step if kind == "train" else runner.inference
    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    totals: dict[str, tuple[int, float]] = {}
    for event in prof.key_averages():
        self_time = event.self_cpu_time_total + getattr(event, "self_device_time_total", 0.0)
        totals[event.key] = (event.count / steps, self_time / steps)
    return totals


def run(args: argparse.Namespace) -> str:
    device = pick_device(args.device)
    pixel_values, labels = random_batch(args.size, args.batch, device)
    results = {}
    for name in ("ideal", args.config):
        setup = build(name + (PLAIN if args.plain and name == args.config else ""), args.size, args.prompts, device)
        runner = Runner(setup, pixel_values, labels)
        runner.prepare(args.attention, training=args.kind == "train")
        results[name] = profile_runner(runner, args.kind, args.steps, device)
    ideal, config = results["ideal"], results[args.config]
    diffs = defaultdict(float)
    for key in set(ideal) | set(config):
        diffs[key] = config.get(key, (0, 0.0))[1] - ideal.get(key, (0, 0.0))[1]
    top = sorted(diffs, key=lambda key: -abs(diffs[key]))[: args.top]
    rows = [[key, f"{config.get(key, (0, 0))[0]:.0f}", f"{ideal.get(key, (0, 0))[0]:.0f}",
             f"{config.get(key, (0, 0.0))[1] / 1e3:.2f}", f"{ideal.get(key, (0, 0.0))[1] / 1e3:.2f}",
             f"{diffs[key] / 1e3:+.2f}"] for key in top]
    total_config = sum(value[1] for value in config.values()) / 1e3
    total_ideal = sum(value[1] for value in ideal.values()) / 1e3
    rows.append(["(all operators)", "", "", f"{total_config:.2f}", f"{total_ideal:.2f}", f"{total_config - total_ideal:+.2f}"])
    sections = [
        f"## Profiler diff: {args.config} vs ideal, {args.kind}, {args.size}, batch {args.batch}, {args.attention} "
        f"attention, device {device.type}, {'plain' if args.plain else 'fast'} path",
        environment(device),
        f"- self time per {args.kind} step, averaged over {args.steps} profiled steps; sorted by |difference|",
        "",
        table(["operator", f"calls {args.config}", "calls ideal", f"ms {args.config}", "ms ideal", "ms difference"], rows),
    ]
    return "\n".join(sections) + "\n"


if __name__ == "__main__":
    main(parse_args, run)
