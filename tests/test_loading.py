"""load_adapter: local round trip, and clear errors for missing, corrupt, pickled or foreign files."""


import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import ViTConfig, ViTForImageClassification

import gated_vpt
from gated_vpt import load_adapter

CONFIG = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64, num_labels=3)


def _base(**overrides):
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**{**CONFIG, **overrides})).eval()


@pytest.fixture
def saved(tmp_path):
    model = get_peft_model(_base(), gated_vpt.GatedPromptConfig(num_prompt_tokens=3))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval().save_pretrained(tmp_path / "adapter")
    x = torch.randn(2, 3, 16, 16)
    return tmp_path / "adapter", x, model(x).logits


def test_round_trip_is_bit_identical_and_adds_to_a_peft_model(saved):
    path, x, logits = saved
    loaded = load_adapter(_base(), path)
    assert isinstance(loaded, PeftModel)
    assert torch.equal(loaded(x).logits, logits)
    again = load_adapter(loaded, path, adapter_name="second")
    again.set_adapter("second")
    assert torch.equal(again(x).logits, logits)


def test_missing_files_are_named(saved, tmp_path):
    path, _, _ = saved
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_adapter(_base(), path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(_base(), empty)
    with pytest.raises(FileNotFoundError, match="No such folder"):
        load_adapter(_base(), tmp_path / "no" / "such" / "dir")


def test_pickled_weights_are_refused(saved):
    path, _, _ = saved
    (path / "adapter_model.safetensors").unlink()
    (path / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickle"):
        load_adapter(_base(), path)


def test_corrupt_weights_fail_before_the_model_changes(saved):
    path, _, _ = saved
    data = (path / "adapter_model.safetensors").read_bytes()
    (path / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    base = _base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match="corrupt"):
        load_adapter(base, path)
    assert not any(isinstance(m, gated_vpt.GatedPromptBlock) for m in base.modules())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_adapter_for_another_backbone_is_refused_before_injection(saved):
    path, _, _ = saved
    for other in (dict(hidden_size=48), dict(num_hidden_layers=3)):
        base = _base(**other)
        before = {k: v.clone() for k, v in base.state_dict().items()}
        with pytest.raises(ValueError, match="another backbone"):
            load_adapter(base, path)
        assert not any(isinstance(m, gated_vpt.GatedPromptBlock) for m in base.modules())
        assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_other_peft_methods_are_pointed_to_peft(tmp_path):
    lora = get_peft_model(_base(), LoraConfig(target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'LORA' adapter"):
        load_adapter(_base(), tmp_path)


def test_broken_config_json_is_named(saved):
    path, _, _ = saved
    (path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_adapter(_base(), path)


def test_a_base_with_another_num_labels_is_named_as_the_cause(saved):
    path, _, _ = saved
    for load in (load_adapter, PeftModel.from_pretrained):
        base = _base(num_labels=5)
        before = {k: v.clone() for k, v in base.state_dict().items()}
        with pytest.raises(ValueError) as error:
            load(base, path)
        assert str(error.value).startswith("The base has 5 labels, the adapter's head (classifier) 3: build the base "
                                           "with num_labels=3") and "must not be used" not in str(error.value)
        assert not hasattr(base, "peft_config") and all(torch.equal(v, before[k]) for k, v in base.state_dict().items())


def test_load_base_model_reports_only_weights_that_are_not_the_new_head(tmp_path, caplog):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

    mae = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, mask_ratio=0.0)
    torch.manual_seed(0)
    ViTMAEModel(ViTMAEConfig(**mae)).save_pretrained(tmp_path / "encoder")
    ViTMAEForPreTraining(ViTMAEConfig(**mae, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                      decoder_intermediate_size=32)).save_pretrained(tmp_path / "pretraining")
    with caplog.at_level("WARNING"):
        base = gated_vpt.load_base_model(tmp_path / "encoder", num_labels=7)
    assert caplog.records == []  # the classifier is new, as intended
    assert isinstance(base, ViTForImageClassification) and base.classifier.out_features == 7
    encoder = ViTMAEModel.from_pretrained(tmp_path / "encoder")
    assert torch.equal(base.vit.embeddings.patch_embeddings.projection.weight, encoder.embeddings.patch_embeddings.projection.weight)
    with caplog.at_level("WARNING"):
        gated_vpt.load_base_model(tmp_path / "pretraining", id2label={0: "cat", 1: "dog"})
    assert any("unexpected weights" in record.getMessage() and "decoder" in record.getMessage() for record in caplog.records)
