"""Adapters from strangers: a table of corrupted adapter files x every way to load one.

Each case must be refused with a ValueError (the CLI: one line, exit 1) naming the problem, and the model the
caller passed in must be exactly as it was: same modules, same state dict, same requires_grad flags, no hooks,
same outputs as a fresh copy. A PeftModel that an adapter was being added to keeps only its own adapters.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import peft.peft_model
import pytest
import torch
from conftest import images, make_backbone, randomize_adapter_
from peft import PeftModel, get_peft_model
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification, ViTImageProcessor, pipeline

import gated_vpt
from gated_vpt.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("single_thread")

PREFIX = "base_model.model.vit."
BLOCK = PREFIX + "encoder.layer.{}.gvpt_{}"


def _set(key, value):
    return lambda config, tensors: config.__setitem__(key, value)


def _tensor(key, value):
    return lambda config, tensors: tensors.__setitem__(key, value)


def _drop(key):
    return lambda config, tensors: tensors.pop(key)


def _poison(key, value):
    def apply(config, tensors):
        tensors[key] = tensors[key].clone().fill_(value)

    return apply


def _with_module(name, tensors_by_name, key=None):
    """modules_to_save names ``name`` besides the classifier, and the file holds tensors for it (at ``key``)."""
    def apply(config, tensors):
        config["modules_to_save"] = ["classifier", name]
        tensors.update({f"base_model.model.{key or name}.{k}": v for k, v in tensors_by_name.items()})

    return apply


def _raw_config(text):
    return lambda config, tensors: (config.clear(), config.update({"__raw__": text}))


def _replace_config(value):
    return lambda config, tensors: (config.clear(), config.update({"__replace__": value}))


# name -> (corruption of (config dict, tensors dict), a regex the error must match)
CASES = {
    "extra cls_token": (_tensor(PREFIX + "embeddings.cls_token", torch.zeros(1, 1, 32)), r"not this adapter's.*cls_token"),
    "extra layernorm": (_tensor(PREFIX + "layernorm.weight", torch.zeros(32)), r"not this adapter's.*layernorm\.weight"),
    "extra gvpt-named key outside blocks": (_tensor(PREFIX + "embeddings.gvpt_prompt", torch.zeros(4, 32)), "not this adapter's"),
    "missing prompt": (_drop(BLOCK.format(0, "prompt")), r"missing tensors.*layer\.0\.gvpt_prompt"),
    "missing gate": (_drop(BLOCK.format(1, "gate")), r"missing tensors.*layer\.1\.gvpt_gate"),
    "missing temperature": (_drop(BLOCK.format(3, "temperature")), r"missing tensors.*layer\.3\.gvpt_temperature"),
    "missing classifier": (_drop("base_model.model.classifier.weight"), r"missing tensors.*classifier\.weight|no classifier head"),
    "config has more prompts than the file": (_set("num_prompt_tokens", 8), r"gvpt_prompt has shape \[4, 32\], expected \[8, 32\]"),
    "prompt of another width": (_tensor(BLOCK.format(0, "prompt"), torch.zeros(4, 48)), r"shape \[4, 48\]"),
    "classifier of another shape": (_tensor("base_model.model.classifier.weight", torch.zeros(5, 32)), r"classifier\.(weight|bias) has shape \[(5, 32|3)\]"),
    "integer prompt": (_tensor(BLOCK.format(0, "prompt"), torch.zeros(4, 32, dtype=torch.int64)), r"dtype torch\.int64"),
    "gate as a vector": (_tensor(BLOCK.format(0, "gate"), torch.zeros(3)), r"gvpt_gate has shape \[3\], expected \[\]"),
    "NaN prompt": (_poison(BLOCK.format(0, "prompt"), math.nan), r"gvpt_prompt holds NaN or infinite"),
    "inf gate": (_poison(BLOCK.format(2, "gate"), math.inf), r"gvpt_gate holds NaN or infinite"),
    "NaN classifier": (_poison("base_model.model.classifier.bias", math.nan), r"classifier\.bias holds NaN"),
    "prompt_start_block disagrees": (_set("prompt_start_block", 1), r"not this adapter's.*layer\.0|missing tensors.*layer\.1\.gvpt_prompt"),
    "prompt_mode deep": (
        lambda c, t: c.update(prompt_mode="deep", gated=False, learnable_temperature=False),
        r"missing tensors.*layer\.1\.gvpt_prompt",
    ),
    "gated false but gates in the file": (_set("gated", False), r"not this adapter's.*gvpt_gate"),
    "no temperature but temperatures in the file": (_set("learnable_temperature", False), r"not this adapter's.*gvpt_temperature"),
    "backbone missing": (lambda c, t: c.pop("backbone"), r"no 'backbone' record"),
    "backbone a string": (_set("backbone", "vit"), r"GatedPromptConfig\.backbone='vit' is invalid"),
    "backbone of another shape": (
        _set("backbone", {"model_type": "vit", "hidden_size": 48, "num_hidden_layers": 4, "num_special_tokens": 1}),
        r"hidden_size: adapter 48, model 32|shape \[4, 32\], expected \[4, 48\]",
    ),
    "config a JSON list": (_replace_config([1, 2]), r"holds a JSON list, not an object of adapter settings"),
    "modules_to_save the backbone": (_set("modules_to_save", ["vit"]), r"modules_to_save=\['vit'\] names 'vit'.*part of the backbone"),
    "modules_to_save the embeddings": (
        _with_module("vit.embeddings", {"cls_token": torch.zeros(1, 1, 32), "position_embeddings": torch.zeros(1, 17, 32)}),
        r"names 'vit\.embeddings', which is part of the backbone 'vit'",
    ),
    "modules_to_save nested matches": (
        _with_module("embeddings", {"cls_token": torch.zeros(1, 1, 32)}, key="vit.embeddings"),
        r"names 'vit\.embeddings', which is part of the backbone",
    ),
    "modules_to_save the final norm": (
        _with_module("vit.layernorm", {"weight": torch.zeros(32), "bias": torch.zeros(32)}),
        r"names 'vit\.layernorm', which is part of the backbone",
    ),
    "modules_to_save the patch projection": (
        _with_module("projection", {"weight": torch.zeros(32, 3, 4, 4)}, key="vit.embeddings.patch_embeddings.projection"),
        r"names 'vit\.embeddings\.patch_embeddings\.projection', which is part of the backbone",
    ),
    "modules_to_save False": (_set("modules_to_save", False), r"GatedPromptConfig\.modules_to_save=False is invalid"),
    "modules_to_save 0": (_set("modules_to_save", 0), r"GatedPromptConfig\.modules_to_save=0 is invalid"),
    "modules_to_save 'abc'": (_set("modules_to_save", "abc"), r"\['abc'\] matches no module|modules_to_save entry 'abc'"),
    "num_prompt_tokens 1e9": (_set("num_prompt_tokens", 1e9), r"num_prompt_tokens=1000000000\.0 is invalid"),
    "num_prompt_tokens 10**6": (_set("num_prompt_tokens", 10**6), r"num_prompt_tokens=1000000 is invalid: use at most 1024.*square"),
    "backbone claims 10**9 blocks": (
        _set("backbone", {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 10**9, "num_special_tokens": 1}),
        r"no ViT-family backbone is that large: num_hidden_layers at most 1024",
    ),
    "backbone claims a width of 10**9": (
        _set("backbone", {"model_type": "vit", "hidden_size": 10**9, "num_hidden_layers": 4, "num_special_tokens": 1}),
        r"hidden_size at most 65536",
    ),
    "prompt_start_block beyond the backbone": (_set("prompt_start_block", 10**9), r"the backbone has 4 blocks"),
    "float64 prompt beyond float32": (
        _tensor(BLOCK.format(0, "prompt"), torch.full((4, 32), 1e300, dtype=torch.float64)),
        r"gvpt_prompt holds NaN or infinite values \(as torch\.float32\)",
    ),
    "float8 prompt": (_tensor(BLOCK.format(0, "prompt"), torch.zeros(4, 32).to(torch.float8_e4m3fn)), r"float8_e4m3fn, which adapters are not saved in"),
    "empty classifier claiming 10**6 classes": (
        _tensor("base_model.model.classifier.weight", torch.zeros(10**6, 0)), r"classifier\.weight is empty \(shape \[1000000, 0\]\)"
    ),
    "config nested too deeply": (_raw_config("[" * 100_000 + "]" * 100_000), r"not valid JSON \(nested too deeply\)"),
    "config of 20 MB": (_raw_config('{"peft_type": "GATED_VPT", "x": "' + "x" * 20 * 2**20 + '"}'), r"is 20,971,5\d\d bytes.*at most"),
    "task_type set": (_set("task_type", "SEQ_CLS"), r"task_type"),
    "base model path not a string": (_set("base_model_name_or_path", 5), r"base_model_name_or_path=5 is invalid"),
}
# The cases that corrupt only the weights: what PeftModel.from_pretrained(..., config=...) still reads from the files.
WEIGHT_CASES = [
    "extra cls_token", "extra layernorm", "extra gvpt-named key outside blocks", "missing prompt", "missing gate",
    "missing temperature", "missing classifier", "prompt of another width", "classifier of another shape",
    "integer prompt", "gate as a vector", "NaN prompt", "inf gate", "NaN classifier",
]
# Without a model, the shapes of the saved head are unknown: `gated-vpt info` shows such an adapter as it is.
NEEDS_A_MODEL = {"missing classifier", "classifier of another shape"} | {
    case for case in CASES if case.startswith("modules_to_save the") and case != "modules_to_save the backbone"
} | {"modules_to_save nested matches"}


def _base():
    return make_backbone("vit_clf", seed=0)


def _snapshot(model: torch.nn.Module) -> dict:
    with torch.no_grad():
        output = model(images(2, seed=3)).logits
    return {
        "modules": [(name, type(module)) for name, module in model.named_modules()],
        "state": {key: value.clone() for key, value in model.state_dict().items()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "attributes": {name: sorted(vars(module)) for name, module in model.named_modules()},
        "output": output,
    }


def _assert_same(before: dict, after: dict) -> None:
    assert after["modules"] == before["modules"]
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(before["state"][k], v) for k, v in after["state"].items())
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["attributes"] == before["attributes"]
    assert torch.equal(after["output"], before["output"])


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    model = get_peft_model(_base(), gated_vpt.GatedPromptConfig(num_prompt_tokens=4))
    randomize_adapter_(model)
    directory = tmp_path_factory.mktemp("adapter") / "good"
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("base")
    _base().save_pretrained(directory)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "x.png"
    Image.new("RGB", (16, 16), (120, 30, 200)).save(path)
    return path


def _corrupt(good: Path, target: Path, corruption) -> Path:
    config = json.loads((good / "adapter_config.json").read_text())
    tensors = load_file(good / "adapter_model.safetensors")
    corruption(config, tensors)
    target.mkdir()
    text = config["__raw__"] if "__raw__" in config else json.dumps(config.get("__replace__", config))
    (target / "adapter_config.json").write_text(text)
    save_file(tensors, target / "adapter_model.safetensors")
    return target


def test_the_untouched_adapter_loads_through_every_loader(good):
    fresh = _base()
    reference = gated_vpt.load_adapter(_base(), good)
    for loaded in (PeftModel.from_pretrained(_base(), good), gated_vpt.load_adapter(fresh, good)):
        assert torch.equal(loaded(images(2)).logits, reference(images(2)).logits)
    assert not torch.equal(reference(images(2)).logits, _base()(images(2)).logits)




# The ways to load an adapter onto a plain transformers model: peft's, ours and transformers' own integration.
LOADERS = {
    "peft.from_pretrained": PeftModel.from_pretrained,
    "gated_vpt.load_adapter": gated_vpt.load_adapter,
    "transformers model.load_adapter": lambda model, directory: model.load_adapter(str(directory)),
}


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("case", list(CASES))
def test_a_corrupted_adapter_is_refused_and_the_base_model_is_untouched(good, tmp_path, loader, case):
    corruption, message = CASES[case]
    directory = _corrupt(good, tmp_path / "bad", corruption)
    base = _base()
    before = _snapshot(base)
    with pytest.raises(ValueError, match=message):
        LOADERS[loader](base, directory)
    _assert_same(before, _snapshot(base))
    assert torch.equal(before["output"], _snapshot(_base())["output"])  # the same as a fresh copy
    assert not hasattr(base, "peft_config") and not getattr(base, "_hf_peft_config_loaded", False)


def test_transformers_loads_the_untouched_adapter_as_peft_does(good):
    base = _base()
    base.load_adapter(str(good))
    assert torch.equal(base(images(2)).logits, PeftModel.from_pretrained(_base(), good)(images(2)).logits)


@pytest.mark.parametrize("how", ["AutoModelForImageClassification", "pipeline"])
@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_transformers_refuses_a_corrupted_adapter_folder_given_as_the_model(good, base_dir, tmp_path, image_file, how, case):
    """``AutoModel*.from_pretrained(adapter_dir)`` (and a pipeline given the folder) loads the base model the adapter
    names, then the adapter through ``model.load_adapter``."""
    corruption, message = CASES[case]
    directory = _corrupt(good, tmp_path / "bad", lambda config, tensors: (config.update(base_model_name_or_path=str(base_dir)), corruption(config, tensors)))
    with pytest.raises(ValueError, match=message):
        if how == "pipeline":
            pipeline("image-classification", model=str(directory), image_processor=str(base_dir))(str(image_file))
        else:
            AutoModelForImageClassification.from_pretrained(str(directory))


@pytest.mark.parametrize("given", ["weights file", "adapter_state_dict"])
@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_transformers_checks_the_weights_of_a_config_the_caller_passes(good, tmp_path, given, case):
    corruption, message = CASES[case]
    directory = _corrupt(good, tmp_path / "bad", corruption)
    base = _base()
    before = _snapshot(base)
    config = gated_vpt.GatedPromptConfig(num_prompt_tokens=4)
    with pytest.raises(ValueError, match=message):
        if given == "weights file":
            base.load_adapter(str(directory), peft_config=config)
        else:
            base.load_adapter(peft_config=config, adapter_state_dict=load_file(directory / "adapter_model.safetensors"))
    _assert_same(before, _snapshot(base))


@pytest.mark.parametrize("case", WEIGHT_CASES + ["given config has more prompts than the file"])
def test_a_config_passed_to_from_pretrained_gets_its_weights_checked_before_the_model_changes(good, tmp_path, case):
    corruption, message = CASES.get(case, (lambda config, tensors: None, r"gvpt_prompt has shape \[4, 32\], expected \[8, 32\]"))
    directory = _corrupt(good, tmp_path / "bad", corruption)
    config = gated_vpt.GatedPromptConfig(num_prompt_tokens=8 if case.startswith("given") else 4)
    base = _base()
    before = _snapshot(base)
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(base, directory, config=config)
    _assert_same(before, _snapshot(base))
    assert not hasattr(base, "peft_config")


def test_a_config_read_from_one_adapter_and_passed_with_another_checks_the_other(good, tmp_path):
    directory = _corrupt(good, tmp_path / "bad", CASES["extra cls_token"][0])
    base = _base()
    before = _snapshot(base)
    with pytest.raises(ValueError, match="cls_token") as refused:  # by the check of the other's files, before injecting
        PeftModel.from_pretrained(base, directory, config=gated_vpt.GatedPromptConfig.from_pretrained(good))
    assert str(refused.value).startswith(str(directory / "adapter_model.safetensors"))
    _assert_same(before, _snapshot(base))


def test_a_config_passed_to_from_pretrained_needs_only_the_weights_file(good, tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes())
    loaded = PeftModel.from_pretrained(_base(), tmp_path, config=gated_vpt.GatedPromptConfig(num_prompt_tokens=4))
    reference = PeftModel.from_pretrained(_base(), good)
    assert torch.equal(loaded(images(2)).logits, reference(images(2)).logits)


@pytest.mark.parametrize("loader", ["PeftModel.load_adapter", "gated_vpt.load_adapter"])
@pytest.mark.parametrize("case", list(CASES))
def test_adding_a_corrupted_adapter_leaves_the_peft_model_as_it_was(good, tmp_path, loader, case):
    corruption, message = CASES[case]
    directory = _corrupt(good, tmp_path / "bad", corruption)
    model = PeftModel.from_pretrained(_base(), good)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        if loader == "PeftModel.load_adapter":
            model.load_adapter(directory, adapter_name="second")
        else:
            gated_vpt.load_adapter(model, directory, adapter_name="second")
    _assert_same(before, _snapshot(model))
    assert list(model.peft_config) == ["default"] and model.active_adapters == ["default"]


@pytest.mark.parametrize(
    ("command", "case"), [(c, case) for c in ("info", "predict") for case in CASES if c == "predict" or case not in NEEDS_A_MODEL]
)
def test_the_cli_refuses_a_corrupted_adapter_in_one_line(good, tmp_path, base_dir, image_file, capsys, command, case):
    corruption, message = CASES[case]
    directory = _corrupt(good, tmp_path / "bad", corruption)
    argv = ["info", str(directory)] if command == "info" else ["predict", str(directory), str(image_file), "--base", str(base_dir)]
    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gated-vpt: error: "), captured.err
    assert "Traceback" not in captured.err
    assert __import__("re").search(message, lines[0]), lines[0]


@pytest.mark.parametrize("existing", [False, True])
def test_weights_that_change_after_the_check_are_refused_and_rolled_back(good, monkeypatch, existing):
    """The check before injection reads the file; peft reads it again after injecting. Should the second read differ
    (the file was replaced in between), the check at load time refuses it and takes the adapter out again."""
    model = PeftModel.from_pretrained(_base(), good) if existing else _base()
    before = _snapshot(model)
    real = peft.peft_model.load_peft_weights

    def tampered(*args, **kwargs):
        weights = real(*args, **kwargs)
        weights[PREFIX + "embeddings.cls_token"] = torch.zeros(1, 1, 32)
        return weights

    monkeypatch.setattr(peft.peft_model, "load_peft_weights", tampered)
    with pytest.raises(ValueError, match=r"not this adapter's.*cls_token"):
        if existing:
            model.load_adapter(good, adapter_name="second")
        else:
            PeftModel.from_pretrained(model, good)
    _assert_same(before, _snapshot(model))
    if existing:
        assert list(model.peft_config) == ["default"]


def test_reloading_weights_into_an_existing_adapter_is_checked(good, tmp_path):
    """``load_adapter`` under a name that already exists skips peft's injection and only loads weights."""
    directory = _corrupt(good, tmp_path / "bad", CASES["extra cls_token"][0])
    model = PeftModel.from_pretrained(_base(), good)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="cls_token"):
        model.load_adapter(directory, adapter_name="default")
    _assert_same(before, _snapshot(model))


