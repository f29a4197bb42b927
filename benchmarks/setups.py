"""The benchmarked configurations: one frozen or trainable ViT per way of fine-tuning it.

Every configuration is built from the same random backbone (same seed), so they differ only in what is trained
and how. ``ideal`` is prompt tuning written by hand on the same transformers model: embeddings, prompts
concatenated after CLS, the model's own blocks in a loop, final LayerNorm on CLS, classifier; only the prompts and
the classifier train. It is the floor the gated_vpt configurations are compared against. ``clip_gated_temp`` is
``gated_temp`` on a ``CLIPForImageClassification`` vision tower of the same size (pre-encoder LayerNorm, quick-GELU,
mean-pooling head), the one non-ViT family measured.

The timm configurations (``TIMM_CONFIGS``, only when named, since they need timm) run the same comparison on timm's
``VisionTransformer`` of the same size: ``timm_ideal`` is prompt tuning by hand on it (timm's own patch embedding,
prefix tokens and position embedding, prompts after the class token, its blocks in a loop, final norm on the class
token, head), ``timm_gated_temp`` is gated_vpt's gated + temperature on it; timm rows are compared with
``timm_ideal`` (``ideal_for``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F
from transformers import CLIPConfig, CLIPForImageClassification, PreTrainedModel, ViTConfig, ViTForImageClassification

import gated_vpt
from gated_vpt.prompts import new_prompts, prompt_init_bound

SIZES: dict[str, dict] = {
    "tiny": dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "vit-s16": dict(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vit-b16": dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
CONFIGS = ("ideal", "full_ft", "linear_probe", "lora", "vpt_shallow", "vpt_deep", "gated", "gated_temp", "clip_gated_temp")
GATED = ("vpt_shallow", "vpt_deep", "gated", "gated_temp", "clip_gated_temp")
TIMM_CONFIGS = ("timm_ideal", "timm_gated_temp")
PLAIN = "@plain"  # suffix of a gated_vpt configuration run with the fast path off (gated_vpt.fast_path(False))
PROMPT_DROPOUT = 0.1


@dataclass
class Setup:
    """A model ready to benchmark: ``model(pixel_values)`` gives logits (or an output with ``.logits``)."""

    name: str
    model: nn.Module
    backbone: PreTrainedModel
    fast_path: bool = True

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def adapter_bytes(self) -> int:
        """Size on disk of what must be stored for this fine-tune: peft's ``adapter_model.safetensors``, or a
        safetensors file of the trainable tensors for the configurations peft does not save."""
        with tempfile.TemporaryDirectory() as folder:
            if isinstance(self.model, PeftModel):
                self.model.save_pretrained(folder)
                path = os.path.join(folder, "adapter_model.safetensors")
            else:
                path = os.path.join(folder, "trainable.safetensors")
                tensors = {n: p.detach().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
                save_file(tensors, path)
            return os.path.getsize(path)

    def set_attention(self, implementation: str) -> None:
        config = getattr(self.backbone, "config", None)
        if config is None:  # timm: each attention picks sdpa or its own product by its fused_attn flag
            for block in self.backbone.blocks:
                getattr(block, "base_layer", block).attn.fused_attn = implementation == "sdpa"
            return
        (getattr(config, "vision_config", None) or config)._attn_implementation = implementation  # CLIP: its tower's


class IdealPromptTuning(nn.Module):
    """Shallow prompt tuning by hand on a frozen ``ViTForImageClassification``: only prompts and classifier train.

    Example:

    ```py
    >>> ideal = IdealPromptTuning(ViTForImageClassification(config), num_prompts=10)
    >>> logits = ideal(torch.randn(2, 3, 224, 224))
    ```
    """

    def __init__(self, backbone: ViTForImageClassification, num_prompts: int, dropout: float = PROMPT_DROPOUT) -> None:
        super().__init__()
        config = backbone.config
        self.backbone = backbone.requires_grad_(False)
        self.backbone.classifier.requires_grad_(True)
        bound = prompt_init_bound((config.patch_size, config.patch_size), config.num_channels, config.hidden_size)
        self.prompts = nn.Parameter(new_prompts(num_prompts, config.hidden_size, bound))
        self.dropout = dropout

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vit = self.backbone.vit
        hidden = vit.embeddings(pixel_values)
        prompts = F.dropout(self.prompts, self.dropout, self.training).expand(hidden.shape[0], -1, -1)
        hidden = torch.cat((hidden[:, :1], prompts, hidden[:, 1:]), dim=1)
        for block in vit.layers:
            hidden = block(hidden)
        return self.backbone.classifier(vit.layernorm(hidden[:, 0]))

    def train(self, mode: bool = True) -> "IdealPromptTuning":
        """The frozen backbone stays in eval mode, as in gated_vpt; only the prompt dropout follows ``mode``."""
        super().train(mode)
        self.backbone.eval()
        return self


class TimmIdealPromptTuning(nn.Module):
    """``IdealPromptTuning`` on timm's ``VisionTransformer`` (class token, token pooling): only prompts and head train.

    Example:

    ```py
    >>> ideal = TimmIdealPromptTuning(build_timm_backbone("tiny"), num_prompts=10)
    >>> logits = ideal(torch.randn(2, 3, 32, 32))
    ```
    """

    def __init__(self, backbone: nn.Module, num_prompts: int, dropout: float = PROMPT_DROPOUT) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.backbone.head.requires_grad_(True)
        patch = backbone.patch_embed.patch_size
        bound = prompt_init_bound(tuple(patch), backbone.patch_embed.proj.in_channels, backbone.embed_dim)
        self.prompts = nn.Parameter(new_prompts(num_prompts, backbone.embed_dim, bound))
        self.dropout = dropout

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vit = self.backbone
        hidden = vit.norm_pre(vit._pos_embed(vit.patch_embed(pixel_values)))
        prompts = F.dropout(self.prompts, self.dropout, self.training).expand(hidden.shape[0], -1, -1)
        hidden = torch.cat((hidden[:, :1], prompts, hidden[:, 1:]), dim=1)
        for block in vit.blocks:
            hidden = block(hidden)
        return vit.head(vit.norm(hidden[:, 0]))

    def train(self, mode: bool = True) -> "TimmIdealPromptTuning":
        super().train(mode)
        self.backbone.eval()
        return self


def build_timm_backbone(size: str, num_labels: int = 100, seed: int = 0) -> nn.Module:
    """timm's VisionTransformer with the shape of ``SIZES[size]`` (class token, token pooling, qkv bias)."""
    from timm.models.vision_transformer import VisionTransformer

    shape = SIZES[size]
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=shape["image_size"], patch_size=shape["patch_size"], embed_dim=shape["hidden_size"],
        depth=shape["num_hidden_layers"], num_heads=shape["num_attention_heads"],
        mlp_ratio=shape["intermediate_size"] / shape["hidden_size"], num_classes=num_labels,
    )


