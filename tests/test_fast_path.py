"""The fast path (blocks computed from the backbone table's layout, discarded prompt rows skipped, deep prompts' keys
and values cached in eval mode) against the plain path (each wrapped block's own forward), which
tests/test_backbones.py checks against the independent reference."""

import copy
import dataclasses
import io

import pytest
import torch
from peft import get_peft_model

import gated_vpt
from conftest import images, main_output, make_backbone, randomize_adapter_
from gated_vpt import GatedPromptBlock, GatedPromptConfig
from test_backbones import MATRIX, variant_config

pytestmark = pytest.mark.usefixtures("single_thread")


def blocks(model):
    return [m for m in model.modules() if isinstance(m, GatedPromptBlock)]


def adapted(backbone: str, variant: str = "gated", dtype=torch.float64, **extra):
    config = {**variant_config(variant, backbone), **extra}
    model = get_peft_model(make_backbone(backbone), GatedPromptConfig(num_prompt_tokens=3, prompt_dropout=0.0, **config))
    return randomize_adapter_(model).to(dtype)


def count_inner_calls(model):
    calls = []
    for block in blocks(model):
        block.base_layer.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def output_and_grads(model, pixels, fast: bool):
    """Training-mode output (prompt dropout 0) and the gradients of a fixed random projection of it."""
    model.train()
    model.zero_grad(set_to_none=True)
    with gated_vpt.fast_path(fast):
        out = main_output(model(pixels))
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads


@pytest.mark.parametrize("backbone, variant", MATRIX)
def test_fast_path_equals_the_plain_path_with_gradients(backbone, variant, pixels):
    """Float64: outputs and every trainable parameter's gradient agree to rounding."""
    model = adapted(backbone, variant)
    pixels = pixels.double()
    calls = count_inner_calls(model)
    plain, plain_grads = output_and_grads(model, pixels, fast=False)
    assert len(calls) == 4
    calls.clear()
    fast, fast_grads = output_and_grads(model, pixels, fast=True)
    start = variant_config(variant, backbone).get("prompt_start_block", 0)
    assert len(calls) == start, "prompted blocks ran their own forward: the fast path did not apply"
    assert (fast - plain).abs().max().item() < 1e-12
    assert fast_grads.keys() == plain_grads.keys() and any("gvpt_prompt" in n for n in fast_grads)
    for name, grad in plain_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("variant", ["gated", "vpt_deep", "deep_from_block_1", "start_block_2"])
@pytest.mark.parametrize("backbone", ["vit_clf", "mae_clf", "dinov2_reg", "dinov3"])
def test_eval_mode_with_the_key_value_cache_equals_the_plain_path(backbone, variant, pixels):
    model = adapted(backbone, variant).eval()
    pixels = pixels.double()
    with torch.no_grad(), gated_vpt.fast_path(False):
        plain = main_output(model(pixels))
    with torch.inference_mode():
        first = main_output(model(pixels))
        second = main_output(model(pixels))
    with torch.no_grad():  # entries made under inference_mode serve plain no_grad calls too
        third = main_output(model(pixels))
    assert (first - plain).abs().max().item() < 1e-12
    assert torch.equal(first, second) and torch.equal(first, third)


def _rows_through_the_mlp(model, pixels, fast=True):
    rows = []
    for block in blocks(model):
        block.base_layer.mlp.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[1]))
    with torch.no_grad(), gated_vpt.fast_path(fast):
        model(pixels)
    return rows


