"""What a protocol costs before anything runs (``gated-vpt protocol --dry_run``, and after ``--print_jobs``'s list):
the runs per task and stage, the training images x epochs and the evaluated images of each, and GPU-hours at a
training speed that is given (``--images_per_second``) or measured here on one step (``--measure_speed``).

Image counts come from each task's data folder; without it, a VTAB-1k task's training and validation splits have
their fixed sizes (800, 200, 1000) and its test split is left out of the estimate (said in the printout).

Example:

```py
costs = stage_costs(protocol, load_training_script())
print(format_costs(protocol.title, costs, images_per_second=500.0))
```
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from .benchmark_data import STAGE_SPLITS, VTAB1K_SPLIT_SIZES, DataLayoutError, read_layout

# An evaluated image costs a forward pass; a trained one a forward and a backward pass through the whole (frozen)
# backbone, about three times as much. Used only when the evaluation speed is not measured.
EVAL_SPEEDUP = 3.0


def add_cost_args(parser: argparse.ArgumentParser) -> None:
    """``--dry_run``, ``--images_per_second`` and ``--measure_speed`` of ``gated-vpt protocol``."""
    parser.add_argument("--dry_run", action="store_true",
                        help="print the runs, the images x epochs of each and (with a speed) the GPU-hours; run "
                             "nothing, and need neither the data nor the backbone")
    parser.add_argument("--images_per_second", type=float, default=None,
                        help="training images per second of one job (one GPU), for the GPU-hour estimate of "
                             "--dry_run and --print_jobs")
    parser.add_argument("--measure_speed", action="store_true",
                        help="measure --images_per_second on this machine's device: a few training steps and "
                             "evaluation batches of the first task's recipe with random images (needs its backbone)")


@dataclass
class StageCost:
    """One task's runs of one stage: how many there are and are not done, and the work of each.

    Example:

    ```py
    >>> StageCost("dtd", "tune", runs=7, remaining=7, epochs=100, train_images=800, eval_images=20000).seconds(400.0, 1200.0)
    216.66666666666666
    ```
    """

    task: str
    stage: str
    runs: int
    remaining: int
    epochs: int
    train_images: Optional[int]
    eval_images: Optional[int]  # validation images x epochs + test images
    test_unknown: bool = False

    def seconds(self, images_per_second: float, eval_images_per_second: float) -> Optional[float]:
        """Seconds of one run at these speeds (None when the images are unknown)."""
        if self.train_images is None:
            return None
        return self.train_images * self.epochs / images_per_second + (self.eval_images or 0) / eval_images_per_second


def stage_costs(protocol, script) -> list[StageCost]:
    """Every task's tune and final runs (the final ones at whatever rate the tuning picks) with their work."""
    costs = []
    for task in protocol.tasks:
        stages = [("tune", len(protocol.learning_rates)), ("final", len(protocol.seeds))] if protocol.tune else [("final", len(protocol.seeds))]
        for stage, count in stages:
            done = sum(run.settled for run in (protocol.tune_runs(task) if stage == "tune" else protocol.final_runs(task)))
            args = script.parse_args(list(protocol.run(task, stage, task.recipe_learning_rate, protocol.tune_seed).argv))
            train, evaluated, test_unknown = _stage_images(args, stage)
            costs.append(StageCost(task.name, stage, count, count - done, args.num_train_epochs, train, evaluated, test_unknown))
    return costs


def _stage_images(args: argparse.Namespace, stage: str) -> tuple[Optional[int], Optional[int], bool]:
    """(training images, evaluated images over the run, whether the test split is missing from the count)."""
    if not getattr(args, "data_dir", None):
        return None, None, False
    try:
        layout, splits = read_layout(args.data_dir, args.data_layout)
        sizes = {name: len(split.images) for name, split in splits.items()}
    except DataLayoutError:
        if args.data_layout != "vtab1k":
            return None, None, False
        layout, sizes = "vtab1k", VTAB1K_SPLIT_SIZES
    roles = STAGE_SPLITS[layout][stage]
    validation = sizes.get(roles.get("validation"), 0) * args.num_train_epochs
    test = sizes.get(roles["test"]) if "test" in roles else 0
    return sizes[roles["train"]], validation + (test or 0), test is None


