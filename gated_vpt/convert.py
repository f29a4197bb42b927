"""Convert official MoCo v3 and MAE ViT checkpoints (timm-style names) to transformers' ViT format.

The official releases are PyTorch pickles whose weights use timm's names (``blocks.N.attn.qkv.weight``,
``norm1``, ``patch_embed.proj``...); timm's Hub copies hold the same weights, under the same names, as
safetensors (e.g. ``timm/vit_base_patch16_224.mae``, MAE's pretraining checkpoint). ``convert_timm_vit_state_dict``
maps such a state dict onto ``ViTForImageClassification`` (the fused ``qkv`` projection is split into query, key
and value) and checks the result by a strict load; ``convert_checkpoint`` reads a file or a Hub repo and writes a
directory that ``ViTForImageClassification.from_pretrained`` loads. Command line::

    gated-vpt convert --model_type mae timm/vit_base_patch16_224.mae backbones/mae-vit-b16
    gated-vpt convert --model_type mocov3 --trust_checkpoint --drop_head \\
        linear-vit-b-300ep.pth.tar backbones/mocov3-vit-b16-linear
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Sequence, Union

if TYPE_CHECKING:  # torch and transformers load inside the functions, so `gated-vpt convert --help` answers at once
    import torch
    from transformers import ViTConfig

ModelType = Literal["mocov3", "mae"]
MODEL_TYPES = ("mocov3", "mae")
# Where the weights sit inside the official files: MoCo v3 saves {"state_dict": ...}, MAE {"model": ...}.
CONTAINER_KEY = {"mocov3": "state_dict", "mae": "model"}
# Attention heads cannot be read off the weights: the official architectures, by hidden size.
DEFAULT_HEADS = {"mocov3": {384: 12, 768: 12, 1024: 16, 1280: 16}, "mae": {768: 12, 1024: 16, 1280: 16}}
# Weights of the pretraining task rather than the encoder; dropped, and counted in the report.
PRETRAINING_ONLY = {
    # MoCo v3 pretraining: the momentum encoder, the predictor, and the projector that replaced the encoder's head.
    "mocov3": re.compile(r"^(momentum_encoder\.|predictor\.|(base_encoder\.)?head\.\d+\.)"),
    # MAE pretraining: the mask token and the decoder.
    "mae": re.compile(r"^(mask_token$|decoder_)"),
}
# Both releases: LayerNorm eps 1e-6, exact GELU, MLP ratio from the weights, ImageNet normalisation.
LAYER_NORM_EPS = 1e-6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HUB_REPO = re.compile(r"[\w.-]+/[\w.-]+")
HUB_WEIGHTS = "model.safetensors"
# What a converted folder records about its source (``model_type`` among it): model cards read it for the licence.
_BLOCK_PARTS = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_QKV = ("attention.q_proj", "attention.k_proj", "attention.v_proj")


def convert_timm_vit_state_dict(
    state_dict: dict[str, torch.Tensor],
    model_type: ModelType,
    num_attention_heads: Optional[int] = None,
    drop_head: bool = False,
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Map a timm-style ViT state dict (MoCo v3 or MAE) to a ``ViTConfig`` and ``ViTForImageClassification`` weights.

    Accepts the keys with or without ``module.`` (DDP) and ``base_encoder.`` (MoCo v3 pretraining) prefixes. The
    final ``norm`` (or MAE fine-tuning's ``fc_norm``) becomes ``vit.layernorm``; a linear ``head`` becomes
    ``classifier`` unless ``drop_head``. Pretraining-only weights (MoCo v3's momentum encoder, predictor and
    projector; MAE's decoder and mask token) are dropped. Any other key, a missing key or a wrong shape raises
    ``ValueError``. The result is checked by a strict load into ``ViTForImageClassification(config)``, so it fits
    the installed transformers' layout; without a classifier, only ``classifier.*`` is missing there. (An MAE
    ``fc_norm`` checkpoint classified the mean of the patch tokens; transformers' head reads CLS, so use
    gated_vpt's ``head_pooling='mean'`` to keep that head.)

    Example:

    ```py
    >>> checkpoint = torch.load("linear-vit-b-300ep.pth.tar", map_location="cpu", weights_only=True)  # doctest: +SKIP
    >>> config, weights = convert_timm_vit_state_dict(checkpoint["state_dict"], "mocov3")  # doctest: +SKIP
    >>> model = ViTForImageClassification(config)  # doctest: +SKIP
    >>> model.load_state_dict(weights)  # doctest: +SKIP
    ```
    """
    config, weights, _ = _convert(state_dict, model_type, num_attention_heads, drop_head)
    return config, weights


