"""gated_vpt registers itself with peft, idempotently, and peft's own entry points find it."""

import importlib

import pytest
from peft import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType

import gated_vpt
from gated_vpt.peft_type import extend_peft_type
from gated_vpt.registration import register


def test_method_is_a_peft_type_with_its_classes():
    assert PeftType("GATED_VPT") is PeftType.GATED_VPT
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.GATED_VPT] is gated_vpt.GatedPromptConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.GATED_VPT] is gated_vpt.GatedPromptModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.GATED_VPT] == "gvpt_"


def test_registration_is_idempotent_and_survives_reload():
    members = list(PeftType)
    assert extend_peft_type("gated_vpt") is PeftType.GATED_VPT
    register()
    register()
    assert list(PeftType) == members
    importlib.reload(importlib.import_module("gated_vpt.registration"))
    importlib.import_module("gated_vpt.registration").register()
    assert list(PeftType) == members
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.GATED_VPT].__name__ == "GatedPromptModel"


def test_peft_config_from_pretrained_finds_the_config(tmp_path):
    gated_vpt.GatedPromptConfig(num_prompt_tokens=3, gate_init=7.0).save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, gated_vpt.GatedPromptConfig)
    assert (loaded.num_prompt_tokens, loaded.gate_init, loaded.peft_type) == (3, 7.0, PeftType.GATED_VPT)


def test_plain_peft_without_import_fails_but_importing_gated_vpt_registers_it(fresh_process):
    assert fresh_process["without_import"].startswith("KeyError") and "GATED_VPT" in fresh_process["without_import"]
    assert fresh_process["with_import"] == "GatedPromptConfig"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_prompt_tokens": 0}, "num_prompt_tokens"),
        ({"num_prompt_tokens": 2.5}, "num_prompt_tokens"),
        ({"prompt_mode": "middle"}, "prompt_mode"),
        ({"gated": "yes"}, "gated"),
        ({"learnable_temperature": 1}, "learnable_temperature"),
        ({"gate_init": 0}, "gate_init"),
        ({"gate_init": -5}, "gate_init"),
        ({"prompt_dropout": 1.0}, "prompt_dropout"),
        ({"prompt_dropout": -0.1}, "prompt_dropout"),
        ({"prompt_start_block": -1}, "prompt_start_block"),
        ({"head_pooling": "max"}, "head_pooling"),
        ({"prompt_mode": "deep", "gated": True}, "gated=True"),
    ],
)
def test_invalid_config_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        gated_vpt.GatedPromptConfig(**kwargs)


def test_variant_defaults_follow_the_paper():
    gated = gated_vpt.GatedPromptConfig()
    deep = gated_vpt.GatedPromptConfig(prompt_mode="deep")
    shallow = gated_vpt.GatedPromptConfig(gated=False, learnable_temperature=False)
    assert (gated.gated, gated.learnable_temperature, gated.prompt_dropout) == (True, True, 0.1)
    assert (deep.gated, deep.learnable_temperature) == (False, False)
    assert (shallow.gated, shallow.learnable_temperature, shallow.prompt_mode) == (False, False, "shallow")


def test_from_pretrained_is_wrapped_once_and_leaves_other_methods_to_peft(tmp_path):
    import torch
    from conftest import images, make_backbone
    from peft import LoraConfig, PeftModel, get_peft_model

    register()
    importlib.reload(importlib.import_module("gated_vpt.registration")).register()
    assert not getattr(PeftModel.from_pretrained.__func__.__wrapped__, "routes_gated_vpt", False)
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = get_peft_model(make_backbone("vit_clf"), config)
    lora.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_backbone("vit_clf"), tmp_path, config=LoraConfig.from_pretrained(tmp_path))
    assert not hasattr(loaded.peft_config["default"], "_source")
    assert torch.equal(loaded(images(2)).logits, lora(images(2)).logits)


def test_wrapping_a_model_leaves_out_only_peft_s_deprecated_property_warning(tmp_path):
    import warnings

    from conftest import make_backbone
    from peft import LoraConfig, PeftModel, get_peft_model

    register()
    importlib.reload(importlib.import_module("gated_vpt.registration")).register()
    assert not getattr(PeftModel.__init__.__wrapped__, "routes_gated_vpt", False)  # wrapped once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gated = get_peft_model(make_backbone("vit_clf"), gated_vpt.GatedPromptConfig(num_prompt_tokens=2))
        gated.save_pretrained(tmp_path / "gated")
        PeftModel.from_pretrained(make_backbone("vit_clf"), tmp_path / "gated")
    assert [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)] == []
    base = make_backbone("vit_clf")
    if isinstance(getattr(type(base), "is_gradient_checkpointing", None), property):  # transformers before v6
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))  # another method: as peft is
            base.is_gradient_checkpointing  # and the user's own use still warns
        assert len([w for w in caught if "is_gradient_checkpointing" in str(w.message)]) == 2
