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


# --- mixed batches in training mode: each sample's own dropout rate, gradients to its own adapter only ----------

RATES = {"heavy": 0.6, "light": 0.2, "none": 0.0}  # "heavy" sorts first: a batch-wide rate would be its 0.6
TRAIN_ORDER = ["none", "heavy", "light", "none", "heavy", "light", "heavy", "none"]


def _dropped_prompts(model):
    """The prompt rows as the first block receives them (after dropout), appended on every forward."""
    seen = []
    first = next(m for m in model.modules() if isinstance(m, gated_vpt.GatedPromptBlock))
    first.base_layer.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 1:4].detach().clone()))
    return seen


def _adapter_params(model, name: str) -> dict:
    return {k: p for k, p in model.named_parameters() if k.endswith(f".{name}") or f".{name}." in k}


def _adapter_grads(model, name: str) -> dict:
    return {k: p.grad.clone() for k, p in _adapter_params(model, name).items()}


@pytest.mark.usefixtures("plain_path")  # the prompts are read where they enter the wrapped block
def test_mixed_batch_in_training_drops_each_samples_prompts_at_its_own_rate_and_matches_each_adapter_alone(monkeypatch):
    adapters = {name: dict(prompt_dropout=rate) for name, rate in RATES.items()}
    model = _model("vit_clf", adapters)
    for name in RATES:  # all three trainable at once (peft's set_adapter takes one name for the saved heads)
        for parameter in _adapter_params(model, name).values():
            parameter.requires_grad_(True)
    model.train()
    seen = _dropped_prompts(model)
    x, weights = images(len(TRAIN_ORDER), seed=4), torch.randn(len(TRAIN_ORDER), 3)
    torch.manual_seed(0)
    (model(x, adapter_names=TRAIN_ORDER).logits * weights).sum().backward()
    mixed = {name: _adapter_grads(model, name) for name in RATES}
    entered = seen.pop()

    masks = {}
    for i, name in enumerate(TRAIN_ORDER):
        prompt = dict(model.named_parameters())[f"base_model.model.vit.layers.0.gvpt_prompt.{name}"].detach()
        keep = entered[i] != 0
        # dropout: kept values scaled by 1 / (1 - rate), on the configured share of the prompt entries
        torch.testing.assert_close(entered[i][keep], prompt[keep] / (1 - RATES[name]))
        masks.setdefault(name, []).append(keep)
    for name, rate in RATES.items():
        dropped = 1 - torch.stack(masks[name]).float().mean().item()
        assert (dropped == 0) if rate == 0 else abs(dropped - rate) < 0.15, (name, dropped)

    # Each adapter alone on its own samples, with the masks of the mixed run, gives the same gradients.
    dropout = torch.nn.functional.dropout
    for name in RATES:
        rows = [i for i, n in enumerate(TRAIN_ORDER) if n == name]
        keep = torch.stack(masks[name])

        def recorded(x, p=0.5, training=True, inplace=False):
            if training and x.shape == keep.shape:
                return x * keep / (1 - p)
            return dropout(x, p, training, inplace)

        monkeypatch.setattr(torch.nn.functional, "dropout", recorded)
        model.set_adapter(name)
        model.zero_grad()
        (model(x[rows]).logits * weights[rows]).sum().backward()
        monkeypatch.setattr(torch.nn.functional, "dropout", dropout)
        alone = _adapter_grads(model, name)
        assert alone.keys() == mixed[name].keys() and len(alone) == 1 + 3 + 4 + 2  # prompts, gates, temperatures, head
        for key, grad in alone.items():
            assert grad.abs().sum() > 0, key
            torch.testing.assert_close(mixed[name][key], grad, rtol=1e-3, atol=1e-3 * grad.abs().max().item(), msg=key)


def test_mixed_batch_under_gradient_checkpointing_is_refused_with_gradients_and_runs_without():
    base = make_backbone("vit_clf")
    base.activation_checkpointing_enable()
    model = get_peft_model(base, gated_vpt.GatedPromptConfig(num_prompt_tokens=3), adapter_name="a")
    model.add_adapter("b", gated_vpt.GatedPromptConfig(num_prompt_tokens=3))
    model.train()
    x = images(2)
    with pytest.raises(ValueError, match="gradient checkpointing.*torch.no_grad"):
        model(x, adapter_names=["a", "b"])
    with torch.no_grad():
        assert model(x, adapter_names=["a", "b"]).logits.shape == (2, 3)