def convert_checkpoint(
    path: Union[str, Path],
    output_dir: Union[str, Path],
    model_type: ModelType,
    trust_checkpoint: bool = False,
    drop_head: bool = False,
    num_attention_heads: Optional[int] = None,
    overwrite: bool = False,
    revision: Optional[str] = None,
) -> Path:
    """Convert an official checkpoint into a transformers ViT directory (model.safetensors, config.json,
    preprocessor_config.json, conversion.json) and return its path.

    ``path`` is a local file or a Hub repo id that holds the weights as ``model.safetensors`` under timm's names
    (e.g. ``timm/vit_base_patch16_224.mae``, at ``revision``). ``.safetensors`` files are read directly.
    ``.pth``/``.tar``/``.pt``/``.bin`` files are pickles: they are read only with ``trust_checkpoint=True`` and then
    with ``torch.load(weights_only=True)``, which rebuilds tensors and plain containers (dicts, lists, numbers,
    strings, argparse namespaces) and refuses any other object.

    Example:

    ```py
    >>> convert_checkpoint("timm/vit_base_patch16_224.mae", "backbones/mae-vit-b16", "mae")  # doctest: +SKIP
    >>> convert_checkpoint("linear-vit-b-300ep.pth.tar", "backbones/mocov3-vit-b16-linear", "mocov3",
    ...                    trust_checkpoint=True, drop_head=True)  # doctest: +SKIP
    >>> model = ViTForImageClassification.from_pretrained("backbones/mocov3-vit-b16-linear", num_labels=200)  # doctest: +SKIP
    ```
    """
    from transformers import ViTForImageClassification, ViTModel

    from .backbones import CONVERSION_RECORD

    output_dir = Path(output_dir)
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not supported: use one of {MODEL_TYPES}.")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(f"{output_dir} exists and is not empty: choose a new directory or pass overwrite=True (--overwrite).")
    path, source = _checkpoint_file(path, revision)
    state_dict = _weights_in(read_checkpoint(path, trust_checkpoint), model_type, path)
    config, weights, dropped = _convert(state_dict, model_type, num_attention_heads, drop_head)
    if "classifier.weight" in weights:
        model = _empty(ViTForImageClassification, config)
    else:
        model = _empty(ViTModel, config, add_pooling_layer=False)
        weights = {key.removeprefix("vit."): tensor for key, tensor in weights.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    (output_dir / "preprocessor_config.json").write_text(json.dumps(_preprocessor(config), indent=2) + "\n")
    (output_dir / CONVERSION_RECORD).write_text(json.dumps({
        **source,
        "sha256": _sha256(path),
        "model_type": model_type,
        "classifier": "classifier.weight" in weights,
        "dropped_pretraining_weights": len(dropped),
    }, indent=2) + "\n")
    return output_dir


def _checkpoint_file(source: Union[str, Path], revision: Optional[str]) -> tuple[Path, dict]:
    """The local file to read, and what ``conversion.json`` records about where it came from."""
    path = Path(source)
    if path.is_file():
        return path, {"source": path.name}
    if path.exists() or not _HUB_REPO.fullmatch(str(source)):
        raise ValueError(
            f"Checkpoint {source} does not exist: pass the path of the downloaded file, or a Hub repo id that holds "
            "timm-named weights as model.safetensors (e.g. timm/vit_base_patch16_224.mae)."
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        file = Path(hf_hub_download(str(source), HUB_WEIGHTS, revision=revision))
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise ValueError(
            f"Could not get {HUB_WEIGHTS} from the Hub repo {source}"
            f"{'' if revision is None else f' at revision {revision}'}: {str(error).splitlines()[0]} Check the repo id "
            "(it is read as a Hub id because no local file has that name)."
        ) from error
    return file, {"source": str(source), "revision": file.parent.name}


def read_checkpoint(path: Union[str, Path], trust_checkpoint: bool = False) -> dict:
    """Read a ``.safetensors`` file, or (with ``trust_checkpoint=True``) a PyTorch pickle through
    ``torch.load(weights_only=True)``."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if not trust_checkpoint:
        raise ValueError(
            f"{path} is a PyTorch pickle, which can run code when unpickled. gated_vpt reads it only if you trust the "
            "file: pass --trust_checkpoint (trust_checkpoint=True). It is then loaded with torch.load(weights_only="
            "True): tensors, dicts, lists, numbers, strings and argparse namespaces only; anything else is refused."
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or others for bad files
        raise ValueError(
            f"Could not read {path} with torch.load(weights_only=True): {error}. The file holds objects other than "
            "tensors and plain containers, or is not a PyTorch checkpoint; gated_vpt does not unpickle arbitrary "
            "objects. Re-save its state dict as .safetensors from a trusted environment and convert that file."
        ) from error


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m gated_vpt.convert") -> int:
    """``python -m gated_vpt.convert`` (also ``gated-vpt convert``, which passes its own ``prog``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert an official MoCo v3 or MAE ViT checkpoint (timm-style weight names) into a\n"
        "transformers ViT directory that ViTForImageClassification.from_pretrained(OUTPUT_DIR) loads.",
        epilog="examples (the paper's recipes expect these folders):\n"
        "  # MAE ViT-B/16 pretraining weights from timm's Hub copy (safetensors, no pickle)\n"
        f"  {prog} --model_type mae timm/vit_base_patch16_224.mae backbones/mae-vit-b16\n"
        "  # the same weights from the official file (the decoder is dropped)\n"
        f"  {prog} --model_type mae --trust_checkpoint mae_pretrain_vit_base.pth backbones/mae-vit-b16\n"
        "  # MoCo v3 ViT-B/16 linear-probe checkpoint\n"
        f"  {prog} --model_type mocov3 --trust_checkpoint --drop_head \\\n"
        "      linear-vit-b-300ep.pth.tar backbones/mocov3-vit-b16-linear\n"
        "\nPickled checkpoints (.pth, .tar) are read only with --trust_checkpoint, and then with\n"
        "torch.load(weights_only=True): tensors and plain containers only. .safetensors files and Hub\n"
        "repos (model.safetensors) need no flag.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint",
        help="the official checkpoint file (.pth, .pth.tar or .safetensors), or a Hub repo id holding timm-named "
        "weights as model.safetensors (e.g. timm/vit_base_patch16_224.mae)",
    )
    parser.add_argument("--revision", default=None, help="the Hub repo's revision (branch, tag or commit sha)")
    parser.add_argument("output_dir", type=Path, help="directory to write model.safetensors and config.json into")
    parser.add_argument("--model_type", required=True, choices=MODEL_TYPES, help="which release the file comes from")
    parser.add_argument(
        "--trust_checkpoint", action="store_true",
        help="allow reading a pickled checkpoint (with torch.load(weights_only=True)); needed for .pth/.tar files",
    )
    parser.add_argument(
        "--drop_head", action="store_true",
        help="leave out the checkpoint's classifier (e.g. MoCo v3's ImageNet linear probe), so any num_labels loads",
    )
    parser.add_argument(
        "--num_attention_heads", type=int, default=None,
        help="attention heads; default: the official architecture for the hidden size (ViT-S/B: 12, ViT-L/H: 16)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    args = parser.parse_args(argv)
    try:
        output = convert_checkpoint(
            args.checkpoint, args.output_dir, args.model_type, trust_checkpoint=args.trust_checkpoint,
            drop_head=args.drop_head, num_attention_heads=args.num_attention_heads, overwrite=args.overwrite,
            revision=args.revision,
        )
    except (ValueError, OSError) as error:  # OSError: no network or no Hub access
        print("gated-vpt: error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    conversion = json.loads((output / "conversion.json").read_text())
    print(
        f"Wrote {output} ({'with' if conversion['classifier'] else 'without'} classifier; "
        f"{conversion['dropped_pretraining_weights']} pretraining-only weights dropped). Load it with "
        f"ViTForImageClassification.from_pretrained({str(output)!r}, num_labels=...)."
    )
    return 0


def _convert(
    state_dict: dict, model_type: str, num_attention_heads: Optional[int], drop_head: bool
) -> tuple[ViTConfig, dict[str, torch.Tensor], list[str]]:
    """``convert_timm_vit_state_dict``, plus the pretraining-only keys it dropped."""
    from transformers import ViTForImageClassification

    from .backbones import resolve_backbone

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not supported: use one of {MODEL_TYPES}.")
    encoder, dropped = _encoder_weights(state_dict, model_type)
    config = _config_from_weights(encoder, model_type, num_attention_heads)
    blocks = resolve_backbone(_empty(ViTForImageClassification, config)).block_names
    hidden = config.hidden_size
    weights: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in encoder.items():
        block = _BLOCK.match(key)
        kind = key.rsplit(".", 1)[-1]
        if key == "cls_token":
            weights["vit.embeddings.cls_token"] = tensor
        elif key == "pos_embed":
            weights["vit.embeddings.position_embeddings"] = tensor
        elif key.startswith("patch_embed.proj."):
            weights["vit.embeddings.patch_embeddings.projection." + kind] = tensor
        elif key in ("norm.weight", "norm.bias", "fc_norm.weight", "fc_norm.bias"):
            weights["vit.layernorm." + kind] = tensor
        elif key.startswith("head."):
            if key in ("head.weight", "head.bias") and not drop_head:
                weights["classifier." + kind] = tensor
            elif not drop_head:
                unknown.append(key)
        elif block and block.group(2).startswith("attn.qkv."):
            if tensor.shape[0] != 3 * hidden:
                raise ValueError(f"{key} has shape {tuple(tensor.shape)}; a fused qkv projection needs 3 x {hidden} rows.")
            for part, chunk in zip(_QKV, tensor.split(hidden, dim=0)):
                weights[f"{blocks[int(block.group(1))]}.{part}.{kind}"] = chunk.clone()
        elif block and block.group(2).rsplit(".", 1)[0] in _BLOCK_PARTS:
            part = block.group(2).rsplit(".", 1)[0]
            weights[f"{blocks[int(block.group(1))]}.{_BLOCK_PARTS[part]}.{kind}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"The {model_type} checkpoint has weights this converter does not know: {_short(unknown)}. It converts "
            "timm-style ViT encoders (cls_token, pos_embed, patch_embed, blocks.N, norm/fc_norm, a linear head); pass "
            "drop_head=True (--drop_head) for a head that is not a single linear layer, or check --model_type."
        )
    if "norm.weight" in encoder and "fc_norm.weight" in encoder:
        raise ValueError(
            f"The {model_type} checkpoint has both a final norm and an fc_norm; transformers' ViT has one final "
            "LayerNorm. Convert a checkpoint with either (MAE fine-tuning with global pooling keeps fc_norm only)."
        )
    if "classifier.weight" in weights:
        config.num_labels = weights["classifier.weight"].shape[0]
    _check_strict_load(config, weights, with_classifier="classifier.weight" in weights)
    return config, weights, dropped


def _weights_in(checkpoint: object, model_type: ModelType, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside an official file: under 'state_dict' (MoCo v3) or 'model' (MAE), or the file itself."""
    import torch

    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(CONTAINER_KEY[model_type]), dict):
        checkpoint = checkpoint[CONTAINER_KEY[model_type]]
    if not isinstance(checkpoint, dict) or not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        keys = list(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path} holds no {model_type} state dict (expected the weights under {CONTAINER_KEY[model_type]!r} or at "
            f"the top level; found {keys}). Check --model_type."
        )
    return checkpoint


def _encoder_weights(state_dict: dict, model_type: ModelType) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The encoder's weights with their prefixes removed, and the pretraining-only keys that were dropped."""
    names = {key.removeprefix("module."): value for key, value in state_dict.items()}
    prefix = "base_encoder." if any(key.startswith("base_encoder.") for key in names) else ""
    dropped = [key for key in names if PRETRAINING_ONLY[model_type].match(key)]
    kept = {key: value for key, value in names.items() if key not in dropped}
    outside = [key for key in kept if not key.startswith(prefix)]
    if outside:
        raise ValueError(f"The {model_type} checkpoint has unknown weights outside base_encoder: {_short(outside)}.")
    encoder = {key.removeprefix(prefix): value for key, value in kept.items()}
    required = ["cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"]
    missing = [key for key in required if key not in encoder]
    if missing:
        raise ValueError(
            f"The {model_type} checkpoint lacks {_short(missing)}; found e.g. {_short(sorted(encoder)[:6])}. Is this a "
            f"ViT checkpoint of that release? Pass the official {model_type} file, or check --model_type."
        )
    return encoder, dropped


def _config_from_weights(encoder: dict, model_type: ModelType, num_attention_heads: Optional[int]) -> ViTConfig:
    from transformers import ViTConfig

    hidden, channels, patch_h, patch_w = encoder["patch_embed.proj.weight"].shape
    if patch_h != patch_w:
        raise ValueError(f"patch_embed.proj.weight has non-square patches {patch_h}x{patch_w}; transformers' ViT needs square ones.")
    grid = math.isqrt(encoder["pos_embed"].shape[1] - 1)
    if grid * grid != encoder["pos_embed"].shape[1] - 1:
        raise ValueError(f"pos_embed has {encoder['pos_embed'].shape[1]} rows: expected 1 + a square number of patches.")
    depth = 1 + max(int(m.group(1)) for m in map(_BLOCK.match, encoder) if m)
    heads = num_attention_heads or DEFAULT_HEADS[model_type].get(hidden)
    if heads is None:
        raise ValueError(
            f"No official {model_type} ViT has hidden size {hidden}; pass num_attention_heads (--num_attention_heads)."
        )
    if hidden % heads:
        raise ValueError(f"num_attention_heads={heads} does not divide the hidden size {hidden}.")
    return ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=encoder["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in encoder else 4 * hidden,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=LAYER_NORM_EPS,
        image_size=grid * patch_h,
        patch_size=patch_h,
        num_channels=channels,
        qkv_bias="blocks.0.attn.qkv.bias" in encoder,
    )


def _empty(cls: type, config: ViTConfig, **kwargs) -> torch.nn.Module:
    """A model without storage (meta device), for strict checks and assign-loading."""
    import torch

    with torch.device("meta"):
        return cls(config, **kwargs)


def _check_strict_load(config: ViTConfig, weights: dict[str, torch.Tensor], with_classifier: bool) -> None:
    from transformers import ViTForImageClassification

    model = _empty(ViTForImageClassification, config)
    expected = model.state_dict()
    missing = [key for key in expected if key not in weights and (with_classifier or not key.startswith("classifier."))]
    unexpected = [key for key in weights if key not in expected]
    wrong = [f"{key} {tuple(weights[key].shape)} vs {tuple(expected[key].shape)}" for key in weights
             if key in expected and weights[key].shape != expected[key].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            "The converted weights do not fit transformers' ViTForImageClassification: "
            + "; ".join(f"{label}: {_short(keys)}" for label, keys in
                        (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)) if keys)
            + ". The checkpoint is incomplete or not a plain ViT (e.g. a block is missing a weight)."
        )


def _preprocessor(config: ViTConfig) -> dict:
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": config.image_size, "width": config.image_size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _short(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


if __name__ == "__main__":
    sys.exit(main())
