"""Time and memory per training step and per inference batch for every fine-tuning configuration.

All configurations (see ``setups.CONFIGS``) and attention implementations run in one process, round-robin: each
repetition times every (configuration, attention) pair once, starting at a rotating position, so drift of the
machine hits all of them alike. Reported: median of ``--reps`` repetitions after ``--warmup`` discarded ones, and
ratios to the hand-written ideal and to full fine-tuning in the same attention mode.

A training step is ``zero_grad``, forward, cross-entropy, backward, ``SGD(momentum=0.9).step()``; an inference
batch is a forward under ``torch.inference_mode()`` in eval mode. The gated_vpt configurations also run with their
fast path off (rows ``CONFIG@plain``: every block through its own forward on the full prompted sequence). A gated
+ temperature model holding several adapters is also timed on a mixed batch (``adapter_names`` cycling over the
adapters) against a single-adapter batch of the same size.

    python -m benchmarks.bench_step --size vit-s16 --batch 8 --prompts 100 --threads 1 --clock cpu   # shared CPU
    python -m benchmarks.bench_step --size vit-b16 --batch 32 --prompts 100                          # GPU
    python -m benchmarks.bench_step --quick
    python -m benchmarks.bench_step --size vit-s16 --batch 8 --prompts 100 --threads 1 --clock cpu \
        --configs ideal full_ft gated_temp timm_ideal timm_gated_temp --mixed-adapters 0                 # timm
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from typing import Optional

import torch


from .cli import common_parser, default_batch, main
from .measure import median, pick_device, time_call
from .report import environment, mib, ratio, table
from .setups import CONFIGS, GATED, PLAIN, TIMM_CONFIGS, build, build_multi_adapter, ideal_for
from .steps import Runner, random_batch

ATTENTION = ("eager", "sdpa")
# (configuration, measure, goal): ratios to the ideal in the same attention mode, at most the goal. VPT-deep's goals
# are meant for 100 prompts per block.
TARGETS = [
    ("gated_temp", "train", 1.05),
    ("gated_temp", "inference", 0.98),
    ("gated_temp", "train peak", 1.02),
    ("vpt_deep", "train", 0.85),
    ("vpt_deep", "inference", 0.75),
    ("timm_gated_temp", "train", 1.05),
    ("timm_gated_temp", "inference", 0.98),
]
MIXED_TARGET = 0.9


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = common_parser(__doc__, size="vit-s16", batch=None)
    parser.add_argument("--reps", type=int, default=5, help="Timed repetitions per configuration (median reported).")
    parser.add_argument("--warmup", type=int, default=None, help="Discarded repetitions first. Default: 1 CPU, 3 CUDA.")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS + TIMM_CONFIGS, default=list(CONFIGS),
                        help="Configurations to run (default: all but the timm ones, which need timm: "
                        f"{', '.join(TIMM_CONFIGS)}, compared with timm_ideal).")
    parser.add_argument("--attention", nargs="+", choices=ATTENTION, default=list(ATTENTION))
    parser.add_argument("--mixed-adapters", type=int, default=4, help="Adapters in the mixed batch (0: skip it).")
    parser.add_argument("--no-memory", action="store_true", help="Skip the peak-memory pass.")
    parser.add_argument("--plain", nargs="*", choices=GATED, default=None,
                        help="gated_vpt configurations to also run with the fast path off (rows CONFIG@plain). "
                        "Default: every gated_vpt configuration in --configs; give the option alone for none.")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.reps, args.warmup, args.batch = "tiny", 2, 1, args.batch or 4
        args.mixed_adapters = min(args.mixed_adapters, 3)
    for required in ("ideal", "full_ft", *(["timm_ideal"] if set(TIMM_CONFIGS) & set(args.configs) else [])):
        if required not in args.configs:
            parser.error(f"--configs must include {required!r}: the ratios are taken against it.")
    plain = [c for c in args.configs if c in GATED] if args.plain is None else args.plain
    args.rows = [row for config in args.configs for row in [config] + ([config + PLAIN] if config in plain else [])]
    if args.reps < 1:
        parser.error("--reps must be positive.")
    return args


def run(args: argparse.Namespace) -> str:
    device = pick_device(args.device)
    batch = default_batch(args, device)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    pixel_values, labels = random_batch(args.size, batch, device)

    runners = {}
    for row in args.rows:
        runners[row] = Runner(build(row, args.size, args.prompts, device), pixel_values, labels)
    multi = None
    if args.mixed_adapters > 1:
        multi = Runner(build_multi_adapter(args.size, args.prompts, args.mixed_adapters, device), pixel_values, labels)
        mixed_names = [f"a{i % args.mixed_adapters}" for i in range(batch)]

    cases = [(name, attention) for name in args.rows for attention in args.attention]
    times: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for rep in range(warmup + args.reps):
        shift = rep % len(cases)
        order = cases[shift:] + cases[:shift]
        measured = rep >= warmup
        print(f"repetition {rep + 1}/{warmup + args.reps}{'' if measured else ' (warm-up)'}", file=sys.stderr, flush=True)
        for kind in ("train", "inference"):
            for name, attention in order:
                runner = runners[name]
                runner.prepare(attention, training=kind == "train")
                seconds = time_call(runner.train_step if kind == "train" else runner.inference, device, args.clock)
                if measured:
                    times[name, attention, kind].append(seconds)
        if multi is not None:
            for attention in args.attention:
                multi.prepare(attention, training=False)
                for kind, names in (("single", None), ("mixed", mixed_names)):
                    seconds = time_call(lambda: multi.inference(names), device, args.clock)
                    if measured:
                        times["multi_adapter", attention, kind].append(seconds)

    memory: dict[tuple[str, str, str], int] = {}
    if not args.no_memory:
        for name, attention in cases:
            runner = runners[name]
            for kind in ("train", "inference"):
                runner.prepare(attention, training=kind == "train")
                memory[name, attention, kind] = runner.peak_bytes(
                    runner.train_step if kind == "train" else runner.inference, device
                )

    return report(args, device, batch, warmup, runners, times, memory)


def report(args: argparse.Namespace, device: torch.device, batch: int, warmup: int, runners: dict[str, Runner],
           times: dict[tuple[str, str, str], list[float]], memory: dict[tuple[str, str, str], int]) -> str:
    med = {key: median(values) for key, values in times.items()}

    def paired(key: tuple[str, str, str], reference: tuple[str, str, str]) -> float:
        """Median over repetitions of the ratio within each repetition (both taken in the same round)."""
        return median(value / base for value, base in zip(times[key], times[reference]))

    spread = {key: (max(values) - min(values)) / median(values) for key, values in times.items()}
    headers = ["config", "attention", "train ms", "train x ideal", "train x full FT", "train spread",
               "infer ms", "infer x ideal", "infer x full FT", "infer spread",
               "train peak MiB", "train peak x ideal", "infer peak MiB", "infer peak x ideal", "trainable params",
               "adapter bytes"]
    rows = []
    for name in args.rows:
        trainable = sum(p.numel() for p in runners[name].setup.trainable())
        stored = runners[name].setup.adapter_bytes()
        for attention in args.attention:
            row = [name, attention]
            for kind in ("train", "inference"):
                value = med[name, attention, kind]
                key = (name, attention, kind)
                row += [f"{value * 1e3:.1f}", f"{paired(key, (ideal_for(name), attention, kind)):.3f}x",
                        f"{paired(key, ('full_ft', attention, kind)):.3f}x", f"{spread[key]:.0%}"]
            for kind in ("train", "inference"):
                row += [mib(memory[name, attention, kind]), ratio(memory[name, attention, kind], memory[ideal_for(name), attention, kind])] \
                    if memory else ["-", "-"]
            row += [f"{trainable:,}", f"{stored:,}"]
            rows.append(row)

    sections = [
        f"## {args.size}, batch {batch}, {args.prompts} prompts, device {device.type}",
        environment(device),
        f"- timing: {args.clock} clock, median of {args.reps} repetitions after {warmup} warm-up, configurations interleaved "
        "round-robin in one process; ratios are medians of the per-repetition ratios (both timed in the same "
        "round); spread = (max - min) / median",
        "- peak memory: tensor bytes live at the start (weights, buffers, optimizer state, inputs) plus the most "
        "allocated during the call (see benchmarks/measure.py for how this is taken on CPU)",
        "",
        table(headers, rows),
        "",
        "### Targets (reported, not asserted)",
        "",
    ]
    target_rows = []
    for config, measure, limit in TARGETS:
        for attention in args.attention:
            if config not in args.configs or (measure.endswith("peak") and not memory):
                continue
            if measure.endswith("peak"):
                value = memory[config, attention, "train"] / memory[ideal_for(config), attention, "train"]
            else:
                value = paired((config, attention, measure), (ideal_for(config), attention, measure))
            target_rows.append([f"{config} {measure} / {ideal_for(config)}", attention, f"{value:.3f}", f"<= {limit}",
                                "met" if value <= limit else "missed"])
    if ("multi_adapter", args.attention[0], "mixed") in med:
        for attention in args.attention:
            value = paired(("multi_adapter", attention, "single"), ("multi_adapter", attention, "mixed"))
            target_rows.append([f"mixed batch throughput / single-adapter ({args.mixed_adapters} adapters)", attention,
                                f"{value:.3f}", f">= {MIXED_TARGET}", "met" if value >= MIXED_TARGET else "missed"])
    sections.append(table(["target", "attention", "measured", "goal", "status"], target_rows))
    if ("multi_adapter", args.attention[0], "mixed") in med:
        mixed_rows = [[kind, attention, f"{med['multi_adapter', attention, kind] * 1e3:.1f}",
                       f"{batch / med['multi_adapter', attention, kind]:.1f}"]
                      for attention in args.attention for kind in ("single", "mixed")]
        sections += ["", "### Mixed-adapter batch (inference)", "",
                     table(["batch", "attention", "ms", "images/s"], mixed_rows)]
    return "\n".join(sections) + "\n"


if __name__ == "__main__":
    main(parse_args, run)
