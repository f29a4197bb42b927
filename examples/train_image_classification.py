"""Gated visual prompt tuning for image classification with Accelerate.

With no arguments it runs offline on the embedded default: the tiny MAE in ``assets/mae-tiny`` (pretrained by
``examples/pretrain_mae.py`` on MNIST) prompt-tuned on scikit-learn's digits, and prints the test accuracy. With
``--config hub_configs/<recipe>.json`` (or flags) it runs the paper's recipe for a Hub backbone and data set.

    accelerate launch examples/train_image_classification.py
    accelerate launch examples/train_image_classification.py --config hub_configs/<recipe>.json --with_tracking
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

from accelerate.logging import get_logger
from peft import get_peft_model
from transformers import AutoConfig

from gated_vpt.recipes import CLASSIFICATION
from gated_vpt.training import args as cli
from gated_vpt.training.checkpointing import checked_resume_path
from gated_vpt.training.classification import (
    best_validation_scores,
    count_parameters,
    dry_run_report,
    evaluate_accuracy,
    final_split,
    load_classification_data,
    load_image_classifier,
    prompt_config,
)
from gated_vpt.training.loop import LoopSettings, train, updates_per_epoch
from gated_vpt.training.optim import build_optimizer, build_scheduler
from gated_vpt.training.run import (
    claim_output_dir,
    exit_on_stop,
    finish_run,
    initial_state,
    prepare,
    require_prepared_backbone,
    start_accelerator,
)

logger = get_logger(__name__)
EMBEDDED_MODEL = str(Path(__file__).resolve().parent.parent / "assets" / "mae-tiny")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gated visual prompt tuning for image classification.",
                                     formatter_class=cli.HelpFormatter)
    cli.add_config_args(parser)
    cli.add_model_args(parser, default_model=EMBEDDED_MODEL)
    data = cli.add_data_args(parser, layouts=True)
    cli.add_transform_args(data)
    data.add_argument("--test_every_epoch", type=cli.parse_bool, default=False,
                      help="Also evaluate the test split after every epoch (the released code does), so that "
                           "metrics.json can give the test top-1 at the best validation epoch next to the last epoch's.")
    cli.add_prompt_args(parser)
    cli.add_optimization_args(parser, learning_rate=0.5, batch_size=64, epochs=40)
    cli.add_run_args(parser, default_output_dir="outputs/image-classification")
    return cli.parse_args_with_recipe(parser, argv, task_type=CLASSIFICATION)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if args.dry_run:
        print(dry_run_report(args))
        return {}
    require_prepared_backbone(args)
    accelerator = start_accelerator(args)
    started = time.time()

    # Everything is checked before anything is written to --output_dir (parse_args refuses --push_to_hub without
    # --hub_model_id).
    backbone = AutoConfig.from_pretrained(args.model_name_or_path)
    if args.image_size is None:
        args.image_size = backbone.image_size
    data = load_classification_data(args, num_channels=backbone.num_channels)
    run_config = cli.run_config(args, accelerator.num_processes)
    resume_path = checked_resume_path(args.resume_from_checkpoint, args.output_dir, run_config)
    claim_output_dir(accelerator, args.output_dir)  # a second run on the folder is refused from here on

    model = get_peft_model(load_image_classifier(args.model_name_or_path, data.labels, args.image_size), prompt_config(args))
    if args.gradient_checkpointing:
        model.get_base_model().activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    logger.info(f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    optimizer = build_optimizer(
        model, args.optimizer, args.learning_rate, args.momentum, args.weight_decay, args.gate_learning_rate
    )
    model, optimizer, train_loader, eval_loaders = prepare(accelerator, model, optimizer, data.train_loader, data.eval_loaders)
    scheduler = build_scheduler(
        optimizer,
        args.num_train_epochs,
        args.warmup_epochs,
        updates_per_epoch(len(train_loader), args.gradient_accumulation_steps),
        args.scheduler_step,
        min_learning_rate=args.min_learning_rate,
    )
    state = initial_state(accelerator, resume_path, model, optimizer, scheduler)
    if args.with_tracking:
        accelerator.init_trackers("gated_vpt_image_classification", cli.tracker_config(args))

    def evaluate_each_epoch() -> dict:
        roles = ["validation"] + (["test"] if args.test_every_epoch else [])
        return {f"{role}_accuracy": evaluate_accuracy(accelerator, model, eval_loaders[role]) for role in roles if role in eval_loaders}

    state = train(
        accelerator, model, optimizer, scheduler, train_loader, [data.train_images],
        LoopSettings.from_args(args, run_config), state, evaluate=evaluate_each_epoch,
    )
    if state is None:
        accelerator.end_training()
        return {}

    result_split = final_split(data)
    metrics = {
        f"{result_split}_accuracy": evaluate_accuracy(accelerator, model, eval_loaders[result_split]) if result_split else None,
        **best_validation_scores(state.history, has_test="test" in eval_loaders),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "examples": {"train": len(data.train_images), **{k: len(v.dataset) for k, v in data.eval_loaders.items()}},
        "epochs": args.num_train_epochs,
        "train_seconds": round(time.time() - started, 1),
    }
    return finish_run(accelerator, model, metrics, state, args, task=CLASSIFICATION, title=Path(args.model_name_or_path).name)


if __name__ == "__main__":
    exit_on_stop(main)
