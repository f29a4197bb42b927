"""Training recipes: JSON files holding the paper's settings for one (backbone, task, method).

A recipe file (the repository ships them in ``hub_configs/``) looks like::

    {"task_type": "image-classification",            # or "semantic-segmentation"
     "description": "...", "backbone_source": "...", "data_source": "...",
     "paper": {"table": "Table 5", "reported_top1": 70.56},
     "args": {"model_name_or_path": "...", "data_dir": "data/fgvc/cub", "data_layout": "fgvc", "num_labels": 200, ...},
     "tune_args": {...}}   # optional: arguments replaced for the hyperparameter search (stage "tune")

``args`` uses the training scripts' argument names; ``ARGS`` is the schema (type, allowed values, which task).
``load_recipe`` validates a file and returns its ``args`` mapping, so a script can use it as argparse defaults.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

CLASSIFICATION = "image-classification"
SEGMENTATION = "semantic-segmentation"
TASK_TYPES = (CLASSIFICATION, SEGMENTATION)
RECIPES_DIR = Path(__file__).resolve().parent.parent / "hub_configs"


@dataclass(frozen=True)
class Field:
    """One recipe argument: its kind, what makes a value valid (``hint`` is shown in errors), and its task."""

    kind: Literal["str", "int", "float", "bool", "int_list"]
    hint: str
    valid: Callable[[Any], bool] = lambda value: True
    nullable: bool = False
    task: Optional[str] = None  # None: both task types


def _choice(*options: str, task: Optional[str] = None) -> Field:
    return Field("str", "one of " + ", ".join(repr(o) for o in options), lambda v: v in options, task=task)


def _at_least(kind: Literal["int", "float"], minimum: float, hint: str = "", **kwargs: Any) -> Field:
    noun = "an integer" if kind == "int" else "a number"
    return Field(kind, f"{noun} >= {minimum}{hint}", lambda v: v >= minimum, **kwargs)


def _positive(kind: Literal["int", "float"], hint: str = "", **kwargs: Any) -> Field:
    text = "an integer >= 1" if kind == "int" else "a number > 0"
    return Field(kind, text + hint, lambda v: v > 0, **kwargs)


def _text(hint: str, nullable: bool = True, task: Optional[str] = None) -> Field:
    return Field("str", hint, lambda v: v.strip() != "", nullable=nullable, task=task)


ARGS: dict[str, Field] = {
    # Backbone and data
    "model_name_or_path": _text("a Hub model id or a local directory (transformers format)", nullable=False),
    "dataset_name": _text("a Hub dataset id, or null to read the *_dir folders"),
    "dataset_config_name": _text("the Hub dataset's configuration name, or null"),
    "data_dir": _text("a prepared benchmark folder (see data_layout), or null", task=CLASSIFICATION),
    "data_layout": Field("str", "'vtab1k' (train800.txt, val200.txt, train800val200.txt, test.txt) or 'fgvc' (VPT's "
                         "train.json, val.json, test.json), or null to detect it", lambda v: v in ("vtab1k", "fgvc"),
                         nullable=True, task=CLASSIFICATION),
    "train_dir": _text("a local folder (imagefolder layout: <dir>/<class>/<image>), or null"),
    "validation_dir": _text("a local folder, or null"),
    "test_dir": _text("a local folder, or null"),
    "train_split": _text("a datasets split name such as 'train', or null"),
    "validation_split": _text("a datasets split name, or null"),
    "test_split": _text("a datasets split name, or null"),
    "image_column_name": _text("the image column (imagefolder: 'image')", nullable=False),
    "label_column_name": _text("the label column (imagefolder: 'label')", nullable=False, task=CLASSIFICATION),
    "num_labels": _at_least("int", 2, " (the number of classes)"),
    "transform": _choice("fgvc", "vtab", task=CLASSIFICATION),
    "resize": _choice("pil", "tf_legacy_bilinear", task=CLASSIFICATION),
    "test_every_epoch": Field("bool", "true or false (the released code evaluates test every epoch)", task=CLASSIFICATION),
    "image_size": _positive("int", " (the paper: 224)", task=CLASSIFICATION),
    # The adapter (gated_vpt.GatedPromptConfig)
    "num_prompt_tokens": _positive("int", " (the paper: 1 to 100; per block in deep mode)"),
    "prompt_mode": _choice("shallow", "deep"),
    "gated": Field("bool", "true or false"),
    "gate_init": Field("float", "a number in (0, 50]; gate logits start at -gate_init", lambda v: 0 < v <= 50),
    "learnable_temperature": Field("bool", "true or false"),
    "prompt_dropout": Field("float", "a probability in [0, 1)", lambda v: 0 <= v < 1),
    "prompt_start_block": _at_least("int", 0, " (a block index)"),
    "head_pooling": _choice("auto", "cls", "mean", task=CLASSIFICATION),
    # Optimisation
    "optimizer": _choice("sgd", "adamw"),
    "learning_rate": _positive("float", " (the paper's grid: 0.05 to 5.0 for classification)"),
    "gate_learning_rate": _positive("float", ", or null to use learning_rate", nullable=True),
    "momentum": Field("float", "a number in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": _at_least("float", 0),
    "per_device_train_batch_size": _positive("int"),
    "per_device_eval_batch_size": _positive("int"),
    "gradient_accumulation_steps": _positive("int"),
    "num_train_epochs": _positive("int"),
    "warmup_epochs": _at_least("int", 0),
    "scheduler_step": _choice("epoch", "step"),
    "seed": _at_least("int", 0),
    "output_dir": _text("a directory for checkpoints and results", nullable=False),
    # Semantic segmentation only
    "decoder": _choice("setr_pup", task=SEGMENTATION),
    "aux_blocks": Field(
        "int_list", "a list of distinct block indices >= 0, e.g. [5, 9]",
        lambda v: len(set(v)) == len(v) and all(i >= 0 for i in v), task=SEGMENTATION,
    ),
    "aux_loss_weight": _at_least("float", 0, task=SEGMENTATION),
    "crop_size": _positive("int", " (the paper: 512)", task=SEGMENTATION),
    "ignore_index": Field("int", "an integer label to ignore (ADE20K: 255)", task=SEGMENTATION),
    "reduce_labels": Field("bool", "true when mask value 0 means 'other' (ADE20K): 0 -> ignore_index, k -> k-1",
                           task=SEGMENTATION),
    "mask_column_name": _text("the mask column (local image/mask folders: 'annotation')", nullable=False,
                              task=SEGMENTATION),
    "scheduler": _choice("poly", "cosine", task=SEGMENTATION),
    "poly_power": _positive("float", " (SETR: 0.9)", task=SEGMENTATION),
    "decoder_channels": _positive("int", " (SETR-PUP: 512; 256 for a lighter head)", task=SEGMENTATION),
    "decoder_lr_multiplier": _positive("float", " (SETR: 10, the heads' learning rate over the prompts')", task=SEGMENTATION),
    "min_learning_rate": _at_least("float", 0, " (where the decay ends; SETR's ADE20K: 1e-4)"),
    "image_normalization": _choice("imagenet", "backbone"),
}
# Command-line numbers that recipes do not set, checked like recipe values (``argument_problems``).
RUN_ARGS: dict[str, Field] = {
    "max_train_steps": _positive("int"),
    "eval_every_epochs": _at_least("int", 0, " (0: never)", task=SEGMENTATION),
    "eval_stride": _positive("int", task=SEGMENTATION),
}

REQUIRED_ARGS: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: (
        "model_name_or_path", "num_labels", "transform", "num_prompt_tokens", "prompt_mode", "learning_rate",
        "per_device_train_batch_size", "num_train_epochs",
    ),
    SEGMENTATION: (
        "model_name_or_path", "num_labels", "decoder", "crop_size", "num_prompt_tokens", "prompt_mode",
        "learning_rate", "per_device_train_batch_size", "num_train_epochs",
    ),
}

_PERCENT = Field("float", "a percentage in [0, 100]", lambda v: 0 <= v <= 100)
PAPER_FIELDS: dict[str, Field] = {
    "table": _text("where the values come from, e.g. 'Table 5'", nullable=False),
    "reported_top1": Field("float", "the paper's top-1 % in [0, 100], or null", lambda v: 0 <= v <= 100, nullable=True),
    "vtab_group": _choice("Natural", "Specialized", "Structured"),
    "reported_group_mean_top1": _PERCENT,
    "reported_miou_single_scale": _PERCENT,
    "reported_miou_multi_scale": _PERCENT,
}

TOP_LEVEL = {
    "task_type": "one of " + ", ".join(repr(t) for t in TASK_TYPES),
    "description": "what the recipe trains",
    "paper": "the paper's table and reported numbers",
    "backbone_source": "how to obtain model_name_or_path",
    "backbone": "the checkpoint behind model_name_or_path and the one command that prepares that folder",
    "data_source": "where the data comes from and its splits",
    "args": "the training script's arguments",
    "tune_args": "arguments that replace 'args' for the hyperparameter search (stage='tune')",
}
REQUIRED_TOP_LEVEL = ("task_type", "args")
BACKBONE_FIELDS = {
    "checkpoint": "which published weights the folder is made from, and where to get them",
    "prepare": "the one command that writes the folder (its last word, args.model_name_or_path) from them",
}


@dataclass(frozen=True)
class BackbonePreparation:
    """A recipe's backbone: the local ``folder`` that the one command ``prepare`` writes (its last word; the
    recipe's ``model_name_or_path``), and the ``checkpoint`` it is made from."""

    folder: str
    checkpoint: str
    prepare: str

    @property
    def prepared(self) -> bool:
        return (Path(self.folder) / "config.json").is_file()

    def missing_message(self) -> str:
        return (
            f"The backbone folder {self.folder} does not exist (relative to {Path.cwd()}). This recipe uses "
            f"{self.checkpoint}. Prepare the folder with:\n    {self.prepare}\nor run the recipe on another backbone with "
            "--model_name_or_path (gated-vpt protocol: after --, e.g. protocol ... -- --model_name_or_path <id>)."
        )


