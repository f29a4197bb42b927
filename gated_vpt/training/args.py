"""Command-line arguments shared by the training scripts, and recipe files as argument defaults.

The argument names (argparse ``dest``) are the recipe keys of ``gated_vpt.recipes``. A recipe given with
``--config`` replaces the defaults; flags on the command line still override it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence, Union

from gated_vpt.tokens import refuse_token_options, token_argument

from .resize import RESIZE_METHODS

# Settings that do not change what a run computes; everything else must match to resume a checkpoint.
NON_SEMANTIC_ARGS = (
    "config", "output_dir", "resume_from_checkpoint", "checkpointing_steps", "save_total_limit", "max_train_steps",
    "with_tracking", "report_to", "push_to_hub", "hub_model_id", "per_device_eval_batch_size",
    "gradient_checkpointing", "torch_compile", "dry_run", "stop_signals",
)


def parse_bool(text: Union[str, bool]) -> bool:
    """argparse type for true/false flags: 1/true/yes or 0/false/no (any case)."""
    if isinstance(text, bool):
        return text
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, except where its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return super()._get_help_string(action)


def _checkpointing_steps(text: Union[str, int, None]) -> Union[str, int, None]:
    if text is None or text == "epoch" or isinstance(text, int):
        return text
    if text.lower() == "none":
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 'epoch', 'none' or a positive number of optimizer updates, got {text!r}")


def _save_total_limit(text: Union[str, int, None]) -> Optional[int]:
    if text is None or isinstance(text, int):
        return text
    if text.lower() == "none":
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a positive number of checkpoints or 'none' (keep all), got {text!r}")


def _signal_names(text: str) -> tuple[str, ...]:
    import signal

    names = tuple(dict.fromkeys(v.strip().upper().removeprefix("SIG") for v in text.split(",") if v.strip()))
    unknown = [n for n in names if n in ("KILL", "STOP") or not isinstance(getattr(signal, f"SIG{n}", None), signal.Signals)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected signal names such as USR2,TERM, got {text!r}")
    return names


def add_model_args(parser: argparse.ArgumentParser, default_model: Optional[str]) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model_name_or_path", default=default_model,
                       help="A Hub model id or a local directory in transformers format (default: the embedded tiny MAE).")


def add_data_args(parser: argparse.ArgumentParser, layouts: bool = False) -> argparse._ArgumentGroup:
    """The data source flags; ``layouts`` adds ``--data_dir`` / ``--data_layout`` (the paper's benchmark folders).
    Returns the group, for a script's own data flags."""
    group = parser.add_argument_group("data (default: the embedded digits, split 800/200/797)")
    if layouts:
        group.add_argument("--data_dir", default=None,
                           help="A prepared benchmark folder, e.g. data/vtab-1k/dtd; --recipe_stage picks its splits "
                                "(tune: train800/val200 or train/val; final: train800val200/test or train/val/test).")
        group.add_argument("--data_layout", choices=("vtab1k", "fgvc"), default=None,
                           help="Layout of --data_dir (default: detected from its split files). See docs/RECIPES.md.")
    group.add_argument("--dataset_name", default=None, help="A Hub data set id.")
    group.add_argument("--dataset_config_name", default=None, help="The Hub data set's configuration.")
    group.add_argument("--train_dir", default=None, help="A local image folder (<dir>/<class>/<image>) for training.")
    group.add_argument("--validation_dir", default=None, help="A local image folder for validation.")
    group.add_argument("--test_dir", default=None, help="A local image folder for the final test.")
    group.add_argument("--train_split", default="train", help="Split of --dataset_name used for training.")
    group.add_argument("--validation_split", default="validation",
                       help="Split evaluated after every epoch (skipped when the data set has none).")
    group.add_argument("--test_split", default="test", help="Split evaluated at the end (skipped when absent).")
    group.add_argument("--image_column_name", default=None, help="Image column (default: 'image' or 'img').")
    group.add_argument("--label_column_name", default=None, help="Label column (default: 'label' or 'labels').")
    group.add_argument("--num_labels", type=int, default=None,
                       help="Number of classes; checked against the data set (default: taken from it).")
    group.add_argument("--skip_bad_images", action="store_true",
                       help="Drop images that cannot be decoded (counted in a warning) instead of refusing to start.")
    group.add_argument("--image_normalization", choices=("backbone", "imagenet"), default="backbone",
                       help="Mean/std: the backbone's preprocessor_config.json, or ImageNet's fixed values (the paper's "
                            "recipes).")
    return group


def add_transform_args(group: argparse._ArgumentGroup) -> None:
    """The classification transform flags (``data.ImageTransform``), added to the data group."""
    group.add_argument("--transform", choices=("fgvc", "vtab"), default="vtab",
                       help="'fgvc': resize, random crop, flip (VPT's FGVC); 'vtab': resize only (VTAB-1k).")
    group.add_argument("--resize", choices=RESIZE_METHODS, default="pil",
                       help="'pil': Pillow's bilinear on uint8 (antialiased when shrinking); 'tf_legacy_bilinear': "
                            "TensorFlow v1's legacy bilinear on float pixels, as the released code resizes VTAB images "
                            "(the VTAB-1k recipes).")
    group.add_argument("--image_size", type=int, default=None, help="Input size (default: the backbone's).")


def add_prompt_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method (gated_vpt.GatedPromptConfig)")
    group.add_argument("--num_prompt_tokens", type=int, default=5, help="Prompt tokens inserted.")
    group.add_argument("--prompt_mode", choices=("shallow", "deep"), default="shallow",
                       help="'shallow': prompts inserted once; 'deep': fresh prompts before every block (VPT-deep).")
    group.add_argument("--gated", type=parse_bool, default=None, help="true/false (default: true for shallow prompts).")
    group.add_argument("--gate_init", type=float, default=5.0, help="Gate logits start at -gate_init.")
    group.add_argument("--learnable_temperature", type=parse_bool, default=None,
                       help="true/false (default: true for shallow prompts).")
    group.add_argument("--prompt_dropout", type=float, default=0.1, help="Dropout on the prompts only.")
    group.add_argument("--prompt_start_block", type=int, default=0, help="Block where the prompts are inserted.")
    group.add_argument("--head_pooling", choices=("auto", "cls", "mean"), default="auto",
                       help="'auto': the paper's head per backbone (README's backbone table: mean pooling for MAE, I-JEPA "
                       "and heads that average the tokens, CLS otherwise).")


def add_optimization_args(parser: argparse.ArgumentParser, learning_rate: float, batch_size: int, epochs: int) -> None:
    group = parser.add_argument_group("optimisation (the paper: SGD, momentum 0.9, no weight decay, warmup + cosine per epoch)")
    group.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="Optimizer.")
    group.add_argument("--learning_rate", type=float, default=learning_rate, help="Used as given (no batch-size scaling).")
    group.add_argument("--gate_learning_rate", type=float, default=None,
                       help="Learning rate of the gate logits (default: --learning_rate). See docs/TRAINING.md.")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum.")
    group.add_argument("--weight_decay", type=float, default=0.0, help="Weight decay (gates: none).")
    group.add_argument("--per_device_train_batch_size", type=int, default=batch_size, help="Training batch per process.")
    group.add_argument("--per_device_eval_batch_size", type=int, default=256, help="Evaluation batch per process.")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches per optimizer update.")
    group.add_argument("--num_train_epochs", type=int, default=epochs, help="Training epochs.")
    group.add_argument("--warmup_epochs", type=int, default=10, help="Linear warmup from 0 over this many epochs.")
    group.add_argument("--min_learning_rate", type=float, default=0.0,
                       help="Where the decay ends, for every parameter group (SETR's ADE20K: 1e-4).")
    group.add_argument("--scheduler_step", choices=("epoch", "step"), default="epoch",
                       help="Step the schedule once per epoch (the paper) or once per optimizer update.")
    group.add_argument("--seed", type=int, default=0, help="Seed of the prompts, the head, data order and dropout.")


