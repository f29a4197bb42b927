"""Many tasks on one frozen backbone: ``model(pixel_values, adapter_names=[...])`` runs each sample through its own
adapter, with outputs equal to running each adapter alone on its own samples."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

import gated_vpt
from conftest import images, main_output, make_backbone, randomize_adapter_

# Variants that can share a batch: same prompt count, start block, mode and pooling; different gates/temperatures.
SHALLOW = {
    "gated": dict(),
    "no_gates": dict(gated=False),
    "no_temperature": dict(learnable_temperature=False),
    "vpt_shallow": dict(gated=False, learnable_temperature=False),
}
ORDER = ["no_gates", "gated", "vpt_shallow", "gated", "no_temperature", "vpt_shallow", "no_gates", "no_temperature"]


def _model(family: str, adapters: dict[str, dict], num_prompt_tokens: int = 3):
    names = list(adapters)
    config = lambda name: gated_vpt.GatedPromptConfig(num_prompt_tokens=num_prompt_tokens, **adapters[name])
    model = get_peft_model(make_backbone(family), config(names[0]), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config(name))
    for seed, name in enumerate(names):
        randomize_adapter_(model, name, seed=seed + 1)
    return model.eval()


def _each_alone(model, x: torch.Tensor, order: list[str]) -> torch.Tensor:
    """The reference: every adapter run by itself on the samples that name it."""
    expected = None
    for name in dict.fromkeys(order):
        rows = [i for i, n in enumerate(order) if n == name]
        model.set_adapter(name)
        out = main_output(model(x[rows]))
        expected = out.new_empty(len(order), *out.shape[1:]) if expected is None else expected
        expected[rows] = out
    return expected


def _check_mixed_equals_alone(model, order: list[str]) -> None:
    x = images(len(order), seed=3)
    with torch.no_grad():
        mixed = main_output(model(x, adapter_names=order))
        expected = _each_alone(model, x, order)
    assert torch.equal(mixed, expected)
    outputs = {name: expected[order.index(name)] for name in dict.fromkeys(order)}
    assert all(not torch.equal(outputs[a], outputs[b]) for a in outputs for b in outputs if a < b)  # they differ


def test_mixed_batch_equals_each_adapter_alone_on_a_bare_backbone():
    _check_mixed_equals_alone(_model("vit", SHALLOW), ORDER)


def test_mixed_batch_routes_each_adapters_own_classifier():
    _check_mixed_equals_alone(_model("vit_clf", SHALLOW), ORDER)


def test_mixed_batch_of_deep_prompt_adapters_on_a_two_special_token_backbone():
    deep = {"deep_a": dict(prompt_mode="deep"), "deep_b": dict(prompt_mode="deep")}
    _check_mixed_equals_alone(_model("deit", deep, num_prompt_tokens=2), ["deep_b", "deep_a", "deep_a", "deep_b"])


def test_mixed_batch_leaves_the_active_adapter_in_charge_afterwards():
    model = _model("vit", SHALLOW)
    model.set_adapter("gated")
    x = images(2)
    with torch.no_grad():
        before = main_output(model(x))
        model(x, adapter_names=["no_gates", "vpt_shallow"])
        with pytest.raises(ValueError):
            model(x, adapter_names=["gated", "nope"])
        assert torch.equal(main_output(model(x)), before)


@pytest.mark.parametrize(
    "other, field",
    [
        (dict(num_prompt_tokens=4), "num_prompt_tokens"),
        (dict(num_prompt_tokens=3, prompt_start_block=1), "prompt_start_block"),
        (dict(num_prompt_tokens=3, prompt_mode="deep"), "prompt_mode"),
    ],
)
def test_adapters_with_another_prompt_layout_cannot_share_a_batch(other, field):
    model = get_peft_model(make_backbone("vit"), gated_vpt.GatedPromptConfig(num_prompt_tokens=3))
    model.add_adapter("other", gated_vpt.GatedPromptConfig(**other))
    with pytest.raises(ValueError, match=f"must share .*{field}.*separate batches"):
        model.eval()(images(2), adapter_names=["default", "other"])


def test_unknown_adapter_names_are_listed():
    model = get_peft_model(make_backbone("vit"), gated_vpt.GatedPromptConfig(num_prompt_tokens=3)).eval()
    with pytest.raises(ValueError, match=r"unknown adapters \['nope'\]; loaded: \['default'\]"):
        model(images(2), adapter_names=["default", "nope"])
