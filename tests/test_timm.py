"""timm's VisionTransformer, directly and through transformers' TimmWrapper classes: every configuration x every
variant against tests/reference.py (timm's block written from its weights), in float64 on the fast and the plain
path, gradients, adapter files shared between a timm model and its wrapper, and peft's contract.

Skipped only where timm is not installed (CI installs it with the ``test`` extra)."""

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

pytest.importorskip("timm")

import gated_vpt  # noqa: E402
from conftest import TIMM_CONFIGS, images, make_timm, randomize_adapter_  # noqa: E402
from gated_vpt import GatedPromptBlock, GatedPromptConfig  # noqa: E402
from reference import read_adapter, timm_reference_outputs  # noqa: E402
from test_backbones import VARIANTS, largest_difference  # noqa: E402
from test_gradients import _loss, _model_gradients, _reference_leaves  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

# The head each configuration reads, and the head pooling "auto" gives it (README's timm table).
AVERAGING = ("avg_no_cls", "mae_finetune")  # global_pool="avg": the head averages the rows itself, "cls" is refused
MEAN_BY_DEFAULT = AVERAGING + ("mae_tag",)
NUM_SPECIAL = {"avg_no_cls": 0, "reg_tokens": 3}
MATRIX = [(c, v) for c in TIMM_CONFIGS for v in VARIANTS if not (v == "other_pooling" and c in AVERAGING)]


def variant_config(variant: str, name: str) -> dict:
    if VARIANTS[variant] is None:
        return dict(head_pooling="cls" if name in MEAN_BY_DEFAULT else "mean")
    return VARIANTS[variant]


def settings(config: dict, name: str) -> dict:
    """METHOD.md's meaning of a variant's config (as test_backbones.expected_settings), with timm's default heads."""
    mode = config.get("prompt_mode", "shallow")
    return dict(
        mode=mode,
        start=config.get("prompt_start_block", 0),
        gated=config.get("gated", mode == "shallow"),
        learnable_temperature=config.get("learnable_temperature", mode == "shallow"),
        pooling=config.get("head_pooling", "mean" if name in MEAN_BY_DEFAULT else "cls"),
    )


def pixels_for(name: str, dtype=torch.float32) -> torch.Tensor:
    """Images of 16x16, or 20x20 for the model built with dynamic_img_size (5x5 patches instead of its 4x4)."""
    x = images(2)
    if name == "dynamic_img_size":
        x = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    return x.to(dtype)


def outputs(model, pixels, names) -> dict:
    output = model(pixels)
    if isinstance(output, torch.Tensor):
        return {"logits": output}
    return {name: getattr(output, name) for name in names}


def adapted(name: str, variant: str = "gated", dtype=torch.float64, **extra):
    """(frozen copy of the base, PeftModel with random adapter values) in ``dtype``, eval mode."""
    base = make_timm(name)
    frozen = copy.deepcopy(base).to(dtype)
    config = {**variant_config(variant, name), **extra}
    model = get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3, **config))
    randomize_adapter_(model)
    return frozen, model.eval().to(dtype), config


def compare(name: str, variant: str, dtype: torch.dtype, fast: bool = True) -> float:
    frozen, model, config = adapted(name, variant, dtype)
    expected = settings(config, name)
    assert model.peft_config["default"].head_pooling == expected["pooling"]
    pixels = pixels_for(name, dtype)
    with torch.no_grad(), gated_vpt.fast_path(fast):
        plain = timm_reference_outputs(frozen, pixels)
        want = timm_reference_outputs(frozen, pixels, read_adapter(model, **expected))
        got = outputs(model, pixels, want)
    for key in got:
        assert got[key].dtype == dtype and got[key].shape == want[key].shape, key
    main = next(iter(got))
    assert (got[main][:, -plain[main].shape[1]:] - plain[main]).abs().max() > 1e-3, "the adapter changed nothing"
    record = model.peft_config["default"].backbone
    assert record == dict(model_type="timm_vit", hidden_size=32, num_hidden_layers=4, num_special_tokens=NUM_SPECIAL.get(name, 1))
    return largest_difference(got, want)


@pytest.mark.parametrize("name", TIMM_CONFIGS)
def test_reference_reproduces_the_plain_timm_model(name):
    """The hand-written block and heads are right: without an adapter they give timm's own numbers."""
    model = make_timm(name)
    pixels = pixels_for(name)
    with torch.no_grad():
        got = timm_reference_outputs(model, pixels)
        want = outputs(model, pixels, got)
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "plain_path"])
@pytest.mark.parametrize("name, variant", MATRIX)
def test_matches_reference(name, variant, fast):
    """float64, so that any difference beyond rounding is a real one."""
    difference = compare(name, variant, torch.float64, fast)
    assert difference < 1e-10, f"{name}/{variant}: largest difference {difference:.3g}"


@pytest.mark.parametrize("name", TIMM_CONFIGS)
def test_matches_reference_in_float32(name):
    difference = compare(name, "gated", torch.float32)
    assert difference < 1e-5, f"{name}: largest difference {difference:.3g}"


@pytest.mark.parametrize("name, variant", [("cls_token", v) for v in VARIANTS] + [(c, "gated") for c in TIMM_CONFIGS])
def test_gradients_match_the_reference(name, variant):
    """float64 gradients of every adapter parameter, and of the saved classifier, against autograd through the
    reference (fast path: the plain path's gradients are checked for transformers' blocks in test_gradients.py)."""
    frozen, model, config = adapted(name, variant)
    frozen.requires_grad_(False)
    pixels = pixels_for(name, torch.float64)
    got = outputs(model, pixels, timm_reference_outputs(frozen, pixels))
    weights = {key: torch.randn(value.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
               for key, value in got.items()}
    _loss(got, weights).backward()
    gradients = _model_gradients(model)
    adapter = read_adapter(model, **settings(config, name))
    leaves = _reference_leaves(adapter)
    _loss(timm_reference_outputs(frozen, pixels, adapter), weights).backward()
    assert set(gradients) == set(leaves)
    for key, leaf in leaves.items():
        assert gradients[key] is not None and leaf.grad.abs().max() > 0, key
        torch.testing.assert_close(gradients[key], leaf.grad, rtol=1e-9, atol=1e-12, msg=str(key))
