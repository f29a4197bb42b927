"""``--dry_run``: what a run would do, printed without training (and without downloading anything).

The report names the recipe and stage, the backbone (the recipe's source checkpoint, whether the prepared folder
exists and the command that prepares it), the data found, the optimizer updates per epoch, the learning rate of
every parameter group at each epoch, and the trainable parameters (counted on the model built from a local
backbone folder; unknown while the folder is missing).

Example:

```py
report = DryRunReport(args, num_train_images=800, groups={"all": 0.5})
report.trainable = (1941, 1220127)
print(report.format())
```
"""

from __future__ import annotations

import argparse
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from .data import EMBEDDED_SPLIT_SIZES, image_files
from .loop import updates_per_epoch
from .optim import build_scheduler


def learning_rate_groups(args: argparse.Namespace, head_lr_multiplier: float = 1.0) -> dict[str, float]:
    """The starting learning rate of every optimizer group a run builds (the names of ``optim.parameter_groups``)."""
    gated = args.gate_learning_rate is not None
    groups = {"others" if gated or head_lr_multiplier != 1 else "all": args.learning_rate}
    if gated:
        groups["gates"] = args.gate_learning_rate
    if head_lr_multiplier != 1:
        groups["heads"] = args.learning_rate * head_lr_multiplier
    return groups


def learning_rates_per_epoch(
    args: argparse.Namespace, groups: dict[str, float], updates: int, decay: str = "cosine", power: float = 0.9
) -> list[dict[str, float]]:
    """The learning rate of each group at the start of every epoch, from the run's own scheduler."""
    parameters = [torch.nn.Parameter(torch.zeros(())) for _ in groups]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(parameters, groups.values())], lr=1.0)
    scheduler = build_scheduler(
        optimizer, args.num_train_epochs, args.warmup_epochs, updates, args.scheduler_step, decay, power,
        args.min_learning_rate,
    )
    steps_per_epoch = updates if args.scheduler_step == "step" else 1
    rates = []
    for _ in range(args.num_train_epochs):
        rates.append({name: group["lr"] for name, group in zip(groups, optimizer.param_groups)})
        for _ in range(steps_per_epoch):
            optimizer.step()
            scheduler.step()
    return rates


def count_train_images(args: argparse.Namespace) -> tuple[Optional[int], str]:
    """The number of training images (None when it cannot be known without loading a Hub data set) and where
    they come from."""
    if getattr(args, "dataset_name", None):
        return None, f"Hub data set {args.dataset_name} (split {args.train_split!r}; not loaded in a dry run)"
    if getattr(args, "data_dir", None):
        from .benchmark_data import STAGE_SPLITS, DataLayoutError, read_layout

        try:
            layout, splits = read_layout(args.data_dir, args.data_layout)
        except DataLayoutError as error:
            return None, f"MISSING OR MALFORMED: {error}"
        roles = STAGE_SPLITS[layout][args.recipe_stage]
        counts = ", ".join(f"{role} = {name} ({len(splits[name].images)} images)" for role, name in roles.items())
        problems = sum(len(s.problems) for s in splits.values())
        status = f"; {problems} problems, see gated-vpt data check {args.data_dir}" if problems else ""
        return len(splits[roles["train"]].images), f"{args.data_dir} ({layout} layout): {counts}{status}"
    if args.train_dir:
        folder = Path(args.train_dir)
        if not folder.is_dir():
            return None, f"{folder}: MISSING"
        found = len(image_files(folder))
        return found, f"{folder}: {found} images"
    return EMBEDDED_SPLIT_SIZES["train"], "the embedded digits (800 train / 200 validation / 797 test)"


@dataclass
class DryRunReport:
    """The pieces of a dry run's printout; ``format`` lays them out."""

    args: argparse.Namespace
    num_train_images: Optional[int]
    groups: dict[str, float]
    data: str = ""
    decay: str = "cosine"
    power: float = 0.9
    trainable: Optional[tuple[int, int]] = None
    backbone: str = ""
    problem: str = ""  # what would stop the run, found by building the model

    def updates_per_epoch(self) -> Optional[int]:
        if self.num_train_images is None:
            return None
        batches = math.ceil(self.num_train_images / self.args.per_device_train_batch_size)  # the last batch is kept
        return updates_per_epoch(batches, self.args.gradient_accumulation_steps)

    def format(self) -> str:
        args = self.args
        lines = ["Dry run: nothing is trained or written."]
        if args.config:
            lines.append(f"recipe: {args.config} (stage {args.recipe_stage})")
        lines.append(f"backbone: {self.backbone or args.model_name_or_path}")
        lines.append(f"data: {self.data}")
        updates = self.updates_per_epoch()
        if updates is None:
            lines.append(
                f"updates per epoch: unknown until the data is loaded (batch {args.per_device_train_batch_size}, "
                f"accumulation {args.gradient_accumulation_steps})"
            )
        else:
            lines.append(
                f"updates per epoch: {updates} (ceil({self.num_train_images} / {args.per_device_train_batch_size}) "
                f"batches on one process, accumulation {args.gradient_accumulation_steps}; the last batch is kept)"
            )
        rates = learning_rates_per_epoch(args, self.groups, updates or 1, self.decay, self.power)
        lines.append(
            f"learning rate per epoch ({args.optimizer}, {self.decay} decay stepped per {args.scheduler_step}, "
            f"{args.warmup_epochs} warmup epochs, {args.num_train_epochs} epochs"
            + ("" if args.scheduler_step == "epoch" or updates else "; per-update steps assume 1 update per epoch")
            + "):"
        )
        for name in self.groups:
            lines.append(f"  {name}: " + " ".join(f"{epoch}:{rate[name]:.4g}" for epoch, rate in enumerate(rates)))
        if self.trainable is None:
            lines.append("trainable parameters: unknown until the backbone folder is prepared")
        else:
            trainable, total = self.trainable
            lines.append(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
        settings = ", ".join(f"{k}={v}" for k, v in sorted(vars(args).items()))
        lines.append(f"arguments: {settings}")
        if self.problem:
            lines.append(self.problem)
        return "\n".join(lines)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' load reports and warnings off while a dry run builds the model only to count parameters."""
    import transformers

    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()


def backbone_status(args: argparse.Namespace) -> tuple[str, bool]:
    """A line on the backbone (for a recipe's local folder: the checkpoint, whether the folder is prepared and the
    command that prepares it) and whether the model can be built from what is here without downloading."""
    from gated_vpt.recipes import recipe_backbone

    name = args.model_name_or_path
    backbone = recipe_backbone(args.config) if args.config else None
    if backbone is not None and name == backbone.folder:
        if backbone.prepared:
            return f"{name} (prepared; from {backbone.checkpoint})", True
        return f"{name} NOT PREPARED: made from {backbone.checkpoint}; prepare it with: {backbone.prepare}", False
    if name is None:
        return "the built-in tiny random ViT (--quick)", True
    if Path(name).is_dir():
        return f"{name} (local folder)", True
    return f"{name} (a Hub model id: not downloaded in a dry run)", False