def format_costs(
    title: str,
    costs: Sequence[StageCost],
    images_per_second: Optional[float] = None,
    eval_images_per_second: Optional[float] = None,
    gpus_per_run: int = 1,
    speed_source: str = "--images_per_second",
) -> str:
    """The table of runs and work, then the totals and the GPU-hour estimate when a speed is known."""
    lines = [f"Cost of {title}: {sum(c.runs for c in costs)} runs, {sum(c.remaining for c in costs)} not done yet",
             f"{'task':<16} {'stage':<6} {'runs':>4} {'not done':>8}  {'training images x epochs':>24}  evaluated images"]
    for c in costs:
        train = "unknown (no data)" if c.train_images is None else f"{c.train_images:,} x {c.epochs}"
        evaluated = "unknown" if c.eval_images is None else f"{c.eval_images:,}" if not c.test_unknown else (
            f"{c.eval_images:,} + test (no data)" if c.eval_images else "test (no data)")
        lines.append(f"{c.task:<16} {c.stage:<6} {c.runs:>4} {c.remaining:>8}  {train:>24}  {evaluated}")
    known = [c for c in costs if c.train_images is not None]
    trained = sum(c.remaining * c.train_images * c.epochs for c in known)
    evaluated = sum(c.remaining * (c.eval_images or 0) for c in known)
    missing_tests = sorted({c.task for c in costs if c.test_unknown})
    lines.append(f"not done: {trained:,} training images and {evaluated:,} evaluated images"
                 + (f" (+ the test splits of {len(missing_tests)} tasks without data)" if missing_tests else "")
                 + (f"; {len({c.task for c in costs} - {c.task for c in known})} tasks unknown" if len(known) < len(costs) else ""))
    if images_per_second:
        eval_rate = eval_images_per_second or EVAL_SPEEDUP * images_per_second
        seconds = sum(c.remaining * c.seconds(images_per_second, eval_rate) for c in known)
        rate_note = "measured" if eval_images_per_second else f"assumed {EVAL_SPEEDUP:g}x the training speed"
        lines.append(f"estimate: {seconds * gpus_per_run / 3600:,.1f} GPU-hours ({gpus_per_run} GPU per run; "
                     f"{images_per_second:,.1f} training images/s from {speed_source}; evaluation {eval_rate:,.1f} "
                     f"images/s, {rate_note}); the longest run {max(c.seconds(images_per_second, eval_rate) for c in known) / 3600:.2f} h"
                     if known else "estimate: unknown without image counts")
    else:
        lines.append("GPU-hours: give --images_per_second (one job's training speed) or --measure_speed")
    return "\n".join(lines)


def measure_speed(protocol, script, steps: int = 3) -> tuple[float, float, str]:
    """(training images/s, evaluation images/s, the device) of the first task's final-stage recipe on this machine's
    device: one warm-up and ``steps`` timed SGD steps at its batch size, then as many evaluation batches, on random
    images (the speed does not depend on them). Needs the recipe's backbone folder."""
    import torch
    from peft import get_peft_model

    from .classification import load_image_classifier, prompt_config
    from .dry_run import quiet_loading
    from .optim import build_optimizer
    from .run import RunStopped, require_prepared_backbone

    task = protocol.tasks[0]
    args = script.parse_args(list(protocol.run(task, "final", task.recipe_learning_rate, protocol.tune_seed).argv))
    try:
        require_prepared_backbone(args)
    except RunStopped as stop:
        raise ValueError(f"--measure_speed builds {task.name}'s model: {stop}") from None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with quiet_loading():  # a gated_vpt PeftModel is built without peft's deprecation warning (registration)
        model = get_peft_model(load_image_classifier(args.model_name_or_path, [str(i) for i in range(args.num_labels or 2)]),
                               prompt_config(args)).to(device)
    size = args.image_size or model.config.image_size
    optimizer = build_optimizer(model, args.optimizer, args.learning_rate, args.momentum, args.weight_decay, args.gate_learning_rate)

    def timed(batch: int, train: bool) -> float:
        pixels = torch.randn(batch, model.config.num_channels, size, size, device=device)
        labels = torch.randint(0, args.num_labels or 2, (batch,), device=device)
        model.train(train)
        for step in range(steps + 1):
            if step == 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            if train:
                model(pixel_values=pixels, labels=labels).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            else:
                with torch.no_grad():
                    model(pixel_values=pixels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return batch * steps / (time.perf_counter() - start)

    train_rate = timed(args.per_device_train_batch_size, True)
    eval_rate = timed(args.per_device_eval_batch_size, False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return train_rate, eval_rate, name