def test_an_mae_backbone_keeps_no_patch_order_hook_after_a_refused_load(tmp_path):
    model = get_peft_model(make_backbone("vit_mae"), gated_vpt.GatedPromptConfig(num_prompt_tokens=2))
    model.save_pretrained(tmp_path / "good")
    prefix = "base_model.model."
    directory = _corrupt(tmp_path / "good", tmp_path / "bad", _tensor(prefix + "embeddings.cls_token", torch.zeros(1, 1, 32)))
    base = make_backbone("vit_mae")
    hooks = sum(len(m._forward_pre_hooks) for m in base.modules())
    with pytest.raises(ValueError, match="cls_token"):
        PeftModel.from_pretrained(base, directory)
    assert sum(len(m._forward_pre_hooks) for m in base.modules()) == hooks
    assert not hasattr(base, "_gvpt_noise_hook")


def test_pickled_weights_are_never_read_even_through_peft(good, tmp_path):
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    (directory / "adapter_model.bin").write_bytes(b"\x80\x04 not unpickled")
    base = _base()
    with pytest.raises(FileNotFoundError, match="pickle"):
        PeftModel.from_pretrained(base, directory)
    assert not hasattr(base, "peft_config")


@pytest.mark.parametrize("linked", ["id2label.json", "gates.png", "adapter_model.safetensors"])
def test_push_never_follows_a_symbolic_link_in_the_folder(good, tmp_path, monkeypatch, linked):
    import huggingface_hub

    from gated_vpt.hub import push_adapter

    secret = tmp_path / "token"
    secret.write_text("hf_SECRETtoken")
    folder = tmp_path / "run"
    folder.mkdir()
    for file in good.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    if linked == "adapter_model.safetensors":
        (folder / linked).unlink()
        (tmp_path / "elsewhere.safetensors").write_bytes((good / linked).read_bytes())
        (folder / linked).symlink_to(tmp_path / "elsewhere.safetensors")
    else:
        (folder / linked).symlink_to(secret)
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "__init__", lambda *args, **kwargs: calls.append(kwargs))
    with pytest.raises(ValueError, match=rf"holds {linked}, which is not a regular file.*push uploads only the folder's own files"):
        push_adapter(folder, "user/repo", token="hf_x")
    assert not calls  # refused before the Hub was contacted


