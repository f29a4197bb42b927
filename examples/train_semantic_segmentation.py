"""Gated visual prompt tuning for semantic segmentation (SETR-PUP decoder) with Accelerate.

``--quick`` runs offline in under a minute on 2 CPU cores (34 s measured, docs/SEGMENTATION.md): a tiny random
ViT with gated prompts and SETR-PUP heads learns synthetic shapes, and the validation mIoU is printed. With
``--config hub_configs/<mae|mocov3>-ade20k.json`` (or flags) it runs the paper's ADE20K recipe: batch 16, SGD
lr 0.001, polynomial decay per update, 100 prompts, gate_init 10, auxiliary heads on blocks 5 and 9, random
resize-crop 512, single- and multi-scale mIoU.

    python examples/train_semantic_segmentation.py --quick
    accelerate launch examples/train_semantic_segmentation.py --config hub_configs/mae-ade20k.json --reduce_labels true
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from accelerate.logging import get_logger

from gated_vpt.recipes import SEGMENTATION
from gated_vpt.segmentation.inference import evaluate_segmentation
from gated_vpt.segmentation.model import HEAD_MODULES, save_segmentation_adapter
from gated_vpt.segmentation.synthetic import SHAPES_LABELS
from gated_vpt.segmentation.training import (
    QUICK,
    build_segmentation_model,
    dry_run_report,
    inference_settings,
    load_segmentation_data,
)
from gated_vpt.training import args as cli
from gated_vpt.training.checkpointing import checked_resume_path
from gated_vpt.training.classification import count_parameters
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


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices such as 5,9, got {text!r}") from None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description="Gated visual prompt tuning for semantic segmentation (SETR-PUP).",
                                     formatter_class=cli.HelpFormatter)
    cli.add_config_args(parser)
    parser.add_argument("--quick", action="store_true",
                        help="Offline: synthetic shapes, a tiny random ViT, 3 epochs (flags still override).")
    cli.add_model_args(parser, default_model=None)
    cli.add_data_args(parser)
    group = parser.add_argument_group("segmentation")
    group.add_argument("--mask_column_name", default=None, help="Mask column (default: 'annotation', 'label', 'mask', ...).")
    group.add_argument("--reduce_labels", type=cli.parse_bool, default=False,
                       help="ADE20K: mask value 0 ('other') becomes the ignore index and 1..N become classes 0..N-1.")
    group.add_argument("--ignore_index", type=int, default=255, help="Mask value that does not count in loss or metrics.")
    group.add_argument("--crop_size", type=int, default=512, help="Training crop (and test rescale) size; SETR: 512.")
    group.add_argument("--decoder", choices=("setr_pup",), default="setr_pup")
    group.add_argument("--decoder_channels", type=int, default=512,
                       help="Channels of the decode and auxiliary heads' stages: 512 (SETR-PUP), or 256 for a lighter head.")
    group.add_argument("--decoder_lr_multiplier", type=float, default=10.0,
                       help="Learning rate of the decode and auxiliary heads = --learning_rate x this (SETR: 10).")
    group.add_argument("--decoder_norm", choices=("batch", "group"), default="batch",
                       help="Norm in the decoder stages: 'batch' (SETR) or 'group' (small per-device batches).")
    group.add_argument("--aux_blocks", type=_int_list, default=[],
                       help="0-based blocks with an auxiliary head, e.g. 5,9 (the paper, ViT-B).")
    group.add_argument("--aux_loss_weight", type=float, default=0.4)
    group.add_argument("--scheduler", choices=("poly", "cosine"), default="poly",
                       help="'poly': SETR's (1 - t/T)^power decay; 'cosine': the classification schedule.")
    group.add_argument("--poly_power", type=float, default=0.9)
    group.add_argument("--eval_mode", choices=("whole", "slide"), default="slide",
                       help="Test-time inference on the rescaled image at once, or in crop_size windows (SETR).")
    group.add_argument("--eval_stride", type=int, default=None, help="Sliding-window stride (default: 2/3 of the crop).")
    group.add_argument("--eval_every_epochs", type=int, default=1, help="Validation mIoU every N epochs (0: never).")
    group.add_argument("--multi_scale_eval", type=cli.parse_bool, default=True,
                       help="Also report multi-scale + flip mIoU at the end (ratios 0.5..1.75).")
    cli.add_prompt_args(parser)
    cli.add_optimization_args(parser, learning_rate=0.001, batch_size=16, epochs=127)
    parser.set_defaults(warmup_epochs=0, scheduler_step="step", per_device_eval_batch_size=1, min_learning_rate=1e-4)
    cli.add_run_args(parser, default_output_dir="outputs/semantic-segmentation")
    if "--quick" in argv:
        if "--config" in argv:
            raise ValueError("--quick uses the built-in synthetic setting; drop --config (or --quick).")
        parser.set_defaults(**QUICK)
    args = cli.parse_args_with_recipe(parser, argv, task_type=SEGMENTATION)
    if args.num_labels is None:
        raise ValueError("--num_labels is required (ADE20K: 150), or use --quick.")
    if args.model_name_or_path is None and not args.quick:
        raise ValueError("--model_name_or_path is required (a Hub id or a local transformers directory), or use --quick.")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if args.dry_run:
        print(dry_run_report(args))
        return {}
    require_prepared_backbone(args)
    accelerator = start_accelerator(args)
    started = time.time()

    # Everything is checked before anything is written to --output_dir.
    data = load_segmentation_data(args)
    run_config = cli.run_config(args, accelerator.num_processes)
    resume_path = checked_resume_path(args.resume_from_checkpoint, args.output_dir, run_config)
    claim_output_dir(accelerator, args.output_dir)  # a second run on the folder is refused from here on

    model = build_segmentation_model(args, SHAPES_LABELS if args.quick else None)
    if args.decoder_norm == "batch" and accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # SETR's SyncBN (torch syncs BN on GPUs only)
    if args.gradient_checkpointing:
        model.get_base_model().backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    logger.info(f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    optimizer = build_optimizer(
        model, args.optimizer, args.learning_rate, args.momentum, args.weight_decay, args.gate_learning_rate,
        head_modules=HEAD_MODULES, head_lr_multiplier=args.decoder_lr_multiplier,
    )
    model, optimizer, train_loader, eval_loaders = prepare(accelerator, model, optimizer, data.train_loader, data.eval_loaders)
    steps = updates_per_epoch(len(train_loader), args.gradient_accumulation_steps)
    scheduler = build_scheduler(
        optimizer, args.num_train_epochs, args.warmup_epochs, steps, args.scheduler_step, args.scheduler, args.poly_power,
        args.min_learning_rate,
    )
    state = initial_state(accelerator, resume_path, model, optimizer, scheduler)
    if args.with_tracking:
        accelerator.init_trackers("gated_vpt_semantic_segmentation", cli.tracker_config(args))

    def score(role: str, multi_scale: bool = False) -> dict:
        settings = inference_settings(args, multi_scale)
        return evaluate_segmentation(model, eval_loaders[role], args.num_labels, args.ignore_index, settings, accelerator)

    epochs_seen = [state.epoch]

    def evaluate_validation() -> dict:
        epochs_seen[0] += 1
        every = args.eval_every_epochs
        if "validation" not in eval_loaders or not every or epochs_seen[0] % every:
            return {}
        scores = score("validation")
        return {"validation_miou": scores["mean_iou"], "validation_pixel_accuracy": scores["overall_accuracy"]}

    state = train(
        accelerator, model, optimizer, scheduler, train_loader, (data.sampler, data.train_samples),
        LoopSettings.from_args(args, run_config), state, evaluate=evaluate_validation,
    )
    if state is None:
        accelerator.end_training()
        return {}

    result_split = "test" if "test" in eval_loaders else ("validation" if "validation" in eval_loaders else None)
    metrics: dict = {}
    if result_split:
        single = score(result_split)
        metrics.update({
            f"{result_split}_miou": single["mean_iou"],
            f"{result_split}_pixel_accuracy": single["overall_accuracy"],
            f"{result_split}_mean_accuracy": single["mean_accuracy"],
            f"{result_split}_per_class_iou": single["per_category_iou"],
        })
        if args.multi_scale_eval:
            metrics[f"{result_split}_miou_multi_scale"] = score(result_split, multi_scale=True)["mean_iou"]
    metrics.update({
        "trainable_parameters": trainable,
        "total_parameters": total,
        "epochs": args.num_train_epochs,
        "train_seconds": round(time.time() - started, 1),
    })
    return finish_run(
        accelerator, model, metrics, state, args, task=SEGMENTATION, title=Path(args.model_name_or_path or "quick").name,
        save_adapter=save_segmentation_adapter,
    )


if __name__ == "__main__":
    exit_on_stop(main)