def recipe_backbone(path: Union[str, Path]) -> Optional[BackbonePreparation]:
    """The backbone a recipe file names (``load_recipe`` has validated it), or None when it names no preparation
    (e.g. a Hub model id that loads as it is). A run needs the folder when its ``model_name_or_path`` is
    ``folder`` (a copied recipe pointed at another model does not).

    Example:

    ```py
    >>> backbone = recipe_backbone(RECIPES_DIR / "mae-vtab-dtd.json")  # hub_configs/
    >>> backbone.folder, backbone.prepared
    ('backbones/mae-vit-b16', False)
    ```
    """
    recipe = _read_json(Path(path))
    backbone = recipe.get("backbone") if isinstance(recipe, dict) else None
    if not backbone:
        return None
    return BackbonePreparation(backbone["prepare"].split()[-1], backbone["checkpoint"], backbone["prepare"])

Stage = Literal["final", "tune"]


def load_recipe(
    path: Union[str, Path], task_type: Optional[str] = None, stage: Stage = "final"
) -> dict[str, Any]:
    """Read and validate a recipe; return its ``args`` ({argument name: value}).

    ``task_type`` is what the calling script trains: a recipe for another task is refused. ``stage='tune'``
    applies the recipe's ``tune_args`` (arguments replaced for the hyperparameter search; a recipe with ``data_dir``
    needs none, the training script picks that folder's tune splits itself).
    Raises ``ValueError`` naming the file, every invalid field and how to fix it.

    Example:

    ```py
    >>> args = load_recipe(RECIPES_DIR / "mae-fgvc-cub.json", task_type="image-classification")  # hub_configs/
    >>> args["learning_rate"], args["num_prompt_tokens"]
    (0.1, 100)
    ```
    """
    path = Path(path)
    if task_type is not None and task_type not in TASK_TYPES:
        raise ValueError(f"load_recipe(task_type={task_type!r}) is invalid: use one of {TASK_TYPES} or None.")
    if stage not in ("final", "tune"):
        raise ValueError(f"load_recipe(stage={stage!r}) is invalid: use 'final' or 'tune'.")
    recipe = _read_json(path)
    problems = _top_level_problems(recipe)
    if problems:
        _raise(path, problems)
    recipe_task = recipe["task_type"]
    if task_type is not None and recipe_task != task_type:
        raise ValueError(
            f"{path} is a {recipe_task!r} recipe, but this script trains {task_type!r}. Use a {task_type} recipe "
            f"(see {RECIPES_DIR.name}/ and its README) or the training script for {recipe_task}."
        )
    args = recipe["args"]
    problems = _args_problems(args, recipe_task, "args", required=True)
    tune_args = recipe.get("tune_args", {})
    problems += _args_problems(tune_args, recipe_task, "tune_args", required=False)
    problems += _paper_problems(recipe.get("paper", {}))
    if "backbone" in recipe:
        problems += _backbone_problems(recipe["backbone"])
    if not problems:
        problems += _cross_field_problems({**args, **tune_args} if stage == "tune" else args)
    if problems:
        _raise(path, problems)
    return dict({**args, **tune_args} if stage == "tune" else args)


