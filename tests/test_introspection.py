"""gate_report against a direct computation of docs/HOW_IT_WORKS.md's unrolled selection weights."""

import math

import pytest
import torch
from peft import get_peft_model
from transformers import ViTConfig, ViTForImageClassification

import gated_vpt
from gated_vpt import GatedPromptBlock, gate_report


def _model(num_layers=4, **config):
    torch.manual_seed(0)
    base = ViTForImageClassification(
        ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
                  intermediate_size=64, num_labels=3)
    )
    return get_peft_model(base, gated_vpt.GatedPromptConfig(num_prompt_tokens=2, **config))


def _set(model, logits, temperatures):
    blocks = [m for m in model.modules() if isinstance(m, GatedPromptBlock)]
    with torch.no_grad():
        for block in blocks:
            if "default" in block.gvpt_gate:
                block.gvpt_gate["default"].fill_(logits[block.index])
            if "default" in block.gvpt_temperature:
                block.gvpt_temperature["default"].fill_(temperatures[block.index])


def test_selection_ratio_matches_the_unrolled_formula(tmp_path):
    model = _model()
    logits, temperatures = [-1.0, 0.5, 2.0], [0.5, 3.0, 20.0, 0.001]
    _set(model, logits, temperatures)
    g = [1 / (1 + math.exp(-x)) for x in logits]
    weights = [g[0] * (1 - g[1]) * (1 - g[2]), g[1] * (1 - g[2]), g[2]]
    left = (1 - g[0]) * (1 - g[1]) * (1 - g[2])
    for report in (gate_report(model), gate_report(_saved(model, tmp_path))):
        assert [b.block for b in report.blocks] == [0, 1, 2, 3]
        assert [b.gate for b in report.blocks[:3]] == pytest.approx(g, abs=1e-6)
        assert report.blocks[3].gate is None and report.blocks[3].selection_ratio is None
        assert [b.weight for b in report.blocks[:3]] == pytest.approx(weights, abs=1e-6)
        assert [b.selection_ratio for b in report.blocks[:3]] == pytest.approx([w / sum(weights) for w in weights], abs=1e-6)
        assert report.prompt_weight == pytest.approx(left, abs=1e-6)
        assert sum(weights) + left == pytest.approx(1.0, abs=1e-6)
        # temperatures are reported as used in the forward pass: clamped to [0.01, 10]
        assert [b.temperature for b in report.blocks] == pytest.approx([0.5, 3.0, 10.0, 0.01], abs=1e-6)


def _saved(model, path):
    model.save_pretrained(path)
    return path


def test_report_for_later_insertion_and_ungated_variants():
    late = gate_report(_model(prompt_start_block=2))
    assert [b.gate is not None for b in late.blocks] == [False, False, True, False]
    assert [b.temperature is not None for b in late.blocks] == [False, False, True, True]
    shallow = gate_report(_model(gated=False, learnable_temperature=False))
    assert all(b.gate is None and b.temperature is None for b in shallow.blocks) and shallow.prompt_weight is None
    assert "| 0 | - | - | - |" in shallow.format_table()


def test_report_errors_name_the_problem():
    with pytest.raises(ValueError, match="no gated_vpt adapter"):
        gate_report(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'other'"):
        gate_report(_model(), adapter_name="other")