def add_run_args(parser: argparse.ArgumentParser, default_output_dir: str) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--output_dir", default=default_output_dir, help="Where the adapter, results and checkpoints go.")
    group.add_argument("--checkpointing_steps", type=_checkpointing_steps, default="epoch",
                       help="'epoch' (a checkpoint after every epoch), N (also one every N optimizer updates) or "
                            "'none' (no checkpoints).")
    group.add_argument("--save_total_limit", type=_save_total_limit, default=2,
                       help="Checkpoints kept in --output_dir, the newest; older ones are deleted (never the one the "
                            "run resumed from). 'none' keeps all.")
    group.add_argument("--resume_from_checkpoint", default=None,
                       help="A checkpoint directory, or 'latest' for the latest one in --output_dir.")
    group.add_argument("--max_train_steps", type=int, default=None,
                       help="Stop after this many optimizer updates without writing results (the schedule still spans "
                            "--num_train_epochs, so the run can be resumed from its last checkpoint).")
    group.add_argument("--stop_signals", type=_signal_names, default=(),
                       help="Signal names, e.g. USR2,TERM: on one of them, save a checkpoint after the current optimizer "
                            "update and exit with status 3 (what a scheduler's job needs before its time limit or a "
                            "pre-emption; `gated-vpt protocol --cluster` sets it). Default: none, signals act as usual.")
    group.add_argument("--with_tracking", action="store_true", help="Log to Accelerate's trackers.")
    group.add_argument("--report_to", default="tensorboard", help="Trackers for --with_tracking ('all', 'tensorboard', ...).")
    group.add_argument("--push_to_hub", action="store_true",
                       help="Upload the adapter to --hub_model_id at the end (token: HF_TOKEN or `hf auth login`).")
    group.add_argument("--hub_model_id", default=None, help="The Hub repo for --push_to_hub, e.g. <user>/<name>.")
    refuse_token_options(group, "--hub_token", "--token")  # the Hub token: HF_TOKEN or `hf auth login`
    group.add_argument("--gradient_checkpointing", action="store_true",
                       help="Recompute the frozen blocks in the backward pass (less memory).")
    group.add_argument("--torch_compile", action="store_true", help="Compile the model with torch.compile (inductor).")
    group.add_argument("--dry_run", action="store_true",
                       help="Print the resolved run (backbone and whether it is prepared, data, updates per epoch, "
                            "learning rate per epoch, trainable parameters) and exit without training.")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recipe")
    group.add_argument("--config", default=None, help="A recipe JSON (e.g. hub_configs/<recipe>.json); flags override it.")
    group.add_argument("--recipe_stage", choices=("final", "tune"), default="final",
                       help="'tune': the hyperparameter-search split (--data_dir: train800/val200 for VTAB-1k, "
                            "train/val for FGVC; a recipe's tune_args apply too); 'final': the reported run.")


