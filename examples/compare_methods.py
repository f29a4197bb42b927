"""Compare tuning methods on one backbone and data set (default: the embedded tiny MAE and digits), over seeds.

Methods: a linear probe and full fine-tuning (both on the MAE head: mean of the tokens, then the final LayerNorm),
VPT-shallow, VPT-deep, gated prompts without temperature, and gated prompts with temperature (the paper's method).
Writes a markdown table (mean +- std test accuracy over the seeds, trainable parameters), results.json and a plot.
Each finished run is appended to ``runs.jsonl`` in the output folder as it ends; the same command run again skips
the runs found there (made with the same settings), so an interrupted comparison loses at most the run in progress.

    OMP_NUM_THREADS=1 python examples/compare_methods.py --output_dir outputs/compare   # 25 epochs, lr 0.5: 24 minutes*

(*on one thread of the shared 2-core machine under load, docs/TRAINING.md.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import transformers  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from peft import get_peft_model  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from gated_vpt.heads import pool_into_cls  # noqa: E402
from gated_vpt.training import args as cli  # noqa: E402
from gated_vpt.training.checkpointing import TrainState  # noqa: E402
from gated_vpt.training.classification import (  # noqa: E402
    count_parameters,
    evaluate_accuracy,
    final_split,
    load_classification_data,
    load_image_classifier,
    prompt_config,
)
from gated_vpt.training.loop import LoopSettings, train, updates_per_epoch  # noqa: E402
from gated_vpt.training.optim import build_optimizer, build_scheduler  # noqa: E402

EMBEDDED_MODEL = str(Path(__file__).resolve().parent.parent / "assets" / "mae-tiny")
RUNS_FILE = "runs.jsonl"


@dataclass(frozen=True)
class Method:
    """A row of the comparison: adapter settings (None: no prompts) and optimiser overrides."""

    name: str
    prompts: Optional[dict] = None
    train_backbone: bool = False
    overrides: dict = field(default_factory=dict)


METHODS = {
    "linear": Method("linear probe"),
    "full": Method("full fine-tune", train_backbone=True, overrides={"optimizer": "adamw", "learning_rate": 1e-3}),
    "vpt-shallow": Method("VPT-shallow", prompts={"prompt_mode": "shallow", "gated": False, "learnable_temperature": False}),
    "vpt-deep": Method("VPT-deep", prompts={"prompt_mode": "deep", "gated": False, "learnable_temperature": False}),
    "gated": Method("gated", prompts={"prompt_mode": "shallow", "gated": True, "learnable_temperature": False}),
    "gated-temp": Method("gated + temperature", prompts={"prompt_mode": "shallow", "gated": True, "learnable_temperature": True}),
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compare tuning methods over several seeds.")
    cli.add_model_args(parser, default_model=EMBEDDED_MODEL)
    cli.add_transform_args(cli.add_data_args(parser))
    cli.add_prompt_args(parser)
    cli.add_optimization_args(parser, learning_rate=0.5, batch_size=64, epochs=25)
    parser.set_defaults(warmup_epochs=5)
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output_dir", default="outputs/compare")
    args = parser.parse_args(argv)
    args.config, args.recipe_stage = None, "final"
    return args


def run_one(accelerator: Accelerator, args: argparse.Namespace, method: Method, seed: int, num_channels: int) -> dict:
    """Train one method with one seed; return its test accuracy and trainable parameters."""
    args = argparse.Namespace(**{**vars(args), **method.overrides, "seed": seed})
    set_seed(seed)
    data = load_classification_data(args, num_channels=num_channels)
    model = load_image_classifier(args.model_name_or_path, data.labels)
    if method.prompts is None:
        model.requires_grad_(method.train_backbone)
        model.classifier.requires_grad_(True)
        _mean_pool_head(model, args)
    else:
        model = get_peft_model(model, prompt_config(argparse.Namespace(**{**vars(args), **method.prompts})))
    trainable, _ = count_parameters(model)
    optimizer = build_optimizer(model, args.optimizer, args.learning_rate, args.momentum, args.weight_decay)
    split = final_split(data)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, data.train_loader, data.eval_loaders[split])
    scheduler = build_scheduler(
        optimizer, args.num_train_epochs, args.warmup_epochs,
        updates_per_epoch(len(train_loader), args.gradient_accumulation_steps), args.scheduler_step,
    )
    settings = LoopSettings(args.num_train_epochs, Path(args.output_dir), run_config={}, scheduler_step=args.scheduler_step,
                            checkpointing_steps=None)
    started = time.time()
    train(accelerator, model, optimizer, scheduler, train_loader, [data.train_images], settings, TrainState())
    accuracy = evaluate_accuracy(accelerator, model, eval_loader)
    return {"method": method.name, "seed": seed, f"{split}_accuracy": accuracy, "trainable_parameters": trainable,
            "seconds": round(time.time() - started, 1)}


def _mean_pool_head(model: nn.Module, args: argparse.Namespace) -> None:
    """Give the prompt-free baselines the head the prompt methods use: for MAE (head_pooling auto/mean), the mean
    of the non-CLS tokens replaces CLS before the final LayerNorm and classifier."""
    if args.head_pooling == "cls" or (args.head_pooling == "auto" and model.config.model_type != "vit_mae"):
        return
    blocks = model.vit.layers if hasattr(model.vit, "layers") else model.vit.encoder.layer
    blocks[-1].register_forward_hook(lambda module, inputs, output: pool_into_cls(output))


def finished_runs(output_dir: Path, settings: dict) -> dict[tuple[str, int], dict]:
    """The runs already in ``output_dir/runs.jsonl``, by (method, seed); refuses a file made with other settings.
    A last line cut short by an interruption is ignored."""
    path = output_dir / RUNS_FILE
    runs = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry["settings"] != settings:
            changed = sorted(k for k in {*settings, *entry["settings"]} if settings.get(k) != entry["settings"].get(k))
            raise SystemExit(
                f"error: {path} holds runs made with other settings ({', '.join(changed)}): use another --output_dir, "
                "or delete it to start again."
            )
        runs[(entry["result"]["method"], entry["result"]["seed"])] = entry["result"]
    return runs


def record_run(output_dir: Path, settings: dict, result: dict) -> None:
    """Append one finished run to ``output_dir/runs.jsonl`` (one line, flushed to disk)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / RUNS_FILE, "a") as file:
        file.write(json.dumps({"settings": settings, "result": result}) + "\n")
        file.flush()
        os.fsync(file.fileno())


