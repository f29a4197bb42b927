"""The converter on every size it knows a head count for (shapes only, on the meta device: no memory) and the
preprocessor it writes, applied to an image. Attention heads cannot be read off the weights, so each size's count
is the official architecture's: MoCo v3's ViT-S has 12 heads (timm's ViT-S has 6), ViT-B 12, ViT-L and ViT-H 16.
Both releases use LayerNorm eps 1e-6 and exact GELU. tests/test_convert.py checks the converted forward against
timm's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import ViTImageProcessor

from gated_vpt.convert import convert_checkpoint, convert_timm_vit_state_dict
from test_convert import mae_pretraining, timm_vit_weights

# (release, name, hidden size, MLP width, heads, patch): the sizes the converter knows the head count of
SIZES = [
    ("mocov3", "ViT-S/16", 384, 1536, 12, 16),
    ("mocov3", "ViT-B/16", 768, 3072, 12, 16),
    ("mocov3", "ViT-L/16", 1024, 4096, 16, 16),
    ("mocov3", "ViT-H/14", 1280, 5120, 16, 14),
    ("mae", "ViT-B/16", 768, 3072, 12, 16),
    ("mae", "ViT-L/16", 1024, 4096, 16, 16),
    ("mae", "ViT-H/14", 1280, 5120, 16, 14),
]


def _shapes(hidden: int, mlp: int, patch: int, depth: int = 2, grid: int = 2) -> dict[str, torch.Tensor]:
    def empty(*shape):
        return torch.empty(*shape, device="meta")

    weights = {"cls_token": empty(1, 1, hidden), "pos_embed": empty(1, grid * grid + 1, hidden),
               "patch_embed.proj.weight": empty(hidden, 3, patch, patch), "patch_embed.proj.bias": empty(hidden),
               "norm.weight": empty(hidden), "norm.bias": empty(hidden)}
    for i in range(depth):
        for name, shape in (("norm1", (hidden,)), ("norm2", (hidden,)), ("attn.qkv", (3 * hidden, hidden)),
                            ("attn.proj", (hidden, hidden)), ("mlp.fc1", (mlp, hidden)), ("mlp.fc2", (hidden, mlp))):
            weights[f"blocks.{i}.{name}.weight"] = empty(*shape)
            weights[f"blocks.{i}.{name}.bias"] = empty(shape[0])
    return weights


@pytest.mark.parametrize("release, name, hidden, mlp, heads, patch", SIZES, ids=[f"{s[0]}-{s[1]}" for s in SIZES])
def test_every_official_size_gets_its_heads_norms_and_activation(release, name, hidden, mlp, heads, patch):
    config, weights = convert_timm_vit_state_dict(_shapes(hidden, mlp, patch), release)
    assert (config.hidden_size, config.intermediate_size, config.num_attention_heads) == (hidden, mlp, heads)
    assert (config.patch_size, config.image_size, config.num_hidden_layers) == (patch, 2 * patch, 2)
    assert (config.layer_norm_eps, config.hidden_act, config.qkv_bias) == (1e-6, "gelu", True)
    assert weights["vit.layernorm.weight"].shape == (hidden,)
    assert weights["vit.layers.1.layernorm_before.weight"].shape == weights["vit.layers.1.layernorm_after.bias"].shape == (hidden,)


def test_an_unofficial_width_needs_the_head_count(tmp_path):
    with pytest.raises(ValueError, match="No official mae ViT has hidden size 384; pass num_attention_heads"):
        convert_timm_vit_state_dict(_shapes(384, 1536, 16), "mae")
    config, _ = convert_timm_vit_state_dict(_shapes(384, 1536, 16), "mae", num_attention_heads=6)
    assert config.num_attention_heads == 6


def test_the_written_preprocessor_normalises_with_imagenet_statistics_at_the_model_size(tmp_path):
    """Loaded with transformers' ViTImageProcessor, an image of the model's size becomes (x / 255 - mean) / std
    with ImageNet's mean and standard deviation, the statistics both releases trained with."""
    path = tmp_path / "mae.safetensors"
    save_file(mae_pretraining(timm_vit_weights(head=False))["model"], str(path))
    out = convert_checkpoint(path, tmp_path / "mae", "mae", num_attention_heads=2)
    processor = ViTImageProcessor.from_pretrained(out)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    got = processor(images=Image.fromarray(pixels), return_tensors="pt")["pixel_values"][0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
