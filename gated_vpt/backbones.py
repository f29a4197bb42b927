"""The per-backbone table: everything that differs between the supported transformers models.

Each entry says how one block is built (``BlockLayout``: its layer norms, attention projections, MLP and layer
scales, from which the fast path computes a block, and where the query projection sits), how many special tokens
precede the patches, which head pooling the paper uses for that family and what the model's own head reads from the
final sequence. The blocks are
found below the vision tower (the base model, or its ``vision_model`` for the CLIP and SigLIP classification
classes) at ``layers``, ``encoder.layer``, ``encoder.layers`` or ``model.layer``: transformers moved ViT's blocks
from ``encoder.layer`` to ``layers`` in 5.9, CLIP and SigLIP keep theirs at ``encoder.layers``, DINOv3 at
``model.layer``.

timm's ``VisionTransformer`` (``timm.create_model("vit_...")``, or the one a transformers ``TimmWrapperModel`` /
``TimmWrapperForImageClassification`` holds as ``timm_model``) has no transformers config: ``resolve_backbone`` reads
what it needs from the model itself (``TIMM_VIT`` and ``_timm_backbone``) and recognises timm's classes by name,
without importing timm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from torch import nn

BLOCK_CONTAINERS = ("layers", "encoder.layer", "encoder.layers", "model.layer")
# The keyword argument that carries a block's rotary position embeddings (``BlockLayout.rotary``).
ROTARY = "position_embeddings"
# Written by ``gated-vpt convert`` beside a backbone it converted: the source checkpoint's family and size.
CONVERSION_RECORD = "conversion.json"
HeadReads = Literal["cls", "probe", "mean"]


@dataclass(frozen=True)
class BlockLayout:
    """Paths (below an encoder block) of the parts of a pre-norm transformer block, in the order it runs them:

    ``x = x + scale1(o(attention(q(n1), k(n1), v(n1))))`` with ``n1 = norm_before(x)``, then
    ``x = x + scale2(mlp(norm_after(x)))``. ``attention`` is the self-attention module: it holds the four
    projections (plain ``nn.Linear``), ``head_dim``, the logit scale (attribute ``scaling``) and what picks the
    attention kernel (``kernel``: transformers' ``config._attn_implementation``, eager or sdpa; timm's ``fused_attn``
    flag, sdpa or its own eager product). ``fused_qkv``: the first projection computes queries, keys and values at
    once, in that order along its output (timm's ``qkv``); the other two names are then unused. ``head_norms``: per-head
    norms of the queries and of the keys, applied after the split into heads (timm's ``q_norm``/``k_norm``, identities
    unless ``qk_norm``). ``layer_scales`` are per-channel scale modules (Dinov2, timm's ``ls1``/``ls2``), or None.
    ``rotary``: the block gets rotary position embeddings (``position_embeddings=(cos, sin)``) for its patch rows, the
    last rows of the sequence, and applies them to the queries and keys (DINOv3); the rows before the patches, prompts
    included, get none. ``absent``: optional parts (below the block) that the fast path does not compute; a block
    where one is present (not None, not an identity) runs through its own forward.
    """

    norm_before: str = "layernorm_before"
    norm_after: str = "layernorm_after"
    attention: str = "attention"
    projections: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "o_proj")
    scaling: str = "scaling"
    mlp: str = "mlp"
    layer_scales: Optional[tuple[str, str]] = None
    rotary: bool = False
    fused_qkv: bool = False
    head_norms: Optional[tuple[str, str]] = None
    kernel: Literal["transformers", "timm"] = "transformers"
    absent: tuple[str, ...] = ()

    @property
    def query(self) -> str:
        """The module whose output is the queries as the attention logits use them: the temperature divides it.
        With per-head query norms that is the norm (dividing before it would be undone by it); otherwise the query
        projection, which must then be a projection of its own."""
        return f"{self.attention}.{self.head_norms[0] if self.head_norms else self.projections[0]}"


_DINOV2_BLOCK = BlockLayout(norm_before="norm1", norm_after="norm2", layer_scales=("layer_scale1", "layer_scale2"))
_DINOV3_BLOCK = BlockLayout(norm_before="norm1", norm_after="norm2", layer_scales=("layer_scale1", "layer_scale2"), rotary=True)
_CLIP_BLOCK = BlockLayout(  # CLIP and SigLIP encoder layers
    norm_before="layer_norm1", norm_after="layer_norm2", attention="self_attn",
    projections=("q_proj", "k_proj", "v_proj", "out_proj"), scaling="scale",
)
_TIMM_BLOCK = BlockLayout(  # timm.models.vision_transformer.Block with timm.layers.Attention
    norm_before="norm1", norm_after="norm2", attention="attn", projections=("qkv", "qkv", "qkv", "proj"),
    scaling="scale", layer_scales=("ls1", "ls2"), fused_qkv=True, head_norms=("q_norm", "k_norm"), kernel="timm",
    absent=("attn.norm", "attn.gate", "mlp.norm"),
)


@dataclass(frozen=True)
class BackboneSpec:
    """How gated prompts reach one model family.

    ``head`` is what the model's own head reads from the final sequence: ``"cls"`` row 0 (after the final
    LayerNorm), ``"probe"`` every row through an attention-pooling probe (SigLIP), ``"mean"`` the mean of the
    non-special rows. It decides how ``heads.head_input`` realises the head pooling. ``classes`` limits a model type
    to the classes whose head ``head`` describes (empty: every class of the type). ``fast_path``: whether ``block``
    describes the family's blocks completely, so that gated_vpt may compute them itself (skipping rows whose output is
    discarded); False runs every block through its own forward. ``classifier``: the name of the model's task head,
    saved with the adapter (``modules_to_save``) when the model has one; ``classifier_in_tower``: that name is below
    the vision tower (timm's ``head``), not beside it. ``entry``: the module below the vision tower
    that runs once per forward pass before any block (the tower itself, or timm's patch embedding: TimmWrapperModel
    calls the timm model's ``forward_features``, not its ``forward``).
    """

    special_tokens: Callable[[object], int]
    pooling: Literal["cls", "mean"] = "cls"
    block: BlockLayout = field(default_factory=BlockLayout)
    head: HeadReads = "cls"
    classes: tuple[str, ...] = ()
    fast_path: bool = True
    classifier: str = "classifier"
    classifier_in_tower: bool = False
    entry: str = ""


BACKBONES: dict[str, BackboneSpec] = {
    "vit": BackboneSpec(special_tokens=lambda config: 1),
    "vit_mae": BackboneSpec(special_tokens=lambda config: 1, pooling="mean"),
    "vit_msn": BackboneSpec(special_tokens=lambda config: 1),
    "deit": BackboneSpec(special_tokens=lambda config: 2),
    "dinov2": BackboneSpec(special_tokens=lambda config: 1, block=_DINOV2_BLOCK),
    "dinov2_with_registers": BackboneSpec(special_tokens=lambda config: 1 + config.num_register_tokens, block=_DINOV2_BLOCK),
    "clip_vision_model": BackboneSpec(special_tokens=lambda config: 1, block=_CLIP_BLOCK),
    "clip": BackboneSpec(
        special_tokens=lambda config: 1, pooling="mean", block=_CLIP_BLOCK, head="mean",
        classes=("CLIPForImageClassification",),
    ),
    "siglip_vision_model": BackboneSpec(special_tokens=lambda config: 0, block=_CLIP_BLOCK, head="probe"),
    "siglip": BackboneSpec(
        special_tokens=lambda config: 0, pooling="mean", block=_CLIP_BLOCK, head="mean",
        classes=("SiglipForImageClassification",),
    ),
    "ijepa": BackboneSpec(special_tokens=lambda config: 0, pooling="mean", head="mean"),
    "dinov3_vit": BackboneSpec(special_tokens=lambda config: 1 + config.num_register_tokens, block=_DINOV3_BLOCK),
}

# timm's VisionTransformer: prefix tokens (class token, registers) from the model; what its head reads, and so the paper
# head that "auto" picks, follow its ``global_pool`` (``TIMM_POOLS``). Stored in adapters as this model type, whether
# the model came through transformers' TimmWrapper classes or not, so one adapter serves both.
TIMM_VIT = BackboneSpec(
    special_tokens=lambda model: model.num_prefix_tokens, block=_TIMM_BLOCK, classifier="head", classifier_in_tower=True,
    entry="patch_embed",
)
TIMM_MODEL_TYPE = "timm_vit"
# The timm classes gated_vpt describes, by qualified name: the model (or a subclass), and exactly these blocks.
TIMM_CLASSES = {
    "model": "timm.models.vision_transformer.VisionTransformer",
    "block": "timm.models.vision_transformer.Block",
    "attention": "timm.layers.attention.Attention",
}
# global_pool -> (what the head reads, the head pooling of "auto"): "token" reads row 0 (after ``norm``, or through
# ``fc_norm``), "avg" averages the rows after the prefix tokens and then applies ``fc_norm``, "map" is an
# attention-pooling probe over the rows after the prefix tokens.
TIMM_POOLS: dict[str, tuple[HeadReads, Literal["cls", "mean"]]] = {
    "token": ("cls", "cls"), "avg": ("mean", "mean"), "map": ("probe", "cls"),
}


@dataclass(frozen=True)
class Backbone:
    """A supported model, resolved: its spec, its vision tower (``encoder``: the module holding the embeddings and
    the blocks) and the blocks' names in the model."""

    model_type: str
    spec: BackboneSpec
    encoder: nn.Module
    block_names: tuple[str, ...]
    num_special_tokens: int
    hidden_size: int
    patch_size: tuple[int, int]
    num_channels: int

    classifier: Optional[str] = None

    @property
    def num_blocks(self) -> int:
        return len(self.block_names)

    @property
    def entry(self) -> nn.Module:
        """The module that runs once per forward pass before any block (``BackboneSpec.entry``)."""
        return self.encoder.get_submodule(self.spec.entry)

    def signature(self) -> dict:
        """What an adapter records about the backbone it was made for."""
        return {
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_blocks,
            "num_special_tokens": self.num_special_tokens,
        }


def supported_model_types() -> list[str]:
    """The transformers model types in ``BACKBONES``, and ``timm_wrapper`` (transformers' classes for timm models)."""
    return sorted([*BACKBONES, "timm_wrapper"])


def resolve_backbone(model: nn.Module) -> Backbone:
    """Find the encoder blocks of ``model`` (a transformers ViT-family model, possibly with a task head, or timm's
    VisionTransformer, directly or in transformers' TimmWrapper classes).

    Raises ``ValueError`` naming the supported model types when the model is not one of them.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    timm_model = getattr(model, "timm_model", None) if model_type == "timm_wrapper" else model
    if type(timm_model).__module__.startswith("timm."):
        return _timm_backbone(model, timm_model)
    spec = BACKBONES.get(model_type)
    if spec is None or (spec.classes and type(model).__name__ not in spec.classes):
        raise ValueError(
            f"gated_vpt does not support {type(model).__name__} (model_type={model_type!r}). Supported model types: "
            f"{', '.join(supported_model_types())} (e.g. ViTModel, ViTForImageClassification, ViTMAEModel, DeiTModel, "
            "Dinov2Model, Dinov2WithRegistersModel, ViTMSNModel and their image-classification heads; CLIPVisionModel, "
            "SiglipVisionModel, IJepaModel and their *ForImageClassification classes; DINOv3ViTModel; timm's "
            "VisionTransformer, directly or in TimmWrapperModel / TimmWrapperForImageClassification)."
        )
    base = without_head(model)
    encoder = getattr(base, "vision_model", base)
    config = getattr(config, "vision_config", None) or config
    for container in BLOCK_CONTAINERS:
        blocks = encoder.get_submodule(container) if _has_submodule(encoder, container) else None
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            break
    else:
        raise ValueError(
            f"Could not find the encoder blocks of {type(model).__name__} (looked for {', '.join(BLOCK_CONTAINERS)} "
            "below the vision tower). This transformers version may have moved them; please report it."
        )
    names = {id(module): name for name, module in model.named_modules()}
    patch = config.patch_size
    return Backbone(
        model_type=model_type,
        spec=spec,
        encoder=encoder,
        block_names=tuple(names[id(block)] for block in blocks),
        num_special_tokens=spec.special_tokens(config),
        hidden_size=config.hidden_size,
        patch_size=tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch),
        num_channels=config.num_channels,
        classifier=spec.classifier if isinstance(getattr(model, spec.classifier, None), nn.Module) else None,
    )


def _timm_backbone(model: nn.Module, vit: nn.Module) -> Backbone:
    """``resolve_backbone`` for timm's VisionTransformer ``vit``, which is ``model`` or its ``timm_model``. timm's
    classes are recognised by their qualified names, so the core never imports timm (an optional extra)."""

    def refuse(problem: str) -> None:
        raise ValueError(
            f"gated_vpt does not support this timm model ({type(vit).__name__}): {problem}. Supported: timm's "
            "VisionTransformer with its standard Block (e.g. timm.create_model('vit_base_patch16_224.mae'), with or "
            "without class token, reg_tokens, no_embed_class, fc_norm, init_values, qk_norm, dynamic_img_size) and "
            f"global_pool in {sorted(TIMM_POOLS)}; or one of the transformers model types "
            f"{', '.join(supported_model_types())}."
        )

    if not any(_qualified(cls) == TIMM_CLASSES["model"] for cls in type(vit).__mro__):
        refuse("only timm's VisionTransformer class is supported")
    blocks = list(vit.blocks)
    inner = [getattr(b, "base_layer", b) for b in blocks]  # already wrapped by an adapter: the wrapped block
    exact = (TIMM_CLASSES["block"], TIMM_CLASSES["attention"])
    if not blocks or any((_qualified(type(b)), _qualified(type(getattr(b, "attn", None)))) != exact for b in inner):
        kinds = sorted({f"{type(b).__name__} with {type(getattr(b, 'attn', None)).__name__}" for b in inner})
        refuse(f"its blocks are {', '.join(kinds)}, not timm's Block with timm.layers.Attention")
    if vit.global_pool not in TIMM_POOLS or vit.attn_pool is not None and vit.global_pool != "map":
        refuse(f"global_pool={vit.global_pool!r} is not one gated_vpt reads out")
    if getattr(vit, "pool_include_prefix", False):
        refuse("pool_include_prefix=True (the pool would read the prefix tokens as well)")
    head, pooling = TIMM_POOLS[vit.global_pool]
    # timm.create_model records the weights' tag; transformers' wrapper keeps the Hub repo's in its config instead
    pretrained = getattr(getattr(model, "config", None), "pretrained_cfg", None) or getattr(vit, "pretrained_cfg", None)
    if ((pretrained or {}).get("tag") or "").startswith("mae"):
        pooling = "mean"  # MAE's weights: the paper's MAE head (mean, then the pretrained final norm)
    names = {id(module): name for name, module in model.named_modules()}
    patch = vit.patch_embed.patch_size
    return Backbone(
        model_type=TIMM_MODEL_TYPE,
        spec=dataclasses.replace(TIMM_VIT, head=head, pooling=pooling),
        encoder=vit,
        block_names=tuple(names[id(block)] for block in blocks),
        num_special_tokens=TIMM_VIT.special_tokens(vit),
        hidden_size=vit.embed_dim,
        patch_size=tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch),
        num_channels=vit.patch_embed.proj.in_channels,
        classifier=None if isinstance(vit.head, nn.Identity) else TIMM_VIT.classifier,  # num_classes=0: an identity
    )


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def without_head(model: nn.Module) -> nn.Module:
    """``model.base_model`` (the model without its task head), or ``model`` itself where that attribute names a part
    of it: DINOv3ViTModel's ``base_model_prefix`` is ``"model"``, the name of its block stack."""
    base = getattr(model, "base_model", model)
    return model if not hasattr(base, "embeddings") and hasattr(model, "embeddings") else base


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
