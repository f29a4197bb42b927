"""The matrix: every supported backbone x every variant, against tests/reference.py (the method computed by hand)."""

import copy
import re

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel, CLIPVisionModelWithProjection

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


def variant_config(variant: str, backbone: str, mean_by_default: tuple = MEAN_BY_DEFAULT) -> dict:
    """The config of ``variant``; "other_pooling" is the head pooling that "auto" does not give ``backbone`` (whose
    "auto" is the mean when it is in ``mean_by_default``)."""
    if VARIANTS[variant] is None:
        return dict(head_pooling="cls" if backbone in mean_by_default else "mean")
    return VARIANTS[variant]


def expected_settings(variant: dict, backbone: str, mean_by_default: tuple = MEAN_BY_DEFAULT) -> dict:
    """docs/HOW_IT_WORKS.md's meaning of a variant's config, worked out here rather than read from the library."""
    mode = variant.get("prompt_mode", "shallow")
    return dict(
        mode=mode,
        start=variant.get("prompt_start_block", 0),
        gated=variant.get("gated", mode == "shallow"),
        learnable_temperature=variant.get("learnable_temperature", mode == "shallow"),
        pooling=variant.get("head_pooling", "mean" if backbone in mean_by_default else "cls"),
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


# --- the matrix beyond the reference: disabling, adapter files, attention implementations, checkpointing ----------


def _adapted(backbone: str, **build) -> nn.Module:
    model = get_peft_model(make_backbone(backbone, **build), GatedPromptConfig(num_prompt_tokens=3, prompt_dropout=0.0))
    return randomize_adapter_(model).eval()


def _main(model, pixels, backbone: str) -> torch.Tensor:
    return next(iter(outputs(model, pixels, backbone, ["logits" if hasattr(model, "classifier") else "last_hidden_state"]).values()))


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_disable_adapter_is_the_base_exactly(backbone, pixels):
    untouched = make_backbone(backbone)
    model = _adapted(backbone)
    with torch.no_grad(), model.disable_adapter():
        got = _main(model, pixels, backbone)
    with torch.no_grad():
        assert torch.equal(got, _main(untouched, pixels, backbone))


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_save_and_reload_is_bit_identical(backbone, tmp_path, pixels):
    model = _adapted(backbone)
    with torch.no_grad():
        want = _main(model, pixels, backbone)
    model.save_pretrained(tmp_path)
    block_keys = [k for k in load_file(tmp_path / "adapter_model.safetensors") if "gvpt_" in k]
    assert len(block_keys) == 1 + 3 + 4  # prompts at block 0, 3 gate logits, 4 temperatures
    assert all(re.search(r"(^|\.)encoder\.layer\.\d\.gvpt_", k) and "layers" not in k and "vision_model" not in k
               for k in block_keys), block_keys
    for load in (PeftModel.from_pretrained, gated_vpt.load_adapter):  # peft's loader, and the checked one
        again = load(make_backbone(backbone), tmp_path).eval()
        with torch.no_grad():
            assert torch.equal(_main(again, pixels, backbone), want)


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_eager_and_sdpa_agree_with_the_reference(backbone, pixels):
    results = {}
    for attn in ("eager", "sdpa"):
        model = _adapted(backbone, attn_implementation=attn)
        assert model.config._attn_implementation == attn
        with torch.no_grad():
            results[attn] = _main(model, pixels, backbone)
    settings = expected_settings({}, backbone)
    with torch.no_grad():
        want = reference_outputs(make_backbone(backbone), pixels, read_adapter(model, **settings))
    torch.testing.assert_close(results["eager"], results["sdpa"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["sdpa"], next(iter(want.values())), rtol=1e-5, atol=1e-5)


def _gradients(backbone: str, checkpointing: bool) -> tuple[dict, int]:
    """The trainable parameters' gradients of a loss, and how often the blocks' first norms ran (forward and backward:
    transformers recomputes a checkpointed block's ``forward``, inside its hooks; so does the fast path)."""
    base = make_backbone(backbone)
    if checkpointing:
        base.activation_checkpointing_enable()
    model = randomize_adapter_(get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3, prompt_dropout=0.0)))
    model.train()
    calls = []
    norm_before = gated_vpt.BACKBONES[base.config.model_type].block.norm_before
    for block in (m for m in model.modules() if isinstance(m, GatedPromptBlock)):
        block.base_layer.get_submodule(norm_before).register_forward_pre_hook(lambda module, args: calls.append(1))
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    _main(model, pixels, backbone).square().mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}, len(calls)


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_gradient_checkpointing_gives_the_same_gradients(backbone):
    (plain, plain_runs), (checkpointed, checkpointed_runs) = _gradients(backbone, False), _gradients(backbone, True)
    assert (plain_runs, checkpointed_runs) == (4, 8), "checkpointing must recompute every block in the backward pass"
    assert plain.keys() == checkpointed.keys() and any("gvpt_gate" in name for name in plain)
    for name, grad in plain.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


# --- the per-backbone rules of the README ---------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", AVERAGING_HEADS)
def test_cls_pooling_is_refused_where_the_head_averages_the_tokens(backbone):
    base = make_backbone(backbone)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match="head_pooling='cls'.*averages the tokens"):
        get_peft_model(base, GatedPromptConfig(head_pooling="cls"))
    assert not any(isinstance(m, GatedPromptBlock) for m in base.modules())
    assert all(torch.equal(state[k], v) for k, v in base.state_dict().items())


