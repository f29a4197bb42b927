"""The matrix: every supported backbone x every variant, against tests/reference.py (METHOD.md computed by hand)."""

import copy

import pytest
import torch
from peft import get_peft_model
from torch import nn
from transformers import BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel

import gated_vpt
from conftest import BACKBONE_NAMES, make_backbone, main_output, randomize_adapter_
from gated_vpt import GatedPromptBlock, GatedPromptConfig
from reference import num_special_tokens, read_adapter, reference_forward

pytestmark = pytest.mark.usefixtures("single_thread")

MAE_BACKBONES = ("vit_mae", "mae_clf")
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


def variant_config(variant: str, backbone: str) -> dict:
    if VARIANTS[variant] is None:
        return dict(head_pooling="cls" if backbone in MAE_BACKBONES else "mean")
    return VARIANTS[variant]


def expected_settings(variant: dict, backbone: str) -> dict:
    """METHOD.md's meaning of a variant's config, worked out here rather than read from the library."""
    mode = variant.get("prompt_mode", "shallow")
    return dict(
        mode=mode,
        start=variant.get("prompt_start_block", 0),
        gated=variant.get("gated", mode == "shallow"),
        learnable_temperature=variant.get("learnable_temperature", mode == "shallow"),
        pooling=variant.get("head_pooling", "mean" if backbone in MAE_BACKBONES else "cls"),
    )


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_reference_reproduces_the_plain_backbone(backbone, pixels):
    """The hand-written blocks are right: without an adapter they give transformers' own numbers."""
    base = make_backbone(backbone)
    with torch.no_grad():
        want = main_output(base(pixels)) if backbone != "vit_mae" else _mae_in_order(base, pixels)
        got = reference_forward(base, pixels)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _mae_in_order(model, pixels):
    noise = torch.arange(model.embeddings.patch_embeddings.num_patches, dtype=torch.float32).expand(len(pixels), -1)
    return model(pixels, noise=noise).last_hidden_state


def _compare(backbone: str, variant: str, pixels: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapted model's output and the reference's, with randomised adapter values, in ``dtype``."""
    base = make_backbone(backbone)
    frozen = copy.deepcopy(base).to(dtype)
    pixels = pixels.to(dtype)
    with torch.no_grad():
        plain = main_output(frozen(pixels)) if backbone != "vit_mae" else _mae_in_order(frozen, pixels)
    config = variant_config(variant, backbone)
    model = get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3, **config))
    randomize_adapter_(model)
    model.eval().to(dtype)  # eval: prompt dropout (0.1 by default) off
    settings = expected_settings(config, backbone)
    assert model.peft_config["default"].head_pooling == settings["pooling"]
    with torch.no_grad():
        got = main_output(model(pixels))
        want = reference_forward(frozen, pixels, read_adapter(model, **settings))
    assert got.dtype == dtype and got.shape == want.shape == plain.shape
    assert (got - plain).abs().max().item() > 1e-3, "the adapter changed nothing"
    signature = model.peft_config["default"].backbone
    assert signature["num_special_tokens"] == num_special_tokens(base.config)
    assert (signature["num_hidden_layers"], signature["hidden_size"]) == (4, 32)
    assert sum(isinstance(m, GatedPromptBlock) for m in model.modules()) == 4
    return got, want


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_matches_reference(backbone, variant, pixels):
    """In float64, so that any difference beyond rounding is a real one."""
    got, want = _compare(backbone, variant, pixels, torch.float64)
    difference = (got - want).abs().max().item()
    assert difference < 1e-10, f"{backbone}/{variant}: largest difference {difference:.3g}"


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_matches_reference_in_float32(backbone, pixels):
    got, want = _compare(backbone, "gated", pixels, torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


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


def _clip():
    return CLIPVisionModel(CLIPVisionConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64))


@pytest.mark.parametrize("build", [_bert, _clip, lambda: nn.Sequential(nn.Linear(4, 4))], ids=["bert", "clip", "module"])
def test_unsupported_models_are_refused_with_the_supported_list(build):
    model = build()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as error:
        get_peft_model(model, GatedPromptConfig())
    for model_type in gated_vpt.supported_model_types():
        assert model_type in str(error.value)
    assert not any(isinstance(m, GatedPromptBlock) for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