def argument_problems(values: dict[str, Any]) -> list[str]:
    """Problems with the training scripts' argument values (from the command line or a recipe), each naming the flag
    and the valid values: wrong types, non-finite numbers and out-of-range values of every argument in ``ARGS`` and
    ``RUN_ARGS`` (None means "not set" and passes), and a warmup longer than the training.

    Example:

    ```py
    >>> argument_problems({"learning_rate": float("nan"), "momentum": 0.9})
    ["--learning_rate = NaN is not a finite number: use a number > 0 (the paper's grid: 0.05 to 5.0 for classification)"]
    ```
    """
    problems = [
        problem
        for name, value in values.items()
        if value is not None and (field := ARGS.get(name) or RUN_ARGS.get(name)) is not None
        for problem in _value_problems(field, value, f"--{name}")
    ]
    warmup, epochs = values.get("warmup_epochs"), values.get("num_train_epochs")
    if isinstance(warmup, int) and isinstance(epochs, int) and warmup > epochs:
        problems.append(f"--warmup_epochs = {warmup} is larger than --num_train_epochs = {epochs}: shorten the warmup")
    return problems


def list_recipes(directory: Union[str, Path, None] = None) -> list[Path]:
    """The recipe files (``*.json``) in ``directory``, sorted; by default the repository's ``hub_configs/``.

    Example:

    ```py
    >>> [p.name for p in list_recipes()][:2]
    ['mae-ade20k-vpt-deep.json', 'mae-ade20k-vpt-shallow.json']
    ```
    """
    directory = RECIPES_DIR if directory is None else Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"No recipe directory at {directory}. The recipes ship with the source repository (hub_configs/); "
            "clone it, or pass the directory that holds your recipe files."
        )
    return sorted(directory.glob("*.json"))


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"Cannot read recipe {path}: {error}. Pass the path of a recipe JSON file.") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}. Fix the syntax."
        ) from error