@pytest.mark.parametrize(
    "backbone, variant, expected",
    [
        ("vit_clf", "gated", [20, 20, 20, 17]),  # CLS head: the last block's prompt rows are discarded
        ("vit_clf", "vpt_deep", [17, 17, 17, 17]),  # every block's prompt rows are replaced by the next set
        ("vit_clf", "deep_from_block_1", [17, 17, 17, 17]),
        ("mae_clf", "gated", [20, 20, 20, 20]),  # the MAE head averages the last block's prompt rows
        ("mae_clf", "vpt_deep", [17, 17, 17, 20]),
        ("dinov2_reg", "vpt_deep", [19, 19, 19, 19]),  # CLS + 2 registers + 16 patches
    ],
)
def test_only_the_rows_whose_output_is_used_go_through_the_mlp(backbone, variant, expected, pixels):
    model = adapted(backbone, variant, dtype=torch.float32).eval()
    assert _rows_through_the_mlp(model, pixels) == expected
    plain = adapted(backbone, variant, dtype=torch.float32).eval()
    prompted = 3 + (17 if backbone != "dinov2_reg" else 19)
    assert _rows_through_the_mlp(plain, pixels, fast=False)[-1] == prompted


def deep_eval_model():
    return adapted("vit_clf", "vpt_deep").eval()


def plain_output(model, pixels):
    with torch.no_grad(), gated_vpt.fast_path(False):
        return main_output(model(pixels))


def fast_output(model, pixels):
    with torch.no_grad():
        return main_output(model(pixels))


def test_key_value_cache_is_used_and_follows_in_place_changes(pixels):
    model = deep_eval_model()
    pixels = pixels.double()
    norm_calls = []
    for block in blocks(model):
        block.base_layer.layernorm_before.register_forward_pre_hook(lambda module, args: norm_calls.append(args[0].shape[1]))
    before = fast_output(model, pixels)
    assert sorted(set(norm_calls)) == [3, 17]  # the prompts' norm once per block, the image tokens'
    norm_calls.clear()
    fast_output(model, pixels)
    assert norm_calls == [17] * 4, "the prompts' keys and values were recomputed"
    with torch.no_grad():
        blocks(model)[2].gvpt_prompt["default"].mul_(-2.0)
    changed = fast_output(model, pixels)
    assert (changed - before).abs().max() > 1e-3
    assert (changed - plain_output(model, pixels)).abs().max() < 1e-12


