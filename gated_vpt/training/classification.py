"""Image classification pieces: checked data loaders, the backbone with a fresh classifier and a gated prompt
adapter, and top-1 evaluation through ``evaluate``."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from accelerate import Accelerator
from peft import get_peft_model
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from gated_vpt.base_models import load_base_model
from gated_vpt.config import GatedPromptConfig
from gated_vpt.heads import init_classifier_

from .data import (
    IMAGE_COLUMN_GUESSES,
    LABEL_COLUMN_GUESSES,
    EpochShuffleSampler,
    ImageTransform,
    TransformedImages,
    check_class_folders,
    check_images,
    check_label_coverage,
    drop_unreadable_images,
    find_column,
    image_normalisation,
    label_names,
    load_image_datasets,
)
from .dry_run import DryRunReport, backbone_status, count_train_images, learning_rate_groups, quiet_loading
from .metrics import load_metric
from .run import RunStopped

if TYPE_CHECKING:
    from datasets import DatasetDict

logger = logging.getLogger(__name__)


@dataclass
class ClassificationData:
    """Loaders for one run (not yet prepared by Accelerate) and what describes them."""

    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    labels: list[str]
    train_images: TransformedImages


def load_classification_data(args: argparse.Namespace, num_channels: int) -> ClassificationData:
    """Load and check the data named by ``args`` (see ``gated_vpt.training.args``), raising ``ValueError`` on a
    missing column, non-image column, label problems (fewer than 2 classes, a class count that differs from
    ``args.num_labels``, evaluation classes that training lacks unless ``args.num_labels`` is given) or images that
    cannot be decoded (unless ``args.skip_bad_images``, which drops them)."""
    datasets = load_image_datasets(
        args.dataset_name,
        args.dataset_config_name,
        args.train_dir,
        args.validation_dir,
        args.test_dir,
        splits={"train": args.train_split, "validation": args.validation_split, "test": args.test_split},
        data_dir=getattr(args, "data_dir", None),
        data_layout=getattr(args, "data_layout", None),
        stage=getattr(args, "recipe_stage", "final"),
    )
    train = datasets["train"]
    image_column = find_column(train, args.image_column_name, IMAGE_COLUMN_GUESSES, "image", "--image_column_name")
    if args.label_column_name is None and not set(LABEL_COLUMN_GUESSES) & set(train.column_names):
        check_class_folders(args.train_dir)  # a single class folder gets no label column: say that instead
    label_column = find_column(train, args.label_column_name, LABEL_COLUMN_GUESSES, "label", "--label_column_name")
    for role, split in datasets.items():
        for column, flag in ((image_column, "--image_column_name"), (label_column, "--label_column_name")):
            if column not in split.column_names:
                raise ValueError(f"The {role} split has no column {column!r} (columns: {split.column_names}); set {flag}.")
        check_images(split, image_column, num_channels)  # the transforms convert them to the backbone's channels
    labels = label_names(datasets, label_column, args.num_labels)
    check_label_coverage(datasets, label_column, labels, args.num_labels)
    datasets = drop_unreadable_images(datasets, (image_column,), args.skip_bad_images)
    return _loaders(args, datasets, image_column, label_column, labels, num_channels)


def _loaders(args, datasets: DatasetDict, image_column: str, label_column: str, labels: list[str], num_channels: int) -> ClassificationData:
    mean, std = image_normalisation(args.model_name_or_path, args.image_normalization)

    def transform(train: bool) -> ImageTransform:
        return ImageTransform(args.transform, args.image_size, mean, std, num_channels=num_channels, train=train,
                              resize=args.resize)

    train_images = TransformedImages(datasets["train"], image_column, label_column, transform(True), seed=args.seed)
    sampler = EpochShuffleSampler(len(train_images), seed=args.seed)
    # The last, shorter batch of an epoch is kept (the released code): ceil(n / batch) batches per epoch.
    train_loader = DataLoader(
        train_images, batch_size=args.per_device_train_batch_size, sampler=sampler, drop_last=False, generator=_private_generator()
    )
    eval_loaders = {
        role: DataLoader(
            TransformedImages(datasets[role], image_column, label_column, transform(False)),
            batch_size=args.per_device_eval_batch_size,
            generator=_private_generator(),
        )
        for role in ("validation", "test")
        if role in datasets
    }
    return ClassificationData(train_loader, eval_loaders, labels, train_images)


def _private_generator() -> torch.Generator:
    """A DataLoader draws a seed each time it starts iterating; from its own generator, that draw leaves the global
    RNG (prompt dropout) alone, so a run resumed mid-epoch sees the same dropout masks as an uninterrupted one."""
    return torch.Generator().manual_seed(0)


def load_image_classifier(model_name_or_path: str, labels: list[str], image_size: Optional[int] = None) -> PreTrainedModel:
    """The backbone with a new classifier (``len(labels)`` outputs, the paper's initialisation): MAE checkpoints
    load into ``ViTForImageClassification`` (transformers has no MAE classification head; ``load_base_model``), timm's
    Hub repos (e.g. ``timm/vit_base_patch16_224.mae``) into ``TimmWrapperForImageClassification``, whose classifier is
    the timm model's ``head``.
    With ``image_size``, one blank image of that size goes through the model first: ``RunStopped`` when the model
    refuses that size, which the first training step would otherwise do."""
    model = load_base_model(model_name_or_path, id2label=dict(enumerate(labels)))
    timm_model = getattr(model, "timm_model", None)
    classifier = timm_model.head if timm_model is not None else getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear):
        raise ValueError(
            f"{model_name_or_path} loads as {type(model).__name__}, which has no classifier: the training scripts need "
            "a checkpoint with an image-classification class in transformers."
        )
    if image_size is not None:
        _check_input_size(model, model_name_or_path, image_size)
    logger.info(f"Loaded {model_name_or_path} ({model.config.model_type}) with a new {len(labels)}-class classifier.")
    init_classifier_(classifier)
    return model


def _check_input_size(model: PreTrainedModel, name: str, image_size: int) -> None:
    channels = getattr(model.config, "num_channels", 3)
    try:
        with torch.no_grad():
            model.eval()(pixel_values=torch.zeros(1, channels, image_size, image_size))
    except (ValueError, RuntimeError) as error:
        made_for = getattr(model.config, "image_size", None)
        fix = f"leave --image_size unset (the backbone's {made_for}) or use a backbone made for {image_size}" if made_for else "use another --image_size"
        raise RunStopped(
            f"--image_size {image_size}: {name} cannot take {image_size}x{image_size} images "
            f"({str(error).splitlines()[0]}); {fix}."
        ) from error


def dry_run_report(args: argparse.Namespace) -> str:
    """``--dry_run``: the run described without training; the model is built only from a local backbone folder."""
    backbone, buildable = backbone_status(args)
    num_train, data = count_train_images(args)
    report = DryRunReport(args, num_train, learning_rate_groups(args), data=data, backbone=backbone)
    classes = args.num_labels
    if classes is None and getattr(args, "data_dir", None):
        from .benchmark_data import DataLayoutError, class_names, read_layout

        try:
            classes = len(class_names(*read_layout(args.data_dir, args.data_layout))) or None
        except DataLayoutError:
            classes = None
    elif classes is None and args.train_dir and Path(args.train_dir).is_dir():
        classes = len([p for p in Path(args.train_dir).iterdir() if p.is_dir()])
    elif classes is None and not args.dataset_name and not args.train_dir:
        classes = 10  # the embedded digits
    if buildable and classes:
        with quiet_loading():
            model = load_image_classifier(args.model_name_or_path, [str(i) for i in range(classes)])
        try:
            _check_input_size(model, args.model_name_or_path, args.image_size or model.config.image_size)
        except RunStopped as stop:
            report.problem = f"WILL FAIL at the first step: {stop}"
        report.trainable = count_parameters(get_peft_model(model, prompt_config(args)))
    return report.format()


def prompt_config(args: argparse.Namespace) -> GatedPromptConfig:
    return GatedPromptConfig(
        num_prompt_tokens=args.num_prompt_tokens,
        prompt_mode=args.prompt_mode,
        gated=args.gated,
        gate_init=args.gate_init,
        learnable_temperature=args.learnable_temperature,
        prompt_dropout=args.prompt_dropout,
        prompt_start_block=args.prompt_start_block,
        head_pooling=args.head_pooling,
    )


def evaluate_accuracy(accelerator: Accelerator, model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` on a prepared ``loader`` (all processes' predictions, duplicates dropped)."""
    metric = load_metric("accuracy")
    was_training = model.training
    model.eval()
    for batch in loader:
        with torch.no_grad():
            logits = model(pixel_values=batch["pixel_values"]).logits
        predictions, references = accelerator.gather_for_metrics((logits.argmax(dim=-1), batch["labels"]))
        metric.add_batch(predictions=predictions, references=references)
    model.train(was_training)
    return metric.compute()["accuracy"]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def best_validation_scores(history: list[dict], has_test: bool) -> dict:
    """What the released code's log derives besides the last epoch: the epoch with the best validation top-1 (the
    earliest on ties), its validation top-1 and, when the test split was evaluated every epoch, the test top-1 at
    that epoch (``test_accuracy_at_best_validation``; None with ``best_validation_note`` saying why otherwise)."""
    scored = [record for record in history if "validation_accuracy" in record]
    if not scored:
        note = "no validation split in this run (VTAB-1k final runs train on train800val200 and have none)"
        return {"test_accuracy_at_best_validation": None, "best_validation_note": note} if has_test else {}
    best = max(scored, key=lambda record: record["validation_accuracy"])  # max keeps the first of equals
    scores = {"best_validation_epoch": best["epoch"], "best_validation_accuracy": best["validation_accuracy"]}
    if has_test:
        scores["test_accuracy_at_best_validation"] = best.get("test_accuracy")
        if best.get("test_accuracy") is None:
            scores["best_validation_note"] = "the test split was not evaluated every epoch (--test_every_epoch false)"
    return scores


def final_split(data: ClassificationData) -> Optional[str]:
    """The split reported as the result: test when present (the paper reports last-epoch test accuracy)."""
    return "test" if "test" in data.eval_loaders else ("validation" if "validation" in data.eval_loaders else None)
