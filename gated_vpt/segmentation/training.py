"""Semantic segmentation pieces for the training script: checked data loaders, the backbone with SETR-PUP heads and
a gated prompt adapter, test-time inference settings, and the offline tiny setting of ``--quick``.

Everything task-independent (arguments and recipes, optimizer and schedules, training loop, checkpoints, plots,
results) comes from ``gated_vpt.training``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from datasets import DatasetDict
from peft import PeftModel
from torch import nn
from torch.utils.data import DataLoader
from transformers import ViTConfig, ViTModel

from ..config import GatedPromptConfig
from ..training.classification import count_parameters, prompt_config
from ..training.dry_run import DryRunReport, backbone_status, count_train_images, learning_rate_groups, quiet_loading
from ..training.data import (
    EpochShuffleSampler,
    check_images,
    drop_unreadable_images,
    find_column,
    image_normalisation,
    load_image_datasets,
)
from .data import (
    LabelSpec,
    SegmentationSamples,
    SegmentationTransform,
    check_examples,
    collate_eval,
    collate_train,
    find_image_mask_pairs,
)
from .inference import MULTI_SCALE_RATIOS, InferenceSettings
from .model import SegmentationHeadConfig, SegmentationModel, get_segmentation_peft_model, load_pretrained_backbone
from .synthetic import SHAPES_LABELS, shapes_dataset

MASK_COLUMN_GUESSES = ("annotation", "label", "mask", "segmentation", "semantic_map")

# --quick: the synthetic shapes on a tiny random ViT, offline, about a minute on 2 CPU cores.
QUICK = {
    "num_labels": len(SHAPES_LABELS),
    "crop_size": 32,
    "aux_blocks": [0],
    "decoder_channels": 32,
    "decoder_lr_multiplier": 1.0,
    "min_learning_rate": 0.0,
    "num_prompt_tokens": 4,
    "gate_init": 2.0,
    "learning_rate": 0.05,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "num_train_epochs": 3,
    "eval_mode": "whole",
    "output_dir": "outputs/semantic-segmentation-quick",
}
QUICK_IMAGES = {"train": 96, "validation": 32}
QUICK_BACKBONE = ViTConfig(
    image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)


@dataclass
class SegmentationData:
    """Loaders for one run (not yet prepared by Accelerate) and what describes them."""

    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    labels: LabelSpec
    sampler: EpochShuffleSampler
    train_samples: SegmentationSamples
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_segmentation_datasets(args: argparse.Namespace) -> DatasetDict:
    """``train`` / ``validation`` / ``test`` splits of image/mask pairs: the synthetic shapes (``--quick``), a Hub
    data set (``--dataset_name``) or local folders (``--train_dir`` etc., each with images/ and annotations/)."""
    folders = {role: getattr(args, f"{role}_dir") for role in ("train", "validation", "test")}
    if args.quick:
        return DatasetDict({role: shapes_dataset(n, QUICK["crop_size"], seed=args.seed + i) for i, (role, n) in enumerate(QUICK_IMAGES.items())})
    if args.dataset_name:
        if any(folders.values()):
            raise ValueError("Give either --dataset_name or --train_dir/--validation_dir/--test_dir, not both.")
        splits = {"train": args.train_split, "validation": args.validation_split, "test": args.test_split}
        return load_image_datasets(args.dataset_name, args.dataset_config_name, splits=splits)
    if not folders["train"]:
        raise ValueError(
            "No data: give --dataset_name (a Hub data set of image/mask pairs), --train_dir (a folder with images/ and "
            "annotations/), or --quick for the offline synthetic shapes."
        )
    return DatasetDict({role: find_image_mask_pairs(path) for role, path in folders.items() if path})


def load_segmentation_data(args: argparse.Namespace) -> SegmentationData:
    """Load the splits, check their columns and first examples (mask sizes, label range), and build the loaders.

    Raises ``ValueError`` before training on a missing column, a mask whose size differs from its image, or label
    values outside ``0..num_labels-1`` other than the ignore index.
    """
    splits = load_segmentation_datasets(args)
    train = splits["train"]
    image_column = find_column(train, args.image_column_name, ("image", "img", "pixel_values"), "image", "--image_column_name")
    mask_column = find_column(train, args.mask_column_name, MASK_COLUMN_GUESSES, "mask", "--mask_column_name")
    splits = drop_unreadable_images(splits, (image_column, mask_column), args.skip_bad_images)
    labels = LabelSpec(args.num_labels, args.ignore_index, args.reduce_labels)
    for role, split in splits.items():
        check_images(split, image_column, 3)
        check_examples(split, labels, image_column, mask_column, role)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if args.model_name_or_path:
        mean, std = image_normalisation(args.model_name_or_path, args.image_normalization)

    def samples(role: str, train: bool) -> SegmentationSamples:
        transform = SegmentationTransform(labels, args.crop_size, train, mean, std, jitter=not args.quick)
        return SegmentationSamples(splits[role], image_column, mask_column, transform, seed=args.seed)

    train_samples = samples("train", True)
    sampler = EpochShuffleSampler(len(train_samples), seed=args.seed)
    # A loader-owned generator: creating an iterator (every epoch, and again when a resumed run skips batches) then
    # draws its seed from it instead of from the global RNG, which the prompt dropout uses and checkpoints restore.
    # The last, shorter batch of an epoch is kept: ceil(n / batch) batches per epoch.
    train_loader = DataLoader(
        train_samples, batch_size=args.per_device_train_batch_size, sampler=sampler, drop_last=False,
        collate_fn=collate_train, generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loaders = {
        role: DataLoader(samples(role, False), batch_size=args.per_device_eval_batch_size, collate_fn=collate_eval)
        for role in ("validation", "test")
        if role in splits
    }
    return SegmentationData(train_loader, eval_loaders, labels, sampler, train_samples, mean, std)


def load_backbone(model_name_or_path: Optional[str], seed: int = 0) -> nn.Module:
    """The checkpoint's encoder without task heads (``model.load_pretrained_backbone``); with no path, the tiny random ViT of
    ``--quick``."""
    if model_name_or_path is None:
        torch.manual_seed(seed)
        return ViTModel(QUICK_BACKBONE, add_pooling_layer=False)
    return load_pretrained_backbone(model_name_or_path)


def head_config(args: argparse.Namespace, id2label: Optional[dict[int, str]] = None) -> SegmentationHeadConfig:
    if args.decoder != "setr_pup":
        raise ValueError(f"--decoder={args.decoder!r} is not available; use 'setr_pup'.")
    return SegmentationHeadConfig(
        num_labels=args.num_labels,
        aux_blocks=tuple(args.aux_blocks),
        aux_loss_weight=args.aux_loss_weight,
        channels=args.decoder_channels,
        norm=args.decoder_norm,
        ignore_index=args.ignore_index,
        id2label=id2label,
    )


def build_segmentation_model(args: argparse.Namespace, id2label: Optional[dict[int, str]] = None) -> PeftModel:
    """The backbone with SETR-PUP heads and a gated prompt adapter; trainable: prompts, gates, temperatures, heads."""
    heads = head_config(args, id2label)
    backbone = load_backbone(args.model_name_or_path, args.seed)
    torch.manual_seed(args.seed)
    model = SegmentationModel(backbone, heads)
    config: GatedPromptConfig = prompt_config(args)
    config.base_model_name_or_path = args.model_name_or_path
    return get_segmentation_peft_model(model, config)


def dry_run_report(args: argparse.Namespace) -> str:
    """``--dry_run``: the run described without training; the model is built only from a local backbone folder."""
    backbone, buildable = backbone_status(args)
    if args.quick:
        num_train, data = QUICK_IMAGES["train"], "the synthetic shapes (--quick)"
    elif args.train_dir and Path(args.train_dir).is_dir():
        try:
            num_train = len(find_image_mask_pairs(args.train_dir))
            data = f"{args.train_dir}: {num_train} image/mask pairs"
        except FileNotFoundError as error:
            num_train, data = None, f"{args.train_dir}: {error}"
    else:
        num_train, data = count_train_images(args)
    groups = learning_rate_groups(args, args.decoder_lr_multiplier)
    report = DryRunReport(args, num_train, groups, data=data, decay=args.scheduler, power=args.poly_power, backbone=backbone)
    if buildable:
        with quiet_loading():
            report.trainable = count_parameters(build_segmentation_model(args))
    return report.format()


def inference_settings(args: argparse.Namespace, multi_scale: bool = False) -> InferenceSettings:
    return InferenceSettings(
        mode=args.eval_mode,
        crop_size=args.crop_size,
        stride=args.eval_stride or max(1, (2 * args.crop_size) // 3),
        scales=MULTI_SCALE_RATIOS if multi_scale else (1.0,),
        flip=multi_scale,
    )
