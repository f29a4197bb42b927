"""The ``gated-vpt`` command: push, pull, inspect and run gated_vpt adapters, and convert checkpoints.

Examples:

    gated-vpt info outputs/image-classification              # a training run's output folder (or its adapter/)
    gated-vpt push out/cub-gated user/mae-cub-gated          # token from HF_TOKEN or `hf auth login`
    gated-vpt pull user/mae-cub-gated --revision v1 -o adapters/cub
    gated-vpt info user/mae-cub-gated --json
    gated-vpt predict user/mae-cub-gated --base facebook/vit-mae-base photos/ --top_k 3
    gated-vpt convert --help
    gated-vpt data check data/vtab-1k/dtd --recipe hub_configs/mae-vtab-dtd.json
    gated-vpt protocol --benchmark vtab1k --backbone mae --method gated --gpus 0,1,2,3

Errors (a missing repo or revision, no network, a bad or foreign adapter, an unreadable image, no token) are
printed as one line, ``gated-vpt: error: ...``, with exit status 1; ``--debug`` shows the traceback instead.

Heavy libraries (torch, transformers, peft, huggingface_hub) are imported inside the commands that use them, so
``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import load_core
from .tokens import refuse_token_options, token_argument

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# OSError covers FileNotFoundError, PermissionError, ConnectionError and PIL's unreadable-image errors.
USER_ERRORS = (ValueError, OSError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage)."""
    argv = _underscored_flags(list(sys.argv[1:] if argv is None else argv))
    refused = token_argument(argv)  # also in what `protocol` passes on after --
    if refused:
        print(f"gated-vpt: error: {refused}", file=sys.stderr)
        return 1
    if argv[:1] == ["convert"]:
        from . import convert

        return convert.main(argv[1:], prog="gated-vpt convert") or 0
    if argv[:1] == ["protocol"]:
        from .training import protocol

        return protocol.main(argv[1:]) or 0
    args = _parser().parse_args(argv)
    try:
        _refuse_missing_local_paths(args)
        if args.loads_core:  # after parsing: --help and usage errors need none of it, and info reads files only
            load_core()
        return args.run(args) or 0
    except USER_ERRORS as error:
        if args.debug:
            raise
        print("gated-vpt: error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1


def _underscored_flags(argv: list[str]) -> list[str]:
    """Every flag is spelled with underscores, as in the training scripts; the dashed spellings of earlier releases
    (``--top-k``, ``--model-type``, ...) still work. Arguments after ``--`` (what ``protocol`` passes on) are left."""
    end = argv.index("--") if "--" in argv else len(argv)
    return [_underscored(argument) for argument in argv[:end]] + argv[end:]


def _underscored(argument: str) -> str:
    name, equals, value = argument.partition("=")
    if re.fullmatch(r"--[a-z0-9]+(-[a-z0-9]+)+", name):
        return "--" + name[2:].replace("-", "_") + equals + value
    return argument


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gated-vpt", description="Gated visual prompt tuning adapters: share them on the Hub, inspect and run them."
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    parser.set_defaults(loads_core=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    push = commands.add_parser("push", help="upload a local adapter directory to a Hub repo (with its model card)")
    push.add_argument("directory", help="adapter directory written by model.save_pretrained, or a training run's output folder")
    push.add_argument("repo_id", help="target repo, e.g. user/mae-cub-gated (created when missing)")
    refuse_token_options(push, "--token")
    push.add_argument("--private", action="store_true", default=None, help="create the repo as private")
    push.add_argument("--message", default="Upload gated_vpt adapter", help="commit message")
    push.set_defaults(run=_push)

    pull = commands.add_parser("pull", help="download an adapter from the Hub and check its files")
    _add_source(pull, "repo_id", "Hub repo id, e.g. user/mae-cub-gated")
    pull.add_argument("-o", "--output", help="copy the files into this directory (default: keep them in the Hub cache)")
    pull.set_defaults(run=_pull)

    info = commands.add_parser("info", help="show an adapter's config, per-block gates and temperatures, and file sizes")
    _add_source(info, "adapter", "adapter directory, training run output folder or Hub repo id")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    info.set_defaults(run=_info, loads_core=False)

    predict = commands.add_parser("predict", help="classify images with a base model plus an adapter")
    _add_source(predict, "adapter", "adapter directory, training run output folder or Hub repo id")
    predict.add_argument("images", nargs="+", help="image files or folders of images")
    predict.add_argument("--base", help="base model id or directory (default: the adapter config's base_model_name_or_path)")
    predict.add_argument("--top_k", type=int, default=5, help="labels printed per image (default 5)")
    predict.add_argument("--labels", help="label names: a text file with one per line, or a JSON list or {index: name} "
                         "(default: the adapter's id2label.json, written by the training scripts)")
    predict.add_argument("--batch_size", type=int, default=32)
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")
    predict.add_argument("--skip_bad_images", action="store_true",
                         help="leave out files that are not readable images, with a note, instead of stopping")
    predict.set_defaults(run=_predict)

    commands.add_parser("convert", add_help=False, help="convert checkpoints (see `gated-vpt convert --help`)")

    data = commands.add_parser("data", help="check a prepared benchmark folder (VTAB-1k, FGVC) before training")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="split counts, class count against the recipe, every image decoded")
    check.add_argument("folder", nargs="?", help="the prepared folder, e.g. data/vtab-1k/dtd (default: the recipe's data_dir)")
    check.add_argument("--layout", choices=("vtab1k", "fgvc"), help="the folder's layout (default: detected)")
    check.add_argument("--recipe", help="a recipe JSON: its num_labels is checked (its data_dir and data_layout are the defaults)")
    check.add_argument("--num_labels", type=int, help="the class count (default: the recipe's); with it, classes absent "
                       "from a split are allowed and noted (VTAB-1k SUN397)")
    check.add_argument("--no_decode", dest="decode", action="store_false",
                       help="only check that the images exist (default: open and fully decode every image)")
    check.set_defaults(run=_data_check)

    commands.add_parser("protocol", add_help=False,
                        help="run the paper's protocol (LR grid, 5 seeds, table; see `gated-vpt protocol --help`)")
    return parser


def _add_source(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument(name, help=help)
    parser.add_argument("--revision", help="branch, tag or commit sha on the Hub (default: main)")
    refuse_token_options(parser, "--token")  # private repos: HF_TOKEN or `hf auth login`


def _refuse_missing_local_paths(args: argparse.Namespace) -> None:
    """A name that can only be a local path and does not exist (the adapter or folder to push, ``--base``) is refused
    at once, before torch, transformers or the Hub are reached."""
    from .paths import is_local_path, missing_folder

    for name, expected in ((getattr(args, "adapter", None) or getattr(args, "directory", None), "an existing adapter folder"),
                           (getattr(args, "base", None), "--base an existing model folder")):
        if name and not Path(name).exists() and is_local_path(name):
            raise missing_folder(name, expected)


def _data_check(args: argparse.Namespace) -> int:
    from .training.benchmark_data import check_data_folder

    folder, layout, num_labels = args.folder, args.layout, args.num_labels
    if args.recipe:
        from .recipes import CLASSIFICATION, load_recipe

        recipe = load_recipe(args.recipe, task_type=CLASSIFICATION)
        folder, layout = folder or recipe.get("data_dir"), layout or recipe.get("data_layout")
        num_labels = recipe["num_labels"] if num_labels is None else num_labels
    if not folder:
        raise ValueError("Pass the folder to check, or --recipe with a data_dir.")
    report = check_data_folder(folder, layout, num_labels, decode=args.decode)
    print(report.format())
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    if report.problems:
        count = len(report.problems)
        print(f"gated-vpt: error: {folder} is not ready ({count} problem{'s' if count > 1 else ''} above).", file=sys.stderr)
        return 1
    print("OK: ready to train.")
    return 0


def _push(args: argparse.Namespace) -> None:
    from .hub import push_adapter

    sha = push_adapter(args.directory, args.repo_id, private=args.private, commit_message=args.message)
    print(f"Pushed {args.directory} to {args.repo_id} (commit {sha}).")


def _pull(args: argparse.Namespace) -> None:
    from .hub import pull_adapter

    path = pull_adapter(args.repo_id, revision=args.revision, local_dir=args.output)
    print(path)


def _adapter_dir(args: argparse.Namespace) -> Path:
    """The adapter's local directory: a folder (an adapter, or a run's output folder holding ``adapter/``) as it is,
    a Hub repo id through the Hub (or its cache). The callers read and check its files."""
    from .loading import resolve_adapter_dir
    from .paths import is_local_path

    if Path(args.adapter).exists() or is_local_path(args.adapter):  # never looked up on the Hub
        return resolve_adapter_dir(args.adapter)
    from .hub import fetch_adapter

    return fetch_adapter(args.adapter, revision=args.revision)


def _info(args: argparse.Namespace) -> None:
    from .introspection import gate_report
    from .loading import read_adapter_files

    directory = _adapter_dir(args)
    config, state_dict = read_adapter_files(directory)
    report = gate_report(directory)
    files = {file.name: file.stat().st_size for file in sorted(directory.iterdir()) if file.is_file()}
    parameters = {}
    for key, tensor in state_dict.items():
        group = key.rsplit(".", 1)[-1] if ".gvpt_" in key else "head (" + key.split(".")[-2] + ")"
        parameters[group] = parameters.get(group, 0) + tensor.numel()
    if args.json:
        summary = {"adapter": str(args.adapter), "directory": str(directory), "config": config,
                   "parameters": parameters, "gates": report.to_dict(), "files": files}
        print(json.dumps(summary, indent=2))
        return
    keys = ("base_model_name_or_path", "num_prompt_tokens", "prompt_mode", "prompt_start_block", "gated", "gate_init",
            "learnable_temperature", "prompt_dropout", "head_pooling", "modules_to_save", "backbone")
    where = "" if Path(args.adapter) == directory else f" ({directory})"
    print(f"Adapter {args.adapter}{where}\n")
    print("\n".join(f"  {key}: {config.get(key)}" for key in keys))
    print("\nParameters: " + ", ".join(f"{name} {count:,}" for name, count in parameters.items()))
    print(f"\n{report.format_table()}\n")
    print("Files: " + ", ".join(f"{name} ({_size(size)})" for name, size in files.items()))


def _predict(args: argparse.Namespace) -> None:
    import torch

    try:
        import PIL  # noqa: F401
    except ImportError as error:
        raise ValueError("predict reads images with Pillow: pip install pillow (or gated-vpt[train]).") from error

    if args.top_k < 1 or args.batch_size < 1:
        raise ValueError("--top_k and --batch_size must be positive integers.")
    paths, _ = _readable(_image_paths(args.images), args.skip_bad_images, decode=False)  # before the model loads
    model, processor, labels = _load_classifier(args)
    k = min(args.top_k, len(labels))
    for start in range(0, len(paths), args.batch_size):
        batch, images = _readable(paths[start : start + args.batch_size], args.skip_bad_images, decode=True)
        if not batch:
            continue
        with torch.no_grad():
            logits = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).logits
        scores, indices = logits.softmax(dim=-1).topk(k, dim=-1)
        for path, row_scores, row_indices in zip(batch, scores.tolist(), indices.tolist()):
            top = [{"label": labels[i], "index": i, "score": s} for s, i in zip(row_scores, row_indices)]
            if args.json:
                print(json.dumps({"image": str(path), "top": top}))
            else:
                print(f"{path}: " + ", ".join(f"{t['label']} ({t['score']:.4f})" for t in top))


def _readable(paths: Sequence[Path], skip: bool, decode: bool) -> tuple[list[Path], list]:
    """The paths whose images open (only their headers read, or fully ``decode``d to RGB) and those images; an
    unreadable file raises ``ValueError`` naming it, or with ``skip`` is left out with a note on stderr."""
    from PIL import Image

    from .training.data import convert_image

    kept, images = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(convert_image(image, "RGB") if decode else None)
            kept.append(path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
            if not skip:
                raise ValueError(
                    f"Cannot read an image: {path} ({error}). Pass image files (PNG, JPEG, ...) or folders of them, "
                    "or --skip_bad_images to leave unreadable files out."
                ) from error
            print(f"note: skipped {path}, not a readable image ({error}).", file=sys.stderr)
    return kept, images


def _load_classifier(args: argparse.Namespace):
    """The base model with the adapter loaded, its image processor and the label names."""
    import transformers
    from transformers import AutoImageProcessor

    from .base_models import load_base_model
    from .loading import HEAD_CONFIG_NAME, load_adapter, read_adapter_files, read_labels
    from .paths import is_local_path
    from .layout import CLASSIFIER_WEIGHT

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    directory = _adapter_dir(args)
    config, state_dict = read_adapter_files(directory)
    if (directory / HEAD_CONFIG_NAME).is_file():
        raise ValueError(
            f"{args.adapter} is a semantic segmentation adapter ({HEAD_CONFIG_NAME}); predict classifies images. Load "
            "it with gated_vpt.segmentation.load_segmentation_adapter and predict with "
            "gated_vpt.segmentation.inference.predict (docs/SEGMENTATION.md)."
        )
    heads = [tensor for key, tensor in state_dict.items() if CLASSIFIER_WEIGHT.search(key)]
    if not heads:
        raise ValueError("This adapter has no classifier head (modules_to_save), so it cannot predict labels.")
    base_id = args.base or config.get("base_model_name_or_path")
    recorded = "" if args.base else " (the base recorded in the adapter)"
    if not base_id:
        raise ValueError("The adapter does not record its base model; pass --base <model id or directory>.")
    if not args.base and is_local_path(base_id) and not Path(base_id).exists():  # --base was checked at the start
        raise FileNotFoundError(
            f"The adapter's base model {base_id} is not on this machine (the adapter recorded it where it was "
            "trained): pass --base <the same backbone's Hub id or local folder>."
        )
    num_labels = heads[0].shape[0]
    try:
        base = load_base_model(base_id, num_labels)
    except OSError as error:
        raise OSError(f"Cannot load the base model {base_id!r}{recorded}: {error} Pass --base <a Hub id or local folder>.") from error
    model = load_adapter(base, directory).eval()
    try:
        processor = AutoImageProcessor.from_pretrained(base_id, backend="pil")
    except OSError:
        timm_model = getattr(base, "timm_model", None)  # transformers' TimmWrapper: the size timm was built for
        size = timm_model.patch_embed.img_size[0] if timm_model is not None else base.config.image_size
        print(f"note: {base_id} has no image processor config; resizing to {size}x{size} with ViT defaults.", file=sys.stderr)
        # The Pillow backend by name: transformers warns when ViTImageProcessor falls back to it without torchvision.
        processor_class = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
        processor = processor_class(size={"height": size, "width": size})
    saved = None if args.labels else read_labels(directory)
    return model, processor, _label_names(args.labels, saved, base.config, num_labels)


def _label_names(path: Optional[str], saved: Optional[list[str]], config, num_labels: int) -> list[str]:
    """--labels, else the adapter's saved names, else the base model's config."""
    if path is None and saved is not None and len(saved) == num_labels:
        return saved
    if path is None:
        return [config.id2label.get(i, f"LABEL_{i}") for i in range(num_labels)]
    text = Path(path).read_text()
    if path.endswith(".json"):
        loaded = json.loads(text)
        names = [loaded[str(i)] for i in range(num_labels)] if isinstance(loaded, dict) else list(loaded)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != num_labels:
        raise ValueError(f"--labels {path} has {len(names)} names but the adapter's classifier has {num_labels} outputs.")
    return names


def _image_paths(inputs: Sequence[str]) -> list[Path]:
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"No image file or folder {str(item)!r}.")
    if not paths:
        raise FileNotFoundError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(inputs)}.")
    return paths


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB"):
        if num_bytes < 1024:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GB"


if __name__ == "__main__":
    sys.exit(main())