def parse_args_with_recipe(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], task_type: str) -> argparse.Namespace:
    """Parse ``argv``; when ``--config`` names a recipe, its values become the defaults (command-line flags win).

    Raises ``ValueError`` when the recipe is invalid or sets an argument this script does not have.
    """
    refused = token_argument(sys.argv[1:] if argv is None else argv)
    if refused:
        raise ValueError(refused)
    args = parser.parse_args(argv)
    if args.config is None:
        _check_args(parser, args)
        return args
    from gated_vpt.recipes import load_recipe

    recipe = load_recipe(args.config, task_type=task_type, stage=args.recipe_stage)
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"Recipe {args.config} sets {unknown}, which this script does not accept.")
    parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse does not check defaults (which recipes set) against ``choices``; do it here, refuse non-finite or
    out-of-range numbers (``recipes.argument_problems``), and refuse a push without a repo id, before anything runs."""
    from gated_vpt.recipes import argument_problems

    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.choices is not None and value is not None and value not in action.choices:
            raise ValueError(f"--{action.dest}={value!r} is invalid: use one of {list(action.choices)}.")
    problems = argument_problems(vars(args))
    if problems:
        raise ValueError("Invalid arguments: " + "; ".join(problems))
    if getattr(args, "push_to_hub", False) and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id <user>/<name>.")


def tracker_config(args: argparse.Namespace) -> dict:
    """The arguments as Accelerate trackers take hyperparameters: scalars and strings (anything else as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}


def run_config(args: argparse.Namespace, num_processes: int) -> dict:
    """The settings a checkpoint must share with the run that resumes it."""
    config = {k: v for k, v in vars(args).items() if k not in NON_SEMANTIC_ARGS}
    config["num_processes"] = num_processes
    return config
