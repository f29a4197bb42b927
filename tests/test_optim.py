"""The paper's optimisation: warmup + cosine values, per-epoch vs per-update stepping, and the gate group."""

import math

import pytest
import torch
from peft import get_peft_model
from transformers import ViTConfig, ViTForImageClassification

import gated_vpt
from gated_vpt.training.optim import WarmupCosine, build_optimizer, build_scheduler


def _reference(t: int, warmup: int, total: int) -> float:
    """VPT's WarmupCosineSchedule, written out."""
    if t < warmup:
        return t / max(1, warmup)
    return max(0.0, 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, total - warmup))))


@pytest.mark.parametrize("warmup, total", [(10, 100), (0, 7), (3, 4), (1, 2)])
def test_warmup_cosine_matches_the_reference_formula(warmup, total):
    factor = WarmupCosine(warmup, total)
    assert [factor(t) for t in range(total + 1)] == pytest.approx([_reference(t, warmup, total) for t in range(total + 1)])
    assert factor(0) == (0.0 if warmup else 1.0) and factor(total) == pytest.approx(0.0, abs=1e-12)


def test_warmup_longer_than_training_is_refused():
    with pytest.raises(ValueError, match="warmup_epochs"):
        build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), 5, 6, 10)


def _model():
    torch.manual_seed(0)
    base = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=3,
                                               num_attention_heads=2, intermediate_size=64, num_labels=4))
    return get_peft_model(base, gated_vpt.GatedPromptConfig(num_prompt_tokens=2))


def test_sgd_defaults_and_a_separate_gate_learning_rate():
    model = _model()
    optimizer = build_optimizer(model, "sgd", learning_rate=0.1, gate_learning_rate=5.0)
    others, gates = optimizer.param_groups
    assert (others["lr"], others["momentum"], others["weight_decay"]) == (0.1, 0.9, 0.0)
    assert gates["lr"] == 5.0 and len(gates["params"]) == 2  # L - 1 gate logits
    named = {id(p): n for n, p in model.named_parameters()}
    assert all("gvpt_gate" in named[id(p)] for p in gates["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable
    assert isinstance(build_optimizer(model, "adamw", 1e-3), torch.optim.AdamW)
    # Weight decay would pull the gate logits towards 0, i.e. every gate towards 0.5: the gate group has none.
    others, gates = build_optimizer(model, "sgd", 0.1, weight_decay=0.01, gate_learning_rate=5.0).param_groups
    assert (others["weight_decay"], gates["weight_decay"]) == (0.01, 0.0)


def test_gate_learning_rate_without_gates_is_refused():
    model = _model()
    for name, p in model.named_parameters():
        if "gvpt_gate" in name:
            p.requires_grad_(False)
    with pytest.raises(ValueError, match="no gate parameters"):
        build_optimizer(model, "sgd", 0.1, gate_learning_rate=1.0)


@pytest.mark.parametrize("step, calls_per_epoch", [("epoch", 1), ("step", 4)])
def test_schedule_per_epoch_and_per_update(step, calls_per_epoch):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=2.0)
    scheduler = build_scheduler(optimizer, num_epochs=5, warmup_epochs=2, updates_per_epoch=4, step=step)
    seen = []
    for _ in range(5 * calls_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    total, warmup = 5 * calls_per_epoch, 2 * calls_per_epoch
    assert seen == pytest.approx([2.0 * _reference(t, warmup, total) for t in range(total)])
