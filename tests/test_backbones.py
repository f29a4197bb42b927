"""The matrix: every supported backbone x every variant, against tests/reference.py (METHOD.md computed by hand)."""

import copy

import pytest
import torch
from peft import get_peft_model
from torch import nn
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel

import gated_vpt
from conftest import BACKBONE_NAMES, make_backbone, main_output, randomize_adapter_
from gated_vpt import GatedPromptBlock, GatedPromptConfig
from reference import num_special_tokens, read_adapter, reference_outputs

pytestmark = pytest.mark.usefixtures("single_thread")

# Heads that average the tokens themselves (no CLS row to read): mean pooling by default, 'cls' refused.
AVERAGING_HEADS = ("clip_clf", "siglip_clf", "ijepa", "ijepa_clf")
MEAN_BY_DEFAULT = ("vit_mae", "mae_clf") + AVERAGING_HEADS
VARIANTS = {
    "gated": {},
    "vpt_shallow": dict(gated=False, learnable_temperature=False),
    "vpt_deep": dict(prompt_mode="deep"),
    "gates_only": dict(learnable_temperature=False),
    "temperature_only": dict(gated=False),
    "start_block_2": dict(prompt_start_block=2),
    "deep_from_block_1": dict(prompt_mode="deep", prompt_start_block=1),
    "other_pooling": None,  # the head pooling that is not the backbone's default: mean for MAE, cls for the rest
}


MATRIX = [(b, v) for b in BACKBONE_NAMES for v in VARIANTS if not (v == "other_pooling" and b in AVERAGING_HEADS)]


def variant_config(variant: str, backbone: str) -> dict:
    if VARIANTS[variant] is None:
        return dict(head_pooling="cls" if backbone in MEAN_BY_DEFAULT else "mean")
    return VARIANTS[variant]


def expected_settings(variant: dict, backbone: str) -> dict:
    """METHOD.md's meaning of a variant's config, worked out here rather than read from the library."""
    mode = variant.get("prompt_mode", "shallow")
    return dict(
        mode=mode,
        start=variant.get("prompt_start_block", 0),
        gated=variant.get("gated", mode == "shallow"),
        learnable_temperature=variant.get("learnable_temperature", mode == "shallow"),
        pooling=variant.get("head_pooling", "mean" if backbone in MEAN_BY_DEFAULT else "cls"),
    )


def outputs(model, pixels, backbone: str, names) -> dict:
    """``model``'s outputs of those ``names`` (the ones the reference computes); ViTMAE gets its patches in order."""
    kwargs = {}
    if backbone == "vit_mae":
        kwargs["noise"] = torch.arange(16, dtype=pixels.dtype).expand(len(pixels), -1)
    output = model(pixels, **kwargs)
    return {name: getattr(output, name) for name in names}


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_reference_reproduces_the_plain_backbone(backbone, pixels):
    """The hand-written blocks and heads are right: without an adapter they give transformers' own numbers."""
    base = make_backbone(backbone)
    with torch.no_grad():
        got = reference_outputs(base, pixels)
        want = outputs(base, pixels, backbone, got)
    assert set(got) == {"logits"} if hasattr(base, "classifier") else "last_hidden_state" in got
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)


def _compare(backbone: str, variant: str, pixels: torch.Tensor, dtype: torch.dtype) -> tuple[dict, dict]:
    """The adapted model's outputs and the reference's, with randomised adapter values, in ``dtype``."""
    base = make_backbone(backbone)
    frozen = copy.deepcopy(base).to(dtype)
    pixels = pixels.to(dtype)
    with torch.no_grad():
        plain = reference_outputs(frozen, pixels)
    config = variant_config(variant, backbone)
    model = get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3, **config))
    randomize_adapter_(model)
    model.eval().to(dtype)  # eval: prompt dropout (0.1 by default) off
    settings = expected_settings(config, backbone)
    assert model.peft_config["default"].head_pooling == settings["pooling"]
    with torch.no_grad():
        want = reference_outputs(frozen, pixels, read_adapter(model, **settings))
        got = outputs(model, pixels, backbone, want)
    for name in got:
        assert got[name].dtype == dtype and got[name].shape == want[name].shape
    main = next(iter(got))
    kept = got[main].shape != plain[main].shape  # mean pooling without a CLS row: the prompt rows stay in
    assert kept == (settings["pooling"] == "mean" and main == "last_hidden_state" and num_special_tokens(base.config) == 0)
    assert (got[main][:, -plain[main].shape[1]:] - plain[main]).abs().max().item() > 1e-3, "the adapter changed nothing"
    signature = model.peft_config["default"].backbone
    assert signature["num_special_tokens"] == num_special_tokens(base.config)
    assert (signature["num_hidden_layers"], signature["hidden_size"]) == (4, 32)
    assert sum(isinstance(m, GatedPromptBlock) for m in model.modules()) == 4
    return got, want


def largest_difference(got: dict, want: dict) -> float:
    return max((got[name] - want[name]).abs().max().item() for name in got)


@pytest.mark.parametrize("backbone, variant", MATRIX)
def test_matches_reference(backbone, variant, pixels):
    """In float64, so that any difference beyond rounding is a real one."""
    got, want = _compare(backbone, variant, pixels, torch.float64)
    difference = largest_difference(got, want)
    assert difference < 1e-10, f"{backbone}/{variant}: largest difference {difference:.3g}"


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_matches_reference_in_float32(backbone, pixels):
    got, want = _compare(backbone, "gated", pixels, torch.float32)
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)


def test_mae_weights_in_vit_classifier_run_without_the_noise_hook():
    """MAE weights in ViTForImageClassification (config.model_type 'vit_mae', ViTEmbeddings without masking) must
    run: the fixed-patch-order hook belongs only on embeddings that shuffle (ViTMAEEmbeddings)."""
    model = get_peft_model(make_backbone("mae_clf"), GatedPromptConfig(num_prompt_tokens=2))
    assert model(torch.zeros(1, 3, 16, 16)).logits.shape == (1, 3)


def test_mae_keeps_every_patch_in_order(pixels):
    """ViTMAEModel with mask_ratio 0 still shuffles patches unless given noise; the adapter fixes the order."""
    model = get_peft_model(make_backbone("vit_mae"), GatedPromptConfig(num_prompt_tokens=2)).eval()
    with torch.no_grad():
        first, second = model(pixels), model(pixels)
    assert torch.equal(first.last_hidden_state, second.last_hidden_state)
    assert first.last_hidden_state.shape[1] == 1 + 16
    assert torch.equal(first.ids_restore, torch.arange(16).expand(2, -1))


def test_mae_with_masking_is_refused():
    base = make_backbone("vit_mae", mask_ratio=0.75)
    with pytest.raises(ValueError, match="mask_ratio"):
        get_peft_model(base, GatedPromptConfig())
    assert not any(isinstance(m, GatedPromptBlock) for m in base.modules())


def _bert():
    return BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))


def _clip_with_text():
    """CLIPModel has model_type 'clip' like CLIPForImageClassification, but its heads are not the table's."""
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return CLIPModel(CLIPConfig(vision_config=dict(image_size=16, patch_size=4, **tiny), text_config=tiny))


@pytest.mark.parametrize("build", [_bert, _clip_with_text, lambda: nn.Sequential(nn.Linear(4, 4))], ids=["bert", "clip", "module"])
def test_unsupported_models_are_refused_with_the_supported_list(build):
    model = build()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as error:
        get_peft_model(model, GatedPromptConfig())
    for model_type in gated_vpt.supported_model_types():
        assert model_type in str(error.value)
    assert not any(isinstance(m, GatedPromptBlock) for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