def test_a_pickled_adapter_is_never_written(tmp_path):
    model = get_peft_model(_base(), gated_vpt.GatedPromptConfig(num_prompt_tokens=4))
    with pytest.raises(ValueError, match=r"safetensors only: safe_serialization=False would write a pickle"):
        model.save_pretrained(tmp_path / "out", safe_serialization=False)
    assert not (tmp_path / "out").exists()
    model.save_pretrained(tmp_path / "out")  # the default writes safetensors, which every loader reads
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("content", [b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02"])
def test_the_cli_names_an_image_it_cannot_read(good, tmp_path, base_dir, capsys, content):
    broken = tmp_path / "broken.png"
    broken.write_bytes(content)
    assert cli_main(["predict", str(good), str(broken), "--base", str(base_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gated-vpt: error: Cannot read an image: " + str(broken)) and err.count("\n") == 1, err


BAD_NAMES = ["a.b", "..", "../outside", "/tmp/absolute", "a/b", "a\\b", "", "line\nbreak"]
# name -> how an adapter gets a name: created, added to a PeftModel, or loaded under it
NAMING = {
    "get_peft_model": lambda model, good, name: get_peft_model(model, gated_vpt.GatedPromptConfig(num_prompt_tokens=4), adapter_name=name),
    "PeftModel.add_adapter": lambda model, good, name: model.add_adapter(name, gated_vpt.GatedPromptConfig(num_prompt_tokens=4)),
    "PeftModel.from_pretrained": lambda model, good, name: PeftModel.from_pretrained(model, good, adapter_name=name),
    "PeftModel.load_adapter": lambda model, good, name: model.load_adapter(good, adapter_name=name),
    "gated_vpt.load_adapter": lambda model, good, name: gated_vpt.load_adapter(model, good, adapter_name=name),
    "transformers model.load_adapter": lambda model, good, name: model.load_adapter(str(good), adapter_name=name),
}
ADDS_TO_A_PEFT_MODEL = {"PeftModel.add_adapter", "PeftModel.load_adapter"}


@pytest.mark.filterwarnings("ignore:Adapter name .* should not be contained in the prefix")
@pytest.mark.parametrize("how", list(NAMING))
@pytest.mark.parametrize("name", BAD_NAMES)
def test_an_adapter_name_that_is_not_a_plain_word_is_refused_before_anything_changes(good, tmp_path, how, name):
    model = PeftModel.from_pretrained(_base(), good) if how in ADDS_TO_A_PEFT_MODEL else _base()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"Adapter name .* is invalid: use letters, digits, '_' and '-' only"):
        NAMING[how](model, good, name)
    _assert_same(before, _snapshot(model))
    if how in ADDS_TO_A_PEFT_MODEL:  # still fully usable: it adds, switches and saves as before
        assert list(model.peft_config) == ["default"]
        model.add_adapter("second", gated_vpt.GatedPromptConfig(num_prompt_tokens=4))
        model.set_adapter("second")
        model.save_pretrained(tmp_path / "saved")
        assert sorted(p.name for p in (tmp_path / "saved").iterdir() if p.is_dir()) == ["second"]
    assert not list(tmp_path.parent.glob("outside")) and not Path("/tmp/absolute").exists()


def test_get_peft_model_leaves_the_callers_config_as_it_was():
    config = gated_vpt.GatedPromptConfig(num_prompt_tokens=4)
    before = dict(vars(config))
    first = get_peft_model(_base(), config)
    assert vars(config) == before
    # ... so the same config serves a backbone of another size, and the first model keeps its own record.
    other = get_peft_model(make_backbone("vit_clf", num_hidden_layers=2), config)
    assert vars(config) == before
    assert first.peft_config["default"].backbone["num_hidden_layers"] == 4
    assert other.peft_config["default"].backbone["num_hidden_layers"] == 2
