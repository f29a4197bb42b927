"""A half-precision backbone: adapter parameters stay float32 (peft's autocast) and the forward runs in the
backbone's dtype, with eager and sdpa attention, giving the reference numbers within bfloat16 rounding.

The tolerance is set against the adapter's own effect, measured here on the reference: the bfloat16 error must be
a small fraction of the change that flipping the gates, inverting the temperatures or zeroing the prompts makes,
so a bfloat16 path with a flipped gate or a temperature that multiplies cannot pass."""

import copy

import pytest
import torch
from peft import get_peft_model

import gated_vpt
from conftest import images, make_backbone, randomize_adapter_
from reference import read_adapter, reference_forward

pytestmark = pytest.mark.usefixtures("single_thread")

GATE_LOGITS = (3.0, -3.0, 3.0)  # far from 0: flipping a gate changes it a lot
TEMPERATURES = (0.5, 2.0, 0.7, 1.6)  # inside [0.01, 10] and away from 1


def _with(adapter, **changes):
    """A copy of a reference adapter with ``changes[kind]`` applied to every block's value of that kind."""
    changed = copy.deepcopy(adapter)
    for kind, change in changes.items():
        setattr(changed, kind, {block: change(value) for block, value in getattr(adapter, kind).items()})
    return changed


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_bfloat16_backbone_gives_the_reference_within_a_small_fraction_of_the_adapters_effect(attention):
    frozen = make_backbone("vit_clf")
    model = get_peft_model(make_backbone("vit_clf", attn_implementation=attention),
                           gated_vpt.GatedPromptConfig(num_prompt_tokens=8))
    randomize_adapter_(model)
    with torch.no_grad():
        for block in (m for m in model.modules() if isinstance(m, gated_vpt.GatedPromptBlock)):
            block.gvpt_temperature["default"].fill_(TEMPERATURES[block.index])
            if not block.is_last:
                block.gvpt_gate["default"].fill_(GATE_LOGITS[block.index])
    model.eval()
    pixels = images(4)
    adapter = read_adapter(model)
    with torch.no_grad():
        want = reference_forward(frozen, pixels, adapter)
        effects = {
            kind: (reference_forward(frozen, pixels, _with(adapter, **{kind: change})) - want).abs().max().item()
            for kind, change in (("gates", torch.neg), ("temperatures", torch.reciprocal), ("prompts", torch.zeros_like))
        }

    model.to(torch.bfloat16)
    model.base_model._cast_adapter_dtype("default")  # what peft does when an adapter is added to a bf16 model
    trainable = {n: p for n, p in model.named_parameters() if "gvpt_" in n}
    assert all(p.dtype == torch.float32 for p in trainable.values())
    logits = model(pixels.to(torch.bfloat16)).logits
    assert logits.dtype == torch.bfloat16
    error = (logits.float() - want).abs().max().item()
    assert error < 0.2 * min(effects.values()), (error, effects)
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())