def write_report(results: list[dict], output_dir: Path, command: str) -> str:
    """results.json, table.md (mean +- std per method) and comparison.png."""
    key = next(k for k in results[0] if k.endswith("_accuracy"))
    rows, names = [], list(dict.fromkeys(r["method"] for r in results))
    for name in names:
        values = [100 * r[key] for r in results if r["method"] == name]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        params = next(r["trainable_parameters"] for r in results if r["method"] == name)
        seconds = statistics.mean(r["seconds"] for r in results if r["method"] == name)
        rows.append((name, statistics.mean(values), spread, params, seconds, values))
    table = [f"| method | {key.replace('_', ' ')} % (mean ± std, {len(rows[0][5])} seeds) | trainable parameters | s / run |",
             "|---|---:|---:|---:|"]
    table += [f"| {n} | {m:.2f} ± {s:.2f} | {p:,} | {t:.0f} |" for n, m, s, p, t, _ in rows]
    text = "\n".join(table) + f"\n\nCommand: `{command}`\n"
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (output_dir / "table.md").write_text(text)
    # The rows often differ by a point or two: the y axis starts just below the lowest seed, not at 0.
    lowest = min(min(row[5]) for row in rows)
    bottom = max(0.0, 5 * math.floor((lowest - 2) / 5))
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.bar(range(len(rows)), [r[1] - bottom for r in rows], bottom=bottom, yerr=[r[2] for r in rows], capsize=4,
             color="tab:blue")
    for i, row in enumerate(rows):
        axis.scatter([i] * len(row[5]), row[5], color="black", s=8, zorder=3)
        axis.annotate(f"{row[1]:.1f}", (i, max(row[5])), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
    axis.set_ylim(bottom, min(100.0, max(max(row[5]) for row in rows) + 2))
    axis.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=20)
    axis.set_ylabel(f"{key.replace('_', ' ')} (%)")
    axis.set_title(f"mean ± std over {len(rows[0][5])} seeds (dots: each seed)", fontsize=9)
    figure.tight_layout()
    figure.savefig(output_dir / "comparison.png", dpi=100)
    plt.close(figure)
    return text


def main(argv: Optional[Sequence[str]] = None) -> str:
    import sys

    args = parse_args(argv)
    transformers.utils.logging.set_verbosity_error()
    accelerator = Accelerator()
    backbone = AutoConfig.from_pretrained(args.model_name_or_path)
    args.image_size = args.image_size or backbone.image_size
    output_dir = Path(args.output_dir)
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in ("methods", "seeds", "output_dir")}
    done = finished_runs(output_dir, settings)
    results = []
    for key in args.methods:
        for seed in args.seeds:
            result = done.get((METHODS[key].name, seed))
            if result is None:
                result = run_one(accelerator, args, METHODS[key], seed, backbone.num_channels)
                if accelerator.is_main_process:
                    record_run(output_dir, settings, result)
            else:
                accelerator.print(f"{METHODS[key].name}, seed {seed}: finished before, in {output_dir / RUNS_FILE}")
            accelerator.print(json.dumps(result))
            results.append(result)
    command = "python examples/compare_methods.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = write_report(results, output_dir, command.strip())
    accelerator.print(text)
    return text


if __name__ == "__main__":
    main()