@pytest.mark.parametrize("pooling, rows", [("auto", 16), ("mean", 16 + 3)])
def test_siglip_attention_pooling_reads_the_image_tokens_only_unless_mean_pooling(pooling, rows, pixels):
    """By default SigLIP's probe attends over the 16 image tokens (as it was trained); with mean pooling the
    prompt rows stay in the sequence, so the probe (and any mean over last_hidden_state) reads them too."""
    model = get_peft_model(make_backbone("siglip"), GatedPromptConfig(num_prompt_tokens=3, head_pooling=pooling)).eval()
    seen = []
    model.base_model.model.head.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        output = model(pixels)
    assert seen == [rows] and output.last_hidden_state.shape[1] == rows


@pytest.mark.usefixtures("plain_path")
def test_clip_prompts_enter_after_the_pre_encoder_layernorm(pixels):
    """CLIP's pre_layrnorm runs on the embeddings before block 0; the prompts are inserted at the block, so block 0
    sees them unnormalised, and the CLS and patch rows exactly as the plain model's block 0 does."""
    model = get_peft_model(make_backbone("clip"), GatedPromptConfig(num_prompt_tokens=3)).eval()
    plain_inputs, inputs = [], []
    block = model.base_model.model.encoder.layers[0]
    block.base_layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with torch.no_grad():
        model(pixels)
        with model.disable_adapter():
            model(pixels)
    prompted, plain = inputs
    assert torch.equal(prompted[:, 1:4], block.gvpt_prompt["default"].expand(2, -1, -1))
    assert torch.equal(torch.cat((prompted[:, :1], prompted[:, 4:]), dim=1), plain)


@pytest.mark.parametrize("in_memory, in_file", [
    ("vit.layers.2", "vit.encoder.layer.2"),  # ViT since transformers 5.9
    ("vit.encoder.layer.2", "vit.encoder.layer.2"),  # ViT before, Dinov2
    ("encoder.layers.2", "encoder.layer.2"),  # CLIPVisionModel, SiglipVisionModel
    ("vision_model.encoder.layers.2", "encoder.layer.2"),  # their wrappers, and CLIPVisionModel before 5.x
    ("ijepa.layers.2", "ijepa.encoder.layer.2"),
])
def test_adapter_keys_fold_every_block_layout(in_memory, in_file):
    fold = gated_vpt.GatedPromptModel._remove_adapter_name_from_key
    assert fold(f"base_model.model.{in_memory}.gvpt_prompt.default", "default") == f"base_model.model.{in_file}.gvpt_prompt"


def test_an_adapter_saved_on_one_layout_loads_on_another(tmp_path, pixels):
    """CLIPVisionModel holds its blocks at ``encoder.layers``, CLIPVisionModelWithProjection at
    ``vision_model.encoder.layers`` (as CLIPVisionModel did before transformers 5): one adapter file serves both."""
    model = _adapted("clip")
    with torch.no_grad():
        want = model(pixels).pooler_output
    model.save_pretrained(tmp_path)
    wrapped = CLIPVisionModelWithProjection(make_backbone("clip").config).eval()
    wrapped.vision_model.load_state_dict(make_backbone("clip").state_dict())
    again = PeftModel.from_pretrained(wrapped, tmp_path).eval()
    assert [n for n, _ in again.named_parameters() if "gvpt_prompt" in n] == [
        "base_model.model.vision_model.encoder.layers.0.gvpt_prompt.default"]
    with torch.no_grad():
        got = again(pixels)
        projected = wrapped.visual_projection(want)
    torch.testing.assert_close(got.image_embeds, projected, rtol=0, atol=0)


@pytest.mark.parametrize("saved, other", [("siglip", "clip"), ("clip_clf", "ijepa_clf")])
def test_an_adapter_for_another_family_is_refused_before_any_change(saved, other, tmp_path):
    _adapted(saved).save_pretrained(tmp_path)
    base = make_backbone(other)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match="num_special_tokens"):
        PeftModel.from_pretrained(base, tmp_path)
    assert not any(isinstance(m, GatedPromptBlock) for m in base.modules())
    assert not any(m._forward_hooks for m in base.modules())
    assert all(torch.equal(state[k], v) for k, v in base.state_dict().items())


@pytest.mark.parametrize("backbone, pipeline_tag", [("clip", "image-feature-extraction"), ("siglip_clf", "image-classification"),
                                                    ("ijepa_clf", "image-classification"), ("dinov3", "image-feature-extraction")])
def test_card_of_a_new_family_names_its_pipeline_and_a_usage_snippet_that_runs(backbone, pipeline_tag, tmp_path, pixels,
                                                                               monkeypatch):
    from huggingface_hub import ModelCard

    from gated_vpt.card import write_model_card

    make_backbone(backbone).save_pretrained(tmp_path / "base")
    model = _adapted(backbone)
    model.save_pretrained(tmp_path / "adapter")
    write_model_card(tmp_path / "adapter", model, base_model=str(tmp_path / "base"))
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.pipeline_tag == pipeline_tag
    snippet = re.search(r"## Usage\n\n```python\n(.*?)```", card.text, re.S).group(1)
    scope: dict = {}
    monkeypatch.chdir(tmp_path)  # the card names the local base and adapter folders, not their absolute paths
    exec(snippet, scope)
    with torch.no_grad():
        assert torch.equal(_main(scope["model"], pixels, backbone), _main(model, pixels, backbone))
