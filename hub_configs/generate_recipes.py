"""Writes every recipe in hub_configs/ from the paper's numbers below; this file is their single source.

    python hub_configs/generate_recipes.py          # (re)write the JSON files
    python hub_configs/generate_recipes.py --check  # exit 1 if a file differs from what would be written

The training scripts read only the JSON files (through ``gated_vpt.recipes.load_recipe``); tests/test_recipes.py
checks that the files match this script and, independently, the paper's Table 5.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the tasks and the paper's numbers come from the package in this checkout

from gated_vpt.training.paper_benchmarks import (  # noqa: E402
    DEEP_PROMPTS_PER_BLOCK,
    FGVC_TASKS,
    METHODS,
    PAPER_FGVC,
    PAPER_VTAB1K,
    VTAB1K_TASKS,
    VTAB_GROUPS,
    BenchmarkTask,
    method_args,
)

MAE_DIR = "backbones/mae-vit-b16"
MAE_HUB = "timm/vit_base_patch16_224.mae"
MOCOV3_DIR = "backbones/mocov3-vit-b16-linear"
MOCOV3_URL = "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/linear-vit-b-300ep.pth.tar"

BACKBONES: dict[str, dict[str, str]] = {
    "mae": {
        "name": "MAE ViT-B/16",
        "model_name_or_path": MAE_DIR,
        "head_pooling": "mean",
        "checkpoint": (
            "MAE ViT-B/16 pretraining weights (mae_pretrain_vit_base.pth, ImageNet-1k, normalised-pixel loss, "
            f"CC-BY-NC), as safetensors with timm's names in the Hub repo {MAE_HUB}"
        ),
        "prepare": f"gated-vpt convert --model_type mae {MAE_HUB} {MAE_DIR}",
        "source": (
            "The paper's MAE backbone is the pretraining checkpoint mae_pretrain_vit_base.pth, not the Hub's "
            f"facebook/vit-mae-base (very likely the visualisation checkpoint, trained without the normalised-pixel "
            f"loss). timm's Hub repo {MAE_HUB} holds the pretraining weights as safetensors; the converter maps "
            f"them to transformers' ViT (the decoder is not part of it) in {MAE_DIR} (relative to the working "
            "directory). From the official file instead: gated-vpt convert --model_type mae --trust_checkpoint "
            f"mae_pretrain_vit_base.pth {MAE_DIR} (a pickle, read with torch.load(weights_only=True)). head_pooling "
            "'mean' gives the paper's MAE head: the pretrained final LayerNorm on the mean of all non-CLS tokens, "
            "prompts included."
        ),
    },
    "mocov3": {
        "name": "MoCo v3 ViT-B/16",
        "model_name_or_path": MOCOV3_DIR,
        "head_pooling": "cls",
        "checkpoint": (
            f"MoCo v3 ViT-B/16 (300 epochs, ImageNet-1k) linear-probe checkpoint linear-vit-b-300ep.pth.tar; download "
            f"it first from {MOCOV3_URL}"
        ),
        "prepare": f"gated-vpt convert --model_type mocov3 --trust_checkpoint --drop_head linear-vit-b-300ep.pth.tar {MOCOV3_DIR}",
        "source": (
            "No transformers checkpoint of MoCo v3 is on the Hub. Download the official linear-probe checkpoint "
            f"({MOCOV3_URL}, ViT-B/16, 300 epochs, ImageNet-1k) and convert it (the file is a pickle: the converter "
            "loads it with torch.load(weights_only=True), tensors and plain containers only) into "
            f"{MOCOV3_DIR} (relative to the working directory); --drop_head leaves out the ImageNet classifier so "
            "any num_labels loads cleanly."
        ),
    },
}

# Paper Table 5: slug -> backbone -> (batch size, prompt tokens, learning rate, gate_init).
TABLE5: dict[str, dict[str, tuple[int, int, float, float]]] = {
    "caltech101": {"mae": (128, 1, 0.5, 5), "mocov3": (128, 10, 2.5, 4)},
    "cifar100": {"mae": (128, 1, 0.25, 5), "mocov3": (128, 10, 1.0, 15)},
    "clevr-dist": {"mae": (128, 1, 0.1, 15), "mocov3": (128, 5, 1.0, 10)},
    "clevr-count": {"mae": (128, 1, 0.05, 15), "mocov3": (128, 5, 0.5, 5)},
    "retinopathy": {"mae": (128, 5, 0.05, 10), "mocov3": (128, 5, 0.5, 5)},
    "dmlab": {"mae": (128, 1, 0.1, 5), "mocov3": (128, 1, 1.0, 5)},
    "dsprites-ori": {"mae": (128, 1, 0.05, 5), "mocov3": (128, 5, 0.5, 5)},
    "dsprites-loc": {"mae": (128, 1, 0.1, 5), "mocov3": (128, 5, 0.5, 5)},
    "dtd": {"mae": (128, 1, 0.25, 1), "mocov3": (128, 10, 1.0, 5)},
    "eurosat": {"mae": (128, 5, 0.1, 1), "mocov3": (128, 10, 1.0, 5)},
    "kitti-dist": {"mae": (128, 5, 0.1, 7), "mocov3": (128, 5, 1.0, 5)},
    "flowers102": {"mae": (128, 1, 0.25, 5), "mocov3": (128, 5, 1.0, 7)},
    "pets": {"mae": (128, 1, 0.5, 10), "mocov3": (64, 100, 1.0, 1)},
    "camelyon": {"mae": (128, 1, 0.05, 5), "mocov3": (128, 1, 1.0, 10)},
    "resisc45": {"mae": (128, 10, 0.25, 5), "mocov3": (64, 100, 1.0, 7)},
    "smallnorb-azim": {"mae": (128, 1, 0.1, 20), "mocov3": (128, 10, 0.5, 3)},
    "smallnorb-elev": {"mae": (128, 1, 0.05, 10), "mocov3": (128, 5, 0.5, 4)},
    "sun397": {"mae": (128, 1, 0.5, 10), "mocov3": (128, 1, 1.0, 4)},
    "svhn": {"mae": (128, 1, 0.1, 10), "mocov3": (128, 5, 1.0, 10)},
    "cub": {"mae": (64, 100, 0.1, 5), "mocov3": (64, 100, 1.0, 5)},
    "flowers": {"mae": (64, 100, 0.1, 15), "mocov3": (64, 100, 1.0, 10)},
    "cars": {"mae": (64, 100, 0.25, 5), "mocov3": (64, 100, 0.5, 5)},
    "dogs": {"mae": (64, 100, 0.5, 15), "mocov3": (64, 100, 0.5, 10)},
    "nabirds": {"mae": (64, 100, 0.5, 5), "mocov3": (64, 100, 1.0, 5)},
    "ade20k": {"mae": (16, 100, 0.001, 10), "mocov3": (16, 100, 0.001, 10)},
}

ADE20K_MIOU = {
    "mae": {"vpt-shallow": (34.20, 35.23), "vpt-deep": (37.76, 38.80), "gated": (38.44, 39.81)},
    "mocov3": {"vpt-shallow": (34.55, 36.18), "vpt-deep": (35.50, 37.15), "gated": (36.81, 38.55)},
}
# Baselines get a recipe on every FGVC task, ADE20K and this VTAB task.
BASELINE_VTAB_TASKS = ("cifar100",)

PAPER_RECIPE = {
    "image_normalization": "imagenet",
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 0.0,
    "gradient_accumulation_steps": 1,
    "prompt_dropout": 0.1,
    "prompt_start_block": 0,
    "seed": 0,
}
ADE20K_TRAIN_IMAGES = 20210
SETR_ITERATIONS = 160_000


METHOD_TITLES = {
    "gated": "Gated prompt tuning (shallow prompts, one gate per block, learnable attention temperature)",
    "vpt-shallow": "Baseline VPT-shallow (shallow prompts, no gates, no temperature)",
    "vpt-deep": f"Baseline VPT-deep ({DEEP_PROMPTS_PER_BLOCK} fresh prompts before every block, no gates, no temperature)",
}


def baseline_note(method: str, backbone: str, task: str) -> str:
    """Where a baseline's hyperparameters come from (the paper lists the gated method's only)."""
    if method == "gated":
        return ""
    batch, _, lr, _ = TABLE5[task][backbone]
    return (
        f" Table 5 lists the gated method's settings only; this baseline reuses its batch size {batch} and learning "
        f"rate {lr}, so search the learning rate again (the paper's grid) for a faithful baseline."
    )


def recipe_name(backbone: str, family: str, task: str, method: str) -> str:
    stem = f"{backbone}-{family}-{task}" if family else f"{backbone}-{task}"
    return stem if method == "gated" else f"{stem}-{method}"


def classification_recipe(backbone: str, family: str, task: BenchmarkTask, method: str) -> tuple[str, dict[str, Any]]:
    batch, prompts, lr, gate_init = TABLE5[task.slug][backbone]
    name = recipe_name(backbone, family, task.slug, method)
    spec = BACKBONES[backbone]
    title, classes = task.title, task.classes
    if family == "vtab":
        root = f"data/vtab-1k/{task.folder}"
        data_args = {"data_dir": root, "data_layout": "vtab1k"}
        data = (
            f"VTAB-1k {title} ({classes} classes) in the widely shared preprocessed layout: {root} holds train800.txt, "
            "val200.txt, train800val200.txt and test.txt, one '<relative/image/path> <label>' per line (the folder "
            "names of the shared vtab-1k archive; it can also be made from TFDS with VTAB-1k's split definitions). "
            "VPT's protocol (gated-vpt protocol runs it): --recipe_stage tune trains on train800 and compares "
            "learning rates on val200; the final runs (these args) train on train800val200 and report the last "
            "epoch's top-1 on test, averaged over 5 seeds (gated-vpt protocol --paper_rates: once at this recipe's "
            "rate with seed 42, as the released run.sh). Images are resized as the released code does (TensorFlow "
            "v1's legacy bilinear on float pixels, resize tf_legacy_bilinear)."
            + (" Some of the 397 classes are absent from the 1,000 training images; with num_labels given the run "
               "trains the full head and scores their test images as usual." if task.slug == "sun397" else "")
            + f" Check the folder first: gated-vpt data check {root} --recipe hub_configs/{name}.json"
        )
        index = VTAB_GROUPS.index(task.group)
        paper = {
            "table": "Table 5 (hyperparameters); VTAB-1k results table (per-task top-1 not transcribed here)",
            "reported_top1": None,
            "vtab_group": task.group,
            "reported_group_mean_top1": PAPER_VTAB1K[backbone][method][index],
        }
    else:
        root = f"data/fgvc/{task.folder}"
        data_args = {"data_dir": root, "data_layout": "fgvc"}
        data = (
            f"{title} ({classes} classes) in VPT's FGVC layout: {root} holds VPT's split files train.json, val.json "
            "and test.json ({\"<image path>\": <class id>}) and the official images, the paths relative to the "
            "folder or to its images/ or Images/ subfolder. train and val split the official training set (VPT holds "
            "out 10% as val; Flowers: the official 1020/1020 train/val), test = the official test set. As in VPT's "
            "code both stages train on train: tune compares learning rates on val, the final runs report the last "
            "epoch's top-1 on test, averaged over 5 seeds; test is evaluated every epoch as in the released code, so "
            "metrics.json also gives the test top-1 at the best val epoch. Check the folder first: gated-vpt data "
            f"check {root} --recipe hub_configs/{name}.json"
        )
        index = FGVC_TASKS.index(task)
        paper = {
            "table": "Table 5 (hyperparameters); FGVC results table (top-1)",
            "reported_top1": PAPER_FGVC[backbone][method][index],
        }
    args: dict[str, Any] = {
        "model_name_or_path": spec["model_name_or_path"],
        **data_args,
        "image_column_name": "image",
        "label_column_name": "label",
        "num_labels": classes,
        "transform": family,
        # the released code: VTAB images through TensorFlow v1's resize; FGVC through torchvision (Pillow), with the
        # test split evaluated every epoch next to val (its log derives the test top-1 at the best val epoch)
        **({"resize": "tf_legacy_bilinear"} if family == "vtab" else {"resize": "pil", "test_every_epoch": True}),
        "image_size": 224,
        **method_args(method, prompts, gate_init),
        **PAPER_RECIPE,
        "head_pooling": spec["head_pooling"],
        "learning_rate": lr,
        "gate_learning_rate": None,
        "per_device_train_batch_size": batch,
        "per_device_eval_batch_size": batch,
        "num_train_epochs": 100,
        "warmup_epochs": 10,
        "scheduler_step": "epoch",
        "output_dir": f"outputs/{name}",
    }
    recipe = {
        "task_type": "image-classification",
        "description": (
            f"{METHOD_TITLES[method]} on {title} ({'VTAB-1k' if family == 'vtab' else 'FGVC'}) with "
            f"{spec['name']}. SGD momentum 0.9, no weight decay, learning rate as given (no batch scaling), 10 "
            "warmup epochs then cosine to 0 at epoch 100, stepped per epoch; the batch size is the global one "
            "(divide it over processes)." + baseline_note(method, backbone, task.slug)
        ),
        "paper": paper,
        "backbone_source": spec["source"],
        "backbone": {"checkpoint": spec["checkpoint"], "prepare": spec["prepare"]},
        "data_source": data,
        "args": args,
    }
    return name, recipe


def segmentation_recipe(backbone: str, method: str) -> tuple[str, dict[str, Any]]:
    batch, prompts, lr, gate_init = TABLE5["ade20k"][backbone]
    name = recipe_name(backbone, "", "ade20k", method)
    spec = BACKBONES[backbone]
    epochs = round(SETR_ITERATIONS * batch / ADE20K_TRAIN_IMAGES)
    single, multi = ADE20K_MIOU[backbone][method]
    args: dict[str, Any] = {
        "model_name_or_path": spec["model_name_or_path"],
        "train_dir": "data/ade20k/training",
        "validation_dir": "data/ade20k/validation",
        "image_column_name": "image",
        "num_labels": 150,
        "ignore_index": 255,
        "reduce_labels": True,
        "crop_size": 512,
        "decoder": "setr_pup",
        "aux_blocks": [5, 9],
        "aux_loss_weight": 0.4,
        "decoder_channels": 512,
        **method_args(method, prompts, gate_init),
        **PAPER_RECIPE,
        "learning_rate": lr,
        "gate_learning_rate": None,
        "decoder_lr_multiplier": 10.0,
        "per_device_train_batch_size": batch,
        "per_device_eval_batch_size": 1,
        "num_train_epochs": epochs,
        "warmup_epochs": 0,
        "scheduler": "poly",
        "poly_power": 0.9,
        "min_learning_rate": 1e-4,
        "scheduler_step": "step",
        "output_dir": f"outputs/{name}",
    }
    recipe = {
        "task_type": "semantic-segmentation",
        "description": (
            f"{METHOD_TITLES[method]} on ADE20K with {spec['name']} and a SETR-PUP decoder (512 channels), auxiliary "
            "heads on the outputs of blocks 5 and 9 (0-based; loss weight 0.4, SETR's), random resize-crop 512. SGD "
            "momentum 0.9, no weight decay, the heads at 10x the learning rate, polynomial decay (power 0.9) to 1e-4 "
            f"stepped per iteration; {epochs} epochs ~ SETR's {SETR_ITERATIONS:,} iterations at "
            f"batch {batch} over {ADE20K_TRAIN_IMAGES:,} training images." + baseline_note(method, backbone, "ade20k")
        ),
        "paper": {
            "table": "Table 5 (hyperparameters); ADE20K results table (mIoU)",
            "reported_miou_single_scale": single,
            "reported_miou_multi_scale": multi,
        },
        "backbone_source": spec["source"],
        "backbone": {"checkpoint": spec["checkpoint"], "prepare": spec["prepare"]},
        "data_source": (
            "ADE20K SceneParsing (ADEChallengeData2016: 20,210 training and 2,000 validation images, 150 classes) as "
            "image/mask pairs data/ade20k/<split>/images/<name>.jpg and data/ade20k/<split>/annotations/<name>.png "
            "for the splits training and validation (links to the official images/<split> and annotations/<split> "
            "folders). Mask value 0 ('other') is ignored (ignore_index 255) and 1..150 become classes 0..149; "
            "mIoU is measured on validation."
        ),
        "args": args,
    }
    return name, recipe


def all_recipes() -> dict[str, dict[str, Any]]:
    """Every recipe, by file name."""
    recipes = {}
    for backbone in BACKBONES:
        for method in METHODS:
            baseline = method != "gated"
            for task in VTAB1K_TASKS:
                if not baseline or task.slug in BASELINE_VTAB_TASKS:
                    name, recipe = classification_recipe(backbone, "vtab", task, method)
                    recipes[f"{name}.json"] = recipe
            for task in FGVC_TASKS:
                name, recipe = classification_recipe(backbone, "fgvc", task, method)
                recipes[f"{name}.json"] = recipe
            name, recipe = segmentation_recipe(backbone, method)
            recipes[f"{name}.json"] = recipe
    return recipes


def render(recipe: dict[str, Any]) -> str:
    return json.dumps(recipe, indent=2) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare the files with what would be written")
    parser.add_argument("--directory", type=Path, default=HERE, help="where the recipe files live (default: here)")
    args = parser.parse_args(argv)
    recipes = all_recipes()
    stale = [n for n, r in recipes.items() if not (args.directory / n).is_file() or (args.directory / n).read_text() != render(r)]
    extra = sorted(p.name for p in args.directory.glob("*.json") if p.name not in recipes)
    if args.check:
        for name in stale:
            print(f"out of date: {name}", file=sys.stderr)
        for name in extra:
            print(f"not made by this script: {name}", file=sys.stderr)
        return 1 if stale or extra else 0
    for name in stale:
        (args.directory / name).write_text(render(recipes[name]))
    print(f"wrote {len(stale)} of {len(recipes)} recipes to {args.directory}" + (f"; extra files: {extra}" if extra else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
