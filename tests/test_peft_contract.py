"""peft's generic tuner contract, ported from peft's own tuner tests to this method: ``"__base__"`` in
``adapter_names``, argument checks, disabled or deleted adapters computing the base model exactly (ViTMAE
included), merge methods refusing clearly, tuner-layer attributes, trainability after loading, and every config
field validated as at construction."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import BACKBONE_NAMES, images, main_output, make_backbone, randomize_adapter_
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import _get_in_out_features

import gated_vpt
from gated_vpt import GatedPromptBlock, GatedPromptConfig
from gated_vpt.layer import NOT_MERGEABLE

pytestmark = pytest.mark.usefixtures("single_thread")

# Heads that read a CLS row or pool through a probe: the prompts are gone from the final sequence.
FAMILIES = ["vit_clf", "deit_clf", "mae_clf", "vit_mae", "dinov2_reg", "clip", "siglip"]
# Heads that read the final rows, prompts included (head_pooling="mean"): "__base__" rows cannot share the batch.
AVERAGING = ["clip_clf", "siglip_clf", "ijepa_clf"]


def _two_adapters(family: str, **config) -> PeftModel:
    model = get_peft_model(make_backbone(family), GatedPromptConfig(num_prompt_tokens=3, **config), adapter_name="a")
    model.add_adapter("b", GatedPromptConfig(num_prompt_tokens=3, gated=False, **{k: v for k, v in config.items() if k != "gated"}))
    randomize_adapter_(model, "a", seed=1)
    randomize_adapter_(model, "b", seed=2)
    return model.eval()


def _fixed_order(family: str, batch: int) -> dict:
    """ViTMAEModel shuffles patches at random; with prompts it uses the fixed order arange gives."""
    return {"noise": torch.arange(16, dtype=torch.float32).expand(batch, -1)} if family == "vit_mae" else {}


@pytest.mark.parametrize("config", [dict(), dict(prompt_start_block=2), dict(prompt_mode="deep", gated=False, learnable_temperature=False)])
@pytest.mark.parametrize("family", FAMILIES)
def test_base_in_adapter_names_runs_those_samples_through_the_plain_model(family, config):
    model = _two_adapters(family, **config)
    untouched = make_backbone(family)
    order = ["a", "__base__", "b", "__base__", "a", "b"]
    x = images(len(order), seed=4)
    with torch.no_grad():
        mixed = main_output(model(x, adapter_names=order))
        base_rows = [i for i, name in enumerate(order) if name == "__base__"]
        plain = main_output(untouched(x[base_rows], **_fixed_order(family, len(base_rows))))
        assert torch.allclose(mixed[base_rows], plain, atol=1e-5, rtol=1e-5)
        for name in ("a", "b"):
            rows = [i for i, n in enumerate(order) if n == name]
            model.set_adapter(name)
            assert torch.allclose(mixed[rows], main_output(model(x[rows])), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(mixed[0], main_output(untouched(x[:1], **_fixed_order(family, 1)))[0], atol=1e-3)


@pytest.mark.parametrize("family", AVERAGING)
def test_base_rows_next_to_adapters_whose_head_averages_the_prompts_are_refused_clearly(family):
    model = _two_adapters(family)
    with pytest.raises(ValueError, match="'__base__' cannot share a batch with these adapters"):
        model(images(2), adapter_names=["a", "__base__"])


def test_a_batch_of_base_samples_only_is_the_base_model():
    model = _two_adapters("vit_clf")
    x = images(3, seed=5)
    with torch.no_grad():
        assert torch.equal(model(x, adapter_names=["__base__"] * 3).logits, make_backbone("vit_clf")(x).logits)


@pytest.mark.parametrize("names", [["a"], ["a", "b", "a"], "ab"])
def test_adapter_names_of_the_wrong_length_are_a_value_error(names):
    model = _two_adapters("vit_clf")
    with pytest.raises(ValueError, match="one adapter per sample"):
        model(images(2), adapter_names=names)


def test_unknown_adapter_names_are_named():
    with pytest.raises(ValueError, match=r"unknown adapters \['c'\]"):
        _two_adapters("vit_clf")(images(2), adapter_names=["a", "c"])


@pytest.mark.parametrize("family", BACKBONE_NAMES)
def test_disabled_adapters_compute_the_base_model_exactly(family):
    """ViTMAEModel shuffles at random even with mask_ratio 0: with the adapter disabled it must shuffle as the base
    model does, so both runs draw the same noise from the same seed."""
    model = _two_adapters(family)
    untouched = make_backbone(family)
    x = images(2, seed=6)
    with torch.no_grad():
        torch.manual_seed(7)
        want = main_output(untouched(x))
        with model.disable_adapter():
            torch.manual_seed(7)
            got = main_output(model(x))
    assert torch.equal(got, want)


@pytest.mark.parametrize("family", BACKBONE_NAMES)
@pytest.mark.filterwarnings("ignore:Adapter a was active")
def test_with_every_adapter_deleted_the_model_is_the_base(family):
    model = _two_adapters(family)
    untouched = make_backbone(family)
    model.delete_adapter("a")
    model.delete_adapter("b")
    x = images(2, seed=8)
    with torch.no_grad():
        torch.manual_seed(9)
        want = main_output(untouched(x))
        torch.manual_seed(9)
        # peft's PeftModel.forward itself needs an active adapter, so run the model it wraps (blocks still wrapped).
        assert torch.equal(main_output(model.base_model.model(x)), want)
    assert sum(isinstance(m, GatedPromptBlock) for m in model.modules()) == 4


def test_deleting_the_inactive_adapter_leaves_the_active_one_unchanged():
    model = _two_adapters("vit_clf")
    model.set_adapter("a")
    x = images(2, seed=10)
    with torch.no_grad():
        before = model(x).logits
        model.delete_adapter("b")
        assert torch.equal(model(x).logits, before)
    assert not any("b" in block.gvpt_config for block in model.modules() if isinstance(block, GatedPromptBlock))


@pytest.mark.parametrize("call", ["merge_adapter", "unmerge_adapter", "merge_and_unload"])
def test_merge_methods_refuse_with_one_clear_message(call):
    model = _two_adapters("vit_clf")
    with pytest.raises(ValueError) as error:
        getattr(model, call)()
    assert str(error.value) == NOT_MERGEABLE and "unload()" in NOT_MERGEABLE
    assert sum(isinstance(m, GatedPromptBlock) for m in model.modules()) == 4


def test_tuner_layers_expose_in_and_out_features_as_none():
    blocks = [m for m in _two_adapters("vit_clf").modules() if isinstance(m, GatedPromptBlock)]
    assert blocks and all(block.in_features is None and block.out_features is None for block in blocks)
    with pytest.warns(UserWarning, match="Unsupported layer type"):
        assert _get_in_out_features(blocks[0]) == (None, None)


@pytest.mark.parametrize("is_trainable", [False, True])
def test_trainability_after_loading_follows_is_trainable(tmp_path, is_trainable):
    model = _two_adapters("vit_clf")
    model.save_pretrained(tmp_path, selected_adapters=["a"])
    loaded = PeftModel.from_pretrained(make_backbone("vit_clf"), tmp_path / "a", is_trainable=is_trainable)
    trainable = {name for name, p in loaded.named_parameters() if p.requires_grad}
    expected = {name for name, _ in loaded.named_parameters() if ".gvpt_" in name or ".modules_to_save." in name}
    assert trainable == (expected if is_trainable else set())
    loaded.load_adapter(tmp_path / "a", adapter_name="again")
    assert {name for name, p in loaded.named_parameters() if p.requires_grad} == trainable  # adding keeps trainability


def test_low_cpu_mem_usage_loads_the_same_adapter(tmp_path):
    model = _two_adapters("vit_clf")
    model.set_adapter("a")
    model.save_pretrained(tmp_path, selected_adapters=["a"])
    x = images(2, seed=11)
    loaded = PeftModel.from_pretrained(make_backbone("vit_clf"), tmp_path / "a", low_cpu_mem_usage=True)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_prompt_tokens", 1025), ("num_prompt_tokens", 10**6), ("num_prompt_tokens", 1e9),
        ("modules_to_save", False), ("modules_to_save", 0), ("modules_to_save", [""]), ("modules_to_save", ["head", 3]),
        ("backbone", "vit"), ("backbone", ["vit"]), ("backbone", {"model_type": "vit", "hidden_size": 32}),
        ("backbone", {"model_type": "vit", "hidden_size": 0, "num_hidden_layers": 4, "num_special_tokens": 1}),
        ("task_type", "SEQ_CLS"), ("base_model_name_or_path", 5), ("revision", ["main"]),
    ],
)
def test_every_config_field_is_validated(field, value):
    with pytest.raises(ValueError, match=f"GatedPromptConfig.{field}"):
        GatedPromptConfig(**{field: value})


def test_the_prompt_bound_says_why():
    with pytest.raises(ValueError, match=r"at most 1024.*square of patches plus prompts"):
        GatedPromptConfig(num_prompt_tokens=5000)
    assert GatedPromptConfig(num_prompt_tokens=1024).num_prompt_tokens == 1024


def test_modules_to_save_that_reach_into_the_backbone_or_match_nothing_are_refused():
    for modules, message in (
        (["vit"], "names 'vit', which is part of the backbone 'vit'"),
        (["attention"], "part of the backbone"),
        (["classifier", "vit.embeddings"], "names 'vit.embeddings', which is part of the backbone"),
        (["layernorm"], "names 'vit.layernorm'"),
        (["projection"], "names 'vit.embeddings.patch_embeddings.projection'"),
        (["classifer"], "matches no module"),
    ):
        base = make_backbone("vit_clf")
        with pytest.raises(ValueError, match=message):
            get_peft_model(base, GatedPromptConfig(modules_to_save=modules))
        assert not any(isinstance(m, GatedPromptBlock) for m in base.modules())


def test_a_saved_config_without_modules_to_save_loads_without_wrapping_the_head(tmp_path):
    """A saved config records the modules it saved; none (null) means none, not the default classifier."""
    headless = get_peft_model(make_backbone("vit_clf"), GatedPromptConfig(num_prompt_tokens=2, modules_to_save=[])).eval()
    randomize_adapter_(headless)
    headless.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": None}))
    loaded = gated_vpt.load_adapter(make_backbone("vit_clf"), tmp_path)
    assert loaded.peft_config["default"].modules_to_save == []
    assert type(loaded.base_model.model.classifier) is torch.nn.Linear
    x = images(2, seed=12)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, headless(x).logits)


def test_an_adapter_saved_from_a_bare_backbone_is_refused_on_a_classifier_not_loaded_at_random(tmp_path):
    """Its keys name the blocks without the classifier's ``vit.`` prefix: peft alone would load nothing and keep
    random prompts, with only a warning."""
    get_peft_model(make_backbone("vit"), GatedPromptConfig(num_prompt_tokens=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"missing tensors \[base_model\.model\.vit\.encoder\.layer\.0"):
        gated_vpt.load_adapter(make_backbone("vit_clf"), tmp_path)