def test_key_value_cache_follows_the_frozen_weights_and_load_state_dict(pixels):
    model = deep_eval_model()
    pixels = pixels.double()
    fast_output(model, pixels)
    with torch.no_grad():
        blocks(model)[1].base_layer.attention.k_proj.weight.mul_(1.5)
    torch.testing.assert_close(fast_output(model, pixels), plain_output(model, pixels), rtol=0, atol=1e-12)
    other = adapted("vit_clf", "vpt_deep")
    randomize_adapter_(other, seed=7)
    model.load_state_dict(other.state_dict())
    want = plain_output(model, pixels)
    torch.testing.assert_close(fast_output(model, pixels), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(want, plain_output(other.eval(), pixels), rtol=0, atol=1e-12)


def test_key_value_cache_is_dropped_on_mode_changes_and_unused_in_training(pixels):
    model = deep_eval_model()
    fast_output(model, pixels.double())
    assert all(block._prompt_kv_cache for block in blocks(model))
    model.train()
    assert not any(block._prompt_kv_cache for block in blocks(model))
    model.base_model.model.vit.layers[0].gvpt_config["default"].prompt_dropout = 0.5
    with torch.no_grad():
        first, second = (main_output(model(pixels.double())) for _ in range(2))
    assert not torch.equal(first, second), "training mode must keep resampling the prompt dropout"
    assert not any(block._prompt_kv_cache for block in blocks(model))
    model.eval()
    assert not any(block._prompt_kv_cache for block in blocks(model))


def test_a_model_with_a_filled_cache_pickles_and_copies(pixels):
    model = deep_eval_model()
    want = fast_output(model, pixels.double())
    buffer = io.BytesIO()
    torch.save(model.base_model.model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # a file written just above, not an untrusted one
    torch.testing.assert_close(fast_output(loaded, pixels.double()), want, rtol=0, atol=0)
    torch.testing.assert_close(fast_output(copy.deepcopy(model), pixels.double()), want, rtol=0, atol=0)


def test_mixed_deep_adapters_in_eval_mode_equal_the_plain_path():
    model = get_peft_model(make_backbone("deit_clf"), GatedPromptConfig(num_prompt_tokens=3, prompt_mode="deep"), "a")
    model.add_adapter("b", GatedPromptConfig(num_prompt_tokens=3, prompt_mode="deep"))
    for seed, name in enumerate("ab"):
        randomize_adapter_(model, name, seed=seed)
    model.eval()
    order = ["b", "a", "a", "b"]
    x = images(len(order), seed=4)
    with torch.no_grad():
        fast = main_output(model(x, adapter_names=order))
        with gated_vpt.fast_path(False):
            plain = main_output(model(x, adapter_names=order))
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


def test_switching_the_fast_path_off(pixels):
    model = adapted("vit_clf", "vpt_deep", dtype=torch.float32).eval()
    calls = count_inner_calls(model)
    assert gated_vpt.fast_path_enabled()
    gated_vpt.set_fast_path(False)
    try:
        assert not gated_vpt.fast_path_enabled()
        with torch.no_grad():
            model(pixels)
        assert len(calls) == 4
        with gated_vpt.fast_path(True), torch.no_grad():
            model(pixels)
        assert len(calls) == 4 and not gated_vpt.fast_path_enabled()
    finally:
        gated_vpt.set_fast_path(True)


def test_recorded_outputs_and_other_kernels_take_the_plain_path(pixels):
    model = adapted("vit", "gated", dtype=torch.float32).eval()
    calls = count_inner_calls(model)
    with torch.no_grad():
        hidden = model(pixels, output_hidden_states=True).hidden_states
    assert len(calls) == 4 and hidden[1].shape[1] == 20
    model.config._attn_implementation = "flex_attention"
    assert all(block._fast_parts({}) is None for block in blocks(model))


def test_two_forwards_before_one_backward(pixels):
    """Gradients accumulate through two graphs as the plain path's do (the gate writes in place, the temperature
    scales the queries in a custom function: neither may break the first graph)."""
    def grads(fast: bool):
        model = adapted("dinov2", "gated")
        model.train()
        with gated_vpt.fast_path(fast):
            loss = main_output(model(pixels.double())).square().mean() + main_output(model(pixels.double().flip(0))).mean()
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    fast, plain = grads(True), grads(False)
    for name, grad in plain.items():
        torch.testing.assert_close(fast[name], grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", ["gated", "vpt_deep"])
def test_half_precision_fast_path_matches_the_plain_path(attention, variant, pixels):
    base = make_backbone("vit_clf", attn_implementation=attention)
    model = get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3, **variant_config(variant, "vit_clf")))
    randomize_adapter_(model)
    model.to(torch.bfloat16).train()
    model.base_model._cast_adapter_dtype("default")
    x = pixels.to(torch.bfloat16)
    results = {}
    for fast in (True, False):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same prompt dropout
        with gated_vpt.fast_path(fast):
            out = model(x).logits
        out.float().sum().backward()
        results[fast] = out.float(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(results[True][0], results[False][0], rtol=0.02, atol=0.02)
    for name, grad in results[False][1].items():
        assert results[True][1][name].dtype == grad.dtype == (torch.float32 if "gvpt_" in name else torch.bfloat16)
        torch.testing.assert_close(results[True][1][name], grad, rtol=0.05, atol=0.05, msg=name)


def test_a_backbone_without_a_fast_path_entry_runs_the_plain_path(pixels, monkeypatch):
    spec = gated_vpt.BACKBONES["vit"]
    monkeypatch.setitem(gated_vpt.BACKBONES, "vit", dataclasses.replace(spec, fast_path=False))
    model = adapted("vit_clf", "vpt_deep", dtype=torch.float32).eval()
    calls = count_inner_calls(model)
    with torch.no_grad():
        model(pixels)
    assert len(calls) == 4
