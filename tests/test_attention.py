"""Attention: the temperature under eager, sdpa and flex attention; gradient checkpointing; what
``output_hidden_states`` / ``output_attentions`` return for prompt rows; attention masks."""

import math

import pytest
import torch
from peft import get_peft_model

import gated_vpt
from conftest import images, main_output, make_backbone, randomize_adapter_
from gated_vpt import GatedPromptBlock, GatedPromptConfig
from reference import read_adapter, reference_forward

pytestmark = pytest.mark.usefixtures("single_thread")


def blocks(model):
    return [m for m in model.modules() if isinstance(m, GatedPromptBlock)]


def adapted(backbone="vit_clf", attn=None, **config):
    base = make_backbone(backbone, **({"attn_implementation": attn} if attn else {}))
    model = get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3, **config))
    return randomize_adapter_(model).eval()


@pytest.mark.parametrize("backbone", ["vit_clf", "deit", "dinov2_reg"])
def test_eager_and_sdpa_give_the_reference_numbers(backbone, pixels, monkeypatch):
    frozen = make_backbone(backbone)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    outputs = {}
    for attn in ("eager", "sdpa"):
        model = adapted(backbone, attn)
        assert model.config._attn_implementation == attn
        calls.clear()
        with torch.no_grad():
            outputs[attn] = main_output(model(pixels))
        assert len(calls) == (4 if attn == "sdpa" else 0), "the temperature must not force another attention path"
    want = reference_forward(frozen, pixels, read_adapter(model, pooling="cls"))
    for got in outputs.values():
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=1e-5, atol=1e-5)


def test_flex_attention_is_refused_clearly_and_the_suggested_sdpa_gives_the_reference(pixels):
    """transformers passes flex attention a BlockMask built for the sequence without prompts (torch 2.13 on CPU runs
    the plain model under flex), so the adapter refuses it, naming the fix; switching to sdpa as the message says
    gives the reference numbers."""
    frozen = make_backbone("vit_clf")
    model = adapted("vit_clf", "flex_attention")
    assert model.config._attn_implementation == "flex_attention"
    with torch.no_grad(), pytest.raises(ValueError, match="flex attention") as error:
        model(pixels)
    assert "eager or sdpa" in str(error.value)
    model.get_base_model().set_attn_implementation("sdpa")
    with torch.no_grad():
        got = model(pixels).logits
    torch.testing.assert_close(got, reference_forward(frozen, pixels, read_adapter(model)), rtol=1e-5, atol=1e-5)


def _gradients(checkpointing: bool, fast: bool = True, **config):
    base = make_backbone("vit_clf")
    if checkpointing:
        base.activation_checkpointing_enable()
    model = randomize_adapter_(get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3, prompt_dropout=0.0, **config)))
    model.train()
    norm_calls = []  # both paths run each block's first LayerNorm on its rows once
    for block in blocks(model):
        block.base_layer.layernorm_before.register_forward_pre_hook(lambda module, args: norm_calls.append(1))
    with gated_vpt.fast_path(fast):
        loss = model(images(batch=3), labels=torch.tensor([0, 1, 2])).loss
        in_forward = len(norm_calls)
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return grads, in_forward, len(norm_calls) - in_forward


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("mode", ["shallow", "deep"])
def test_gradient_checkpointing_gives_the_same_gradients(fast, mode):
    plain, _, _ = _gradients(checkpointing=False, fast=False, prompt_mode=mode)
    checkpointed, _, _ = _gradients(checkpointing=True, fast=fast, prompt_mode=mode)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_gradient_checkpointing_recomputes_the_blocks(fast):
    """With checkpointing on, the backward pass runs every block again (it saves the memory the user asked for);
    without it, it does not."""
    _, forward_plain, backward_plain = _gradients(checkpointing=False, fast=fast)
    _, forward_checkpointed, backward_checkpointed = _gradients(checkpointing=True, fast=fast)
    assert forward_plain == forward_checkpointed == 4 and backward_plain == 0
    assert backward_checkpointed == 4


@pytest.mark.parametrize("start", [0, 2])
@pytest.mark.parametrize("backbone", ["vit", "dinov2"])
def test_hidden_states_are_the_inner_blocks_prompted_sequences(backbone, start, pixels):
    """The documented behaviour: ``hidden_states[0]`` is the first block's input and ``hidden_states[i + 1]`` is
    block i's own output, both as the block sees them: prompt rows included (right after the special tokens) from
    the start block on, and before the gate mixes them. The last entry still holds the prompts and precedes the
    final LayerNorm; ``last_hidden_state`` has no prompt rows."""
    model = adapted(backbone, prompt_start_block=start)
    seen = {"in": [], "out": []}
    for block in blocks(model):
        block.base_layer.register_forward_pre_hook(lambda module, args: seen["in"].append(args[0]))
        block.base_layer.register_forward_hook(lambda module, args, out: seen["out"].append(out))
    with torch.no_grad():
        output = model(pixels, output_hidden_states=True)
    states = output.hidden_states
    assert len(states) == 4 + 1
    assert [s.shape[1] for s in states] == [17 + 3 * (start == 0)] + [17 + 3 * (i >= start) for i in range(4)]
    assert torch.equal(states[0], seen["in"][0])
    for index in range(4):
        assert torch.equal(states[index + 1], seen["out"][index])
    if start == 0:
        assert torch.equal(states[0][:, 1:4], blocks(model)[0].gvpt_prompt["default"].expand(2, -1, -1))
    assert output.last_hidden_state.shape[1] == 17


def test_eager_attention_maps_include_prompt_rows_and_the_temperature(pixels):
    model = adapted("vit", "eager")
    with torch.no_grad():
        output = model(pixels, output_attentions=True, output_hidden_states=True)
    maps = output.attentions
    assert len(maps) == 4 and all(m.shape == (2, 2, 20, 20) for m in maps)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 20))
    # block 0's map, recomputed by hand from its input and its clamped temperature
    block = blocks(model)[0]
    inner = block.base_layer
    x = torch.nn.functional.layer_norm(output.hidden_states[0], (32,), inner.layernorm_before.weight, inner.layernorm_before.bias,
                                       inner.layernorm_before.eps)
    attention = inner.attention  # (F.linear: the q_proj module itself carries the temperature hook)
    q = torch.nn.functional.linear(x, attention.q_proj.weight, attention.q_proj.bias).view(2, 20, 2, 16).transpose(1, 2)
    k = torch.nn.functional.linear(x, attention.k_proj.weight, attention.k_proj.bias).view(2, 20, 2, 16).transpose(1, 2)
    tau = block.gvpt_temperature["default"].clamp(0.01, 10)
    want = torch.softmax(q @ k.transpose(-1, -2) / (math.sqrt(16) * tau), dim=-1)
    torch.testing.assert_close(maps[0], want, rtol=1e-5, atol=1e-6)


def test_an_all_ones_attention_mask_changes_nothing(pixels):
    model = adapted()
    with torch.no_grad():
        assert torch.equal(model(pixels, attention_mask=torch.ones(2, 17, dtype=torch.long)).logits, model(pixels).logits)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_padding_attention_mask_is_refused_clearly(attn, pixels):
    model = adapted(attn=attn)
    mask = torch.ones(2, 17, dtype=torch.long)
    mask[:, -3:] = 0
    with pytest.raises(ValueError, match="attention mask"):
        model(pixels, attention_mask=mask)