def _raise(path: Path, problems: list[str]) -> None:
    raise ValueError(f"Invalid recipe {path}:\n" + "\n".join(f"  - {p}" for p in problems))


def _unknown(name: str, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    fix = f"did you mean {close[0]!r}?" if close else "remove it; known names: " + ", ".join(sorted(known))
    return f"{where}{name!r} is not a known field: {fix}"


def _top_level_problems(recipe: Any) -> list[str]:
    if not isinstance(recipe, dict):
        return [f"the file must hold a JSON object with the fields {', '.join(TOP_LEVEL)}"]
    problems = [_unknown(key, list(TOP_LEVEL), "") for key in recipe if key not in TOP_LEVEL]
    problems += [f"missing field {key!r}: add it ({TOP_LEVEL[key]})" for key in REQUIRED_TOP_LEVEL if key not in recipe]
    if "task_type" in recipe and recipe["task_type"] not in TASK_TYPES:
        problems.append(f"task_type = {recipe['task_type']!r} is invalid: use {TOP_LEVEL['task_type']}")
    for key in ("description", "backbone_source", "data_source"):
        if key in recipe and not isinstance(recipe[key], str):
            problems.append(f"{key} must be a string ({TOP_LEVEL[key]})")
    for key in ("args", "tune_args", "paper", "backbone"):
        if key in recipe and not isinstance(recipe[key], dict):
            problems.append(f"{key} must be a JSON object ({TOP_LEVEL[key]})")
    return problems


def _backbone_problems(backbone: dict) -> list[str]:
    problems = [_unknown(key, list(BACKBONE_FIELDS), "backbone.") for key in backbone if key not in BACKBONE_FIELDS]
    problems += [
        f"backbone.{key} must be a non-empty string ({hint})"
        for key, hint in BACKBONE_FIELDS.items()
        if not isinstance(backbone.get(key), str) or not backbone[key].strip()
    ]
    return problems


def _args_problems(args: dict, task_type: str, where: str, required: bool) -> list[str]:
    problems = []
    for name, value in args.items():
        field = ARGS.get(name)
        if field is None:
            problems.append(_unknown(name, list(ARGS), f"{where}."))
        elif field.task not in (None, task_type):
            problems.append(f"{where}.{name} is a {field.task} argument, not a {task_type} one: remove it")
        else:
            problems += _value_problems(field, value, f"{where}.{name}")
    if required:
        problems += [
            f"missing {where}.{name}: add it ({ARGS[name].hint})" for name in REQUIRED_ARGS[task_type] if name not in args
        ]
    return problems


def _paper_problems(paper: dict) -> list[str]:
    problems = []
    for name, value in paper.items():
        field = PAPER_FIELDS.get(name)
        if field is None:
            problems.append(_unknown(name, list(PAPER_FIELDS), "paper."))
        else:
            problems += _value_problems(field, value, f"paper.{name}")
    return problems


def _value_problems(field: Field, value: Any, where: str) -> list[str]:
    if value is None:
        return [] if field.nullable else [f"{where} is null: use {field.hint}"]
    if not _has_kind(value, field.kind):
        return [f"{where} = {json.dumps(value)} has the wrong type: use {field.hint}"]
    if field.kind == "float" and not math.isfinite(value):
        return [f"{where} = {json.dumps(value)} is not a finite number: use {field.hint}"]
    if not field.valid(value):
        return [f"{where} = {json.dumps(value)} is out of range: use {field.hint}"]
    return []


def _has_kind(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float))
    if kind == "int_list":
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, str)


def _cross_field_problems(args: dict) -> list[str]:
    problems = []
    if args.get("prompt_mode") == "deep" and args.get("gated"):
        problems.append(
            "args.gated = true with prompt_mode 'deep': deep prompts are replaced before every block, so a gate would "
            "never reach the output; set gated to false (the paper's VPT-deep) or prompt_mode to 'shallow'"
        )
    sources = [name for name in ("dataset_name", "data_dir", "train_dir") if args.get(name)]
    if not sources:
        problems.append(
            "no data: set args.data_dir (a prepared benchmark folder), args.dataset_name (a Hub dataset id) or "
            "args.train_dir (a local image folder)"
        )
    elif len(sources) > 1:
        problems.append(f"args sets {' and '.join(sources)}: keep one data source, set the others to null")
    if args.get("data_layout") and not args.get("data_dir"):
        problems.append("args.data_layout is set without args.data_dir: add the folder or drop the layout")
    if args.get("warmup_epochs", 0) > args.get("num_train_epochs", 0):
        problems.append("args.warmup_epochs is larger than args.num_train_epochs: shorten the warmup")
    return problems
