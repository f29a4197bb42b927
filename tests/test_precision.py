"""A half-precision backbone: adapter parameters stay float32 (peft's autocast) and the forward runs in the
backbone's dtype, with eager and sdpa attention."""

import pytest
import torch
from peft import get_peft_model
from transformers import ViTConfig, ViTForImageClassification

import gated_vpt


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_bfloat16_backbone_matches_float32_within_bfloat16_precision(attention):
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    config._attn_implementation = attention
    torch.manual_seed(0)
    model = get_peft_model(ViTForImageClassification(config), gated_vpt.GatedPromptConfig(num_prompt_tokens=2)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "gvpt_gate" in name or "gvpt_temperature" in name:
                param.add_(0.5)
    pixels = torch.randn(2, 3, 16, 16)
    reference = model(pixels).logits
    model.to(torch.bfloat16)
    model.base_model._cast_adapter_dtype("default")  # what peft does when an adapter is added to a bf16 model
    adapter = {n: p for n, p in model.named_parameters() if "gvpt_" in n}
    assert all(p.dtype == torch.float32 for p in adapter.values())
    logits = model(pixels.to(torch.bfloat16)).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), reference, rtol=0.05, atol=0.05)
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapter.values())
