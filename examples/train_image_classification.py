"""Gated visual prompt tuning for image classification with Accelerate.

With no arguments it runs offline on the embedded default: the tiny MAE in ``assets/mae-tiny`` (pretrained by
``examples/pretrain_mae.py`` on MNIST) prompt-tuned on scikit-learn's digits, and prints the test accuracy. With
``--config hub_configs/<recipe>.json`` (or flags) it runs the paper's recipe for a Hub backbone and data set.

    accelerate launch examples/train_image_classification.py
    accelerate launch examples/train_image_classification.py --config hub_configs/<recipe>.json --with_tracking
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import datasets
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from transformers import AutoConfig

import gated_vpt
from gated_vpt.recipes import CLASSIFICATION
from gated_vpt.training import args as cli
from gated_vpt.training.checkpointing import TrainState, check_run_config, load_checkpoint, resolve_resume_path
from gated_vpt.training.classification import (
    add_gated_prompts,
    count_parameters,
    evaluate_accuracy,
    final_split,
    load_classification_data,
    load_image_classifier,
    prompt_config,
)
from gated_vpt.training.loop import LoopSettings, train, updates_per_epoch
from gated_vpt.training.optim import build_optimizer, build_scheduler
from gated_vpt.training.plots import plot_gates, plot_learning_curve

logger = get_logger(__name__)
EMBEDDED_MODEL = str(Path(__file__).resolve().parent.parent / "assets" / "mae-tiny")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gated visual prompt tuning for image classification.")
    cli.add_config_args(parser)
    cli.add_model_args(parser, default_model=EMBEDDED_MODEL)
    cli.add_data_args(parser)
    parser.add_argument("--transform", choices=("fgvc", "vtab"), default="vtab",
                        help="'fgvc': resize, random crop, flip (VPT's FGVC); 'vtab': resize only (VTAB-1k).")
    parser.add_argument("--image_size", type=int, default=None, help="Input size (default: the backbone's).")
    cli.add_prompt_args(parser)
    cli.add_optimization_args(parser, learning_rate=0.5, batch_size=64, epochs=40)
    cli.add_run_args(parser, default_output_dir="outputs/image-classification")
    return cli.parse_args_with_recipe(parser, argv, task_type=CLASSIFICATION)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        dynamo_backend="inductor" if args.torch_compile else None,
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    started = time.time()

    # Everything is checked before anything is written to --output_dir.
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id <user>/<name>.")
    backbone = AutoConfig.from_pretrained(args.model_name_or_path)
    if args.image_size is None:
        args.image_size = backbone.image_size
    data = load_classification_data(args, num_channels=backbone.num_channels)
    run_config = cli.run_config(args, accelerator.num_processes)
    resume_path = None
    if args.resume_from_checkpoint:
        resume_path = resolve_resume_path(args.resume_from_checkpoint, args.output_dir)
        check_run_config(resume_path, run_config)

    model = add_gated_prompts(load_image_classifier(args.model_name_or_path, data.labels), prompt_config(args))
    if args.gradient_checkpointing:
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    logger.info(f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    optimizer = build_optimizer(
        model, args.optimizer, args.learning_rate, args.momentum, args.weight_decay, args.gate_learning_rate
    )
    eval_roles = list(data.eval_loaders)
    model, optimizer, train_loader, *eval_loaders = accelerator.prepare(
        model, optimizer, data.train_loader, *data.eval_loaders.values()
    )
    eval_loaders = dict(zip(eval_roles, eval_loaders))
    scheduler = build_scheduler(
        optimizer,
        args.num_train_epochs,
        args.warmup_epochs,
        updates_per_epoch(len(train_loader), args.gradient_accumulation_steps),
        args.scheduler_step,
    )
    state = TrainState()
    if resume_path is not None:
        accelerator.print(f"Resuming from {resume_path}")
        state = load_checkpoint(resume_path, accelerator.unwrap_model(model), optimizer, scheduler, accelerator.process_index)

    if args.with_tracking:
        accelerator.init_trackers("gated_vpt_image_classification", _loggable(vars(args)))

    def evaluate_validation() -> dict:
        if "validation" not in eval_loaders:
            return {}
        return {"validation_accuracy": evaluate_accuracy(accelerator, model, eval_loaders["validation"])}

    settings = LoopSettings(
        num_train_epochs=args.num_train_epochs,
        output_dir=Path(args.output_dir),
        run_config=run_config,
        scheduler_step=args.scheduler_step,
        checkpointing_steps=args.checkpointing_steps,
        max_train_steps=args.max_train_steps,
        with_tracking=args.with_tracking,
    )
    state = train(
        accelerator, model, optimizer, scheduler, train_loader, [data.train_images], settings, state,
        evaluate=evaluate_validation,
    )
    if state is None:
        accelerator.end_training()
        return {}

    result_split = final_split(data)
    metrics = {
        f"{result_split}_accuracy": evaluate_accuracy(accelerator, model, eval_loaders[result_split]) if result_split else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "epochs": args.num_train_epochs,
        "train_seconds": round(time.time() - started, 1),
    }
    if args.with_tracking:
        accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=state.completed_steps)
        accelerator.end_training()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_results(args, accelerator.unwrap_model(model), metrics, state)
    accelerator.wait_for_everyone()
    return metrics


def _write_results(args: argparse.Namespace, model, metrics: dict, state: TrainState) -> None:
    """The adapter (safetensors, config, card), metrics.json, gates.png and learning_curve.png."""
    output = Path(args.output_dir)
    adapter_dir = output / "adapter"
    model.save_pretrained(adapter_dir)
    report = gated_vpt.gate_report(model)
    gates_png = None
    if any(b.gate is not None or b.temperature is not None for b in report.blocks):
        gates_png = plot_gates(report, output / "gates.png", title=Path(args.model_name_or_path).name)
    plot_learning_curve(state.history, output / "learning_curve.png")
    metrics = {**metrics, "gates": report.to_dict(), "history": state.history}
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    _write_card(adapter_dir, model, metrics, gates_png, args)
    accuracy = {k: v for k, v in metrics.items() if k.endswith("_accuracy")}
    print(f"{', '.join(f'{k} {v:.4f}' for k, v in accuracy.items())}; adapter and results in {output}")
    print(report.format_table())
    if args.push_to_hub:
        from gated_vpt.hub import push_adapter

        push_adapter(adapter_dir, args.hub_model_id, token=args.hub_token)


def _write_card(adapter_dir: Path, model, metrics: dict, gates_png: Optional[Path], args: argparse.Namespace) -> None:
    """The model card, when the installed gated_vpt has ``gated_vpt.card``."""
    try:
        from gated_vpt.card import write_model_card
    except ImportError:
        return
    numbers = {k: v for k, v in metrics.items() if k.endswith("_accuracy") and v is not None}
    write_model_card(adapter_dir, model, metrics=numbers, gates_image=gates_png, dataset=args.dataset_name)


def _loggable(values: dict) -> dict:
    """Tracker hyperparameters must be scalars or strings."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}


if __name__ == "__main__":
    main()