def ideal_for(name: str) -> str:
    """The hand-written ideal a configuration is compared with: on the same backbone library."""
    return "timm_ideal" if name.startswith("timm_") else "ideal"


def build_backbone(size: str, num_labels: int = 100, seed: int = 0) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**SIZES[size], num_labels=num_labels))


def build_clip_backbone(size: str, num_labels: int = 100, seed: int = 0) -> CLIPForImageClassification:
    torch.manual_seed(seed)
    return CLIPForImageClassification(CLIPConfig(vision_config=SIZES[size], text_config={}, num_labels=num_labels))


def gated_config(name: str, num_prompts: int) -> gated_vpt.GatedPromptConfig:
    """The GatedPromptConfig of a gated_vpt configuration name (``vpt_shallow``, ``vpt_deep``, ``gated``, ``gated_temp``)."""
    options = {
        "vpt_shallow": dict(gated=False, learnable_temperature=False),
        "vpt_deep": dict(prompt_mode="deep"),
        "gated": dict(gated=True, learnable_temperature=False),
        "gated_temp": dict(gated=True, learnable_temperature=True),
    }[name]
    return gated_vpt.GatedPromptConfig(num_prompt_tokens=num_prompts, prompt_dropout=PROMPT_DROPOUT, **options)


def _linear_probe(backbone: ViTForImageClassification, num_prompts: int) -> nn.Module:
    backbone.requires_grad_(False)
    backbone.classifier.requires_grad_(True)
    return backbone


def _lora(backbone: ViTForImageClassification, num_prompts: int) -> nn.Module:
    return get_peft_model(backbone, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]))


BUILDERS: dict[str, Callable[[ViTForImageClassification, int], nn.Module]] = {
    "ideal": lambda backbone, num_prompts: IdealPromptTuning(backbone, num_prompts),
    "full_ft": lambda backbone, num_prompts: backbone,
    "linear_probe": _linear_probe,
    "lora": _lora,
    **{name: (lambda backbone, num_prompts, name=name: get_peft_model(backbone, gated_config(name, num_prompts)))
       for name in ("vpt_shallow", "vpt_deep", "gated", "gated_temp")},
}
BUILDERS["clip_gated_temp"] = BUILDERS["gated_temp"]  # the same adapter, on the CLIP backbone of BACKBONE_BUILDERS
BUILDERS["timm_gated_temp"] = BUILDERS["gated_temp"]  # and on timm's VisionTransformer
BUILDERS["timm_ideal"] = lambda backbone, num_prompts: TimmIdealPromptTuning(backbone, num_prompts)
BACKBONE_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "clip_gated_temp": build_clip_backbone, "timm_ideal": build_timm_backbone, "timm_gated_temp": build_timm_backbone,
}


def build(name: str, size: str, num_prompts: int, device: torch.device, seed: int = 0) -> Setup:
    """Configuration ``name`` (one of ``CONFIGS``, a gated_vpt one optionally suffixed ``PLAIN``) on a fresh random
    ``size`` backbone, moved to ``device``."""
    config, plain = name.removesuffix(PLAIN), name.endswith(PLAIN)
    if config not in BUILDERS or (plain and config not in GATED):
        raise ValueError(f"Unknown configuration {name!r}; choose from {', '.join(CONFIGS + TIMM_CONFIGS)} (gated_vpt "
                         f"ones also with {PLAIN!r}: {', '.join(GATED)}).")
    backbone = BACKBONE_BUILDERS.get(config, build_backbone)(size, seed=seed)
    model = BUILDERS[config](backbone, num_prompts).to(device)
    return Setup(name=name, model=model, backbone=backbone, fast_path=not plain)


def build_multi_adapter(size: str, num_prompts: int, num_adapters: int, device: torch.device, seed: int = 0) -> Setup:
    """A gated + temperature PeftModel holding ``num_adapters`` adapters (``a0`` active), for per-sample routing."""
    backbone = build_backbone(size, seed=seed)
    model = get_peft_model(backbone, gated_config("gated_temp", num_prompts), adapter_name="a0")
    for index in range(1, num_adapters):
        model.add_adapter(f"a{index}", gated_config("gated_temp", num_prompts))
    return Setup(name="multi_adapter", model=model.to(device), backbone=backbone)


def logits_of(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits
