"""timm's VisionTransformer, directly and through transformers' TimmWrapper classes: every configuration x every
variant against tests/reference.py (timm's block written from its weights), in float64 on the fast and the plain
path, gradients, adapter files shared between a timm model and its wrapper, and peft's contract.

Skipped only where timm is not installed (CI installs it with the ``test`` extra)."""

import copy
import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

pytest.importorskip("timm")

import gated_vpt  # noqa: E402
from conftest import TIMM_CONFIGS, images, make_timm, randomize_adapter_  # noqa: E402
from gated_vpt import GatedPromptBlock, GatedPromptConfig  # noqa: E402
from reference import read_adapter, timm_reference_outputs  # noqa: E402
from test_backbones import VARIANTS, expected_settings, largest_difference  # noqa: E402
from test_backbones import variant_config as backbone_variant_config  # noqa: E402
from test_gradients import _loss, _model_gradients, _reference_leaves  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

# The head each configuration reads, and the head pooling "auto" gives it (README's timm table).
AVERAGING = ("avg_no_cls", "mae_finetune")  # global_pool="avg": the head averages the rows itself, "cls" is refused
MEAN_BY_DEFAULT = AVERAGING + ("mae_tag",)
NUM_SPECIAL = {"avg_no_cls": 0, "reg_tokens": 3}
MATRIX = [(c, v) for c in TIMM_CONFIGS for v in VARIANTS if not (v == "other_pooling" and c in AVERAGING)]


def variant_config(variant: str, name: str) -> dict:
    return backbone_variant_config(variant, name, MEAN_BY_DEFAULT)


def settings(config: dict, name: str) -> dict:
    """The method's meaning of a variant's config, with timm's default heads."""
    return expected_settings(config, name, MEAN_BY_DEFAULT)


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


# --- adapter files: the same keys on a timm model and its TimmWrapper ------------------------------------------------


def _same_backbone(name: str, like: torch.nn.Module) -> torch.nn.Module:
    """A model of configuration ``name`` (a timm model or a wrapper) with the backbone weights of ``like`` (the other)."""
    model = make_timm(name, seed=1)
    getattr(model, "timm_model", model).load_state_dict(getattr(like, "timm_model", like).state_dict())
    return model


@pytest.mark.parametrize("source, target", [("cls_token", "wrapper_clf"), ("wrapper_clf", "cls_token")])
def test_an_adapter_moves_between_a_timm_model_and_its_wrapper(source, target, tmp_path):
    base = make_timm(source)
    other = _same_backbone(target, base)
    trained = randomize_adapter_(get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3, prompt_dropout=0.0))).eval()
    pixels = images(2)
    with torch.no_grad():
        want = outputs(trained, pixels, ["logits"])["logits"]
    trained.save_pretrained(tmp_path)
    keys = sorted(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys == sorted(
        [f"base_model.model.encoder.layer.{i}.gvpt_temperature" for i in range(4)]
        + [f"base_model.model.encoder.layer.{i}.gvpt_gate" for i in range(3)]
        + ["base_model.model.encoder.layer.0.gvpt_prompt", "base_model.model.head.weight", "base_model.model.head.bias"]
    )
    for load in (PeftModel.from_pretrained, gated_vpt.load_adapter):
        again = load(copy.deepcopy(other), tmp_path).eval()
        with torch.no_grad():
            assert torch.equal(outputs(again, pixels, ["logits"])["logits"], want)


CONTRACT = ["cls_token", "avg_no_cls", "reg_tokens", "map_pool", "wrapper_model", "wrapper_clf"]


def _main(model, pixels):
    """A timm model's output, or a wrapper's logits or last hidden state."""
    output = model(pixels)
    if isinstance(output, torch.Tensor):
        return output
    return output.logits if "logits" in output else output.last_hidden_state


@pytest.mark.parametrize("name", CONTRACT)
def test_save_and_reload_is_bit_identical(name, tmp_path):
    base = make_timm(name)
    untouched = copy.deepcopy(base)
    model = randomize_adapter_(get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3, prompt_mode="deep"))).eval()
    pixels = images(2)
    with torch.no_grad():
        want = _main(model, pixels)
    model.save_pretrained(tmp_path)
    for load in (PeftModel.from_pretrained, gated_vpt.load_adapter):
        again = load(copy.deepcopy(untouched), tmp_path).eval()
        with torch.no_grad():
            assert torch.equal(_main(again, pixels), want)


@pytest.mark.parametrize("name", CONTRACT)
@pytest.mark.filterwarnings("ignore:Adapter default was active")
def test_disable_delete_and_unload_give_the_base_model_exactly(name):
    untouched = make_timm(name)
    model = randomize_adapter_(get_peft_model(make_timm(name), GatedPromptConfig(num_prompt_tokens=3))).eval()
    pixels = images(2)
    with torch.no_grad():
        want = _main(untouched, pixels)
        assert not torch.equal(_main(model, pixels), want)
        with model.disable_adapter():
            assert torch.equal(_main(model, pixels), want)
        model.add_adapter("other", GatedPromptConfig(num_prompt_tokens=2))
        model.delete_adapter("default")
        model.delete_adapter("other")
        # peft's PeftModel.forward itself needs an active adapter, so run the model it wraps (blocks still wrapped).
        assert torch.equal(_main(model.base_model.model, pixels), want)
        assert sum(isinstance(m, GatedPromptBlock) for m in model.modules()) == 4
        plain = model.unload()
        assert not any(isinstance(m, GatedPromptBlock) for m in plain.modules())
        assert not getattr(plain, "timm_model", plain).patch_embed._forward_pre_hooks  # the temperature clamp is gone
        assert torch.equal(_main(plain, pixels), want)


def test_a_mixed_batch_runs_each_sample_through_its_own_adapter_or_the_base():
    model = get_peft_model(make_timm("reg_tokens"), GatedPromptConfig(num_prompt_tokens=3), adapter_name="a")
    model.add_adapter("b", GatedPromptConfig(num_prompt_tokens=3, gated=False))
    randomize_adapter_(model, "a", seed=1)
    randomize_adapter_(model, "b", seed=2)
    model.eval()
    untouched = make_timm("reg_tokens")
    order = ["a", "__base__", "b", "a"]
    pixels = images(4, seed=3)
    with torch.no_grad():
        mixed = model(pixels, adapter_names=order)
        torch.testing.assert_close(mixed[1:2], untouched(pixels[1:2]), rtol=1e-5, atol=1e-5)
        for name in ("a", "b"):
            rows = [i for i, n in enumerate(order) if n == name]
            model.set_adapter(name)
            torch.testing.assert_close(mixed[rows], model(pixels[rows]), rtol=1e-5, atol=1e-5)


def test_an_adapter_from_a_stranger_is_refused_before_the_model_changes(tmp_path):
    model = randomize_adapter_(get_peft_model(make_timm("cls_token"), GatedPromptConfig(num_prompt_tokens=3)))
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    tensors["base_model.model.blocks.0.attn.qkv.weight"] = torch.zeros(96, 32)  # would overwrite a frozen weight
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    base = make_timm("cls_token")
    state = {key: value.clone() for key, value in base.state_dict().items()}
    for load in (PeftModel.from_pretrained, gated_vpt.load_adapter):
        with pytest.raises(ValueError, match=r"tensors that are not this adapter's \[base_model\.model\.blocks\.0\.attn\.qkv"):
            load(base, tmp_path)
        assert not any(isinstance(m, GatedPromptBlock) for m in base.modules())
        assert all(torch.equal(state[key], value) for key, value in base.state_dict().items())


def test_an_adapter_for_another_backbone_shape_is_refused(tmp_path):
    get_peft_model(make_timm("cls_token"), GatedPromptConfig()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_special_tokens: adapter 1, model 3"):
        gated_vpt.load_adapter(make_timm("reg_tokens"), tmp_path)


@pytest.mark.parametrize(
    "build, problem",
    [
        (dict(global_pool="max"), "global_pool='max'"),
        (dict(global_pool="avg", class_token=False, pool_include_prefix=True), "pool_include_prefix"),
    ],
)
def test_unsupported_timm_heads_are_refused_clearly(build, problem):
    with pytest.raises(ValueError, match=problem):
        get_peft_model(make_timm("cls_token", **build), GatedPromptConfig())


def test_other_timm_models_and_blocks_are_refused_clearly():
    import timm

    with pytest.raises(ValueError, match="only timm's VisionTransformer"):
        get_peft_model(timm.create_model("resnet18", pretrained=False, num_classes=3), GatedPromptConfig())
    model = make_timm("cls_token")
    model.blocks[1] = torch.nn.Identity()
    with pytest.raises(ValueError, match="not timm's Block"):
        get_peft_model(model, GatedPromptConfig())


def test_cls_pooling_on_an_averaging_head_is_refused():
    with pytest.raises(ValueError, match="global_pool='token'"):
        get_peft_model(make_timm("avg_no_cls"), GatedPromptConfig(head_pooling="cls"))


def test_the_temperature_divides_only_the_queries_of_the_fused_projection():
    """The fast path splits timm's qkv: a temperature must not reach the keys or values (which the plain path, with its
    hook on the normalised queries, cannot do either)."""
    frozen, model, _ = adapted("qk_norm", "temperature_only")
    pixels = pixels_for("qk_norm", torch.float64)
    adapter = read_adapter(model, **settings(dict(gated=False), "qk_norm"))
    with torch.no_grad():
        for block in (m for m in model.modules() if isinstance(m, GatedPromptBlock)):
            block.gvpt_temperature["default"].fill_(3.0)
        adapter.temperatures = {i: torch.tensor(3.0, dtype=torch.float64) for i in adapter.temperatures}
        want = timm_reference_outputs(frozen, pixels, adapter)["logits"]
        for fast in (True, False):
            with gated_vpt.fast_path(fast):
                torch.testing.assert_close(model(pixels), want, rtol=0, atol=1e-10)


def test_the_fast_path_skips_blocks_with_parts_it_does_not_compute():
    """An attention output norm (scale_attn_norm) is one of the layout's absent parts: such blocks run their own
    forward, with the same numbers."""
    base = make_timm("cls_token", scale_attn_norm=True)
    assert not isinstance(base.blocks[0].attn.norm, torch.nn.Identity)
    model = randomize_adapter_(get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3))).eval()
    calls = []
    for block in (m for m in model.modules() if isinstance(m, GatedPromptBlock)):
        block.base_layer.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        fast = model(images(2))
        with gated_vpt.fast_path(False):
            plain = model(images(2))
    assert len(calls) == 8 and torch.equal(fast, plain)


# --- the command and the card on a timm adapter --------------------------------------------------------------------


def test_info_and_predict_on_an_adapter_trained_on_a_timm_model(tmp_path, capsys):
    """An adapter trained on a timm model; ``predict`` loads its base through transformers' TimmWrapper (as timm's Hub
    repos load) and gives the timm model's own predictions."""
    from PIL import Image
    from transformers import ViTImageProcessor

    from conftest import pixels_as_training_evaluates
    from gated_vpt.card import write_model_card
    from gated_vpt.cli import main

    timm_base = make_timm("cls_token")
    wrapper = _same_backbone("wrapper_clf", timm_base)
    wrapper.save_pretrained(tmp_path / "base")
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.4, 0.5, 0.6]).save_pretrained(tmp_path / "base")
    model = randomize_adapter_(get_peft_model(timm_base, GatedPromptConfig(num_prompt_tokens=3)), seed=5).eval()
    model.save_pretrained(tmp_path / "adapter")
    write_model_card(tmp_path / "adapter", model)
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "TimmWrapperForImageClassification" in card and "num_labels=3" in card

    assert main(["info", str(tmp_path / "adapter"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"]["gvpt_prompt"] == 96 and sum(summary["parameters"].values()) == 96 + 3 + 4 + 3 * 32 + 3

    paths = []
    for i, size in enumerate([(16, 16), (30, 22)]):
        pixels = torch.randint(0, 256, (*size, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8).numpy()
        paths.append(tmp_path / f"photo{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    assert main(["predict", str(tmp_path / "adapter"), *map(str, paths), "--base", str(tmp_path / "base"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with torch.no_grad():
        scores, indices = model(pixels_as_training_evaluates(paths, 16, mean=(0.4, 0.5, 0.6))).softmax(-1).topk(3)
    assert [[t["index"] for t in row["top"]] for row in rows] == indices.tolist()
    for row, want in zip(rows, scores.tolist()):
        assert [t["score"] for t in row["top"]] == pytest.approx(want, abs=1e-5)


def test_mae_weights_get_the_paper_head_by_default_directly_and_through_the_wrapper():
    """timm's MAE copies (tag ``mae``) are read out by the paper's MAE head; transformers' wrapper records the tag of
    the Hub repo it was loaded from in its config (``pretrained_cfg``), not in the timm model it builds."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    direct = get_peft_model(make_timm("mae_tag"), GatedPromptConfig())
    config = TimmWrapperConfig(architecture="vit_tiny_patch16_224", model_args=dict(img_size=16, patch_size=4, embed_dim=32,
                               depth=2, num_heads=2), pretrained_cfg={"tag": "mae"}, num_labels=3)
    wrapped = get_peft_model(TimmWrapperForImageClassification(config), GatedPromptConfig())
    plain = get_peft_model(make_timm("wrapper_clf"), GatedPromptConfig())
    assert [m.peft_config["default"].head_pooling for m in (direct, wrapped, plain)] == ["mean", "mean", "cls"]


def test_training_loads_a_timm_hub_repo_through_the_wrapper(tmp_path):
    """What ``--model_name_or_path timm/vit_base_patch16_224.mae`` reads: a folder in timm's Hub format (timm's config
    and weight names). It loads into TimmWrapperForImageClassification with every backbone weight, a new classifier
    initialised as the paper's, and the MAE head by default (the repo's tag)."""
    import timm
    from safetensors.torch import save_file as save
    from transformers import TimmWrapperForImageClassification

    from gated_vpt.training.classification import load_image_classifier

    shape = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    source = timm.create_model("vit_base_patch16_224.mae", pretrained=False, num_classes=0, **shape)
    save({key: value.contiguous() for key, value in source.state_dict().items()}, tmp_path / "model.safetensors")
    pretrained = {k: v for k, v in source.pretrained_cfg.items() if k in ("architecture", "tag", "mean", "std", "classifier")}
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "vit_base_patch16_224", "num_classes": 0, "num_features": 32, "global_pool": "token",
        "model_args": shape, "pretrained_cfg": pretrained,
    }))
    model = load_image_classifier(str(tmp_path), ["a", "b", "c", "d", "e"])
    assert isinstance(model, TimmWrapperForImageClassification)
    loaded = model.timm_model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in source.state_dict().items())
    assert model.timm_model.head.out_features == 5
    torch.testing.assert_close(model.timm_model.head.bias, torch.full((5,), -4.59512), rtol=0, atol=1e-4)
    peft_model = get_peft_model(model, GatedPromptConfig(num_prompt_tokens=2))
    assert peft_model.peft_config["default"].head_pooling == "mean"
    assert peft_model.peft_config["default"].modules_to_save == ["head"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "plain_path"])
def test_timm_gradient_checkpointing_gives_the_same_gradients(fast):
    """timm checkpoints its block sequence (``set_grad_checkpointing``), wrappers included: the prompts, gates and
    temperatures inside still get their gradients, the same as without it."""

    def gradients(checkpointing: bool) -> dict:
        base = make_timm("reg_tokens")
        base.set_grad_checkpointing(checkpointing)
        model = randomize_adapter_(get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3, prompt_dropout=0.0))).train()
        with gated_vpt.fast_path(fast):
            model(images(2)).square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = gradients(False), gradients(True)
    assert len(plain) == 10
    for name, gradient in plain.items():
        assert gradient.abs().max() > 0, name
        torch.testing.assert_close(checkpointed[name], gradient, rtol=1e-6, atol=1e-8, msg=name)


def test_hidden_states_of_a_wrapped_timm_model_are_refused_while_prompts_run():
    """TimmWrapper's ``output_hidden_states`` goes through timm's forward_intermediates, which would fold the prompt
    rows into the patch grid: refused clearly, and exact again with the adapter disabled."""
    untouched = make_timm("wrapper_model")
    model = get_peft_model(make_timm("wrapper_model"), GatedPromptConfig(num_prompt_tokens=3)).eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match="output_hidden_states is not supported for timm models"):
            model(images(2), output_hidden_states=True)
        with model.disable_adapter():
            got = model(images(2), output_hidden_states=True).hidden_states
        want = untouched(images(2), output_hidden_states=True).hidden_states
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("name", ["cls_token", "wrapper_clf"])
def test_only_timms_head_may_be_saved_with_an_adapter(name):
    """timm's classifier sits inside the model that is also the backbone: ``head`` may be trained and saved, any other
    part of the timm model (here its final norm) may not."""
    assert get_peft_model(make_timm(name), GatedPromptConfig()).peft_config["default"].modules_to_save == ["head"]
    with pytest.raises(ValueError, match="part of the backbone"):
        get_peft_model(make_timm(name), GatedPromptConfig(modules_to_save=["norm"]))
