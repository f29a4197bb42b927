"""The method's semantics that the reference matrix does not pin on its own, the parameter layout and init, the
trainable set and eval-mode backbone, adapter files, several adapters on one base, unload, and config errors."""

import json
import math

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

import gated_vpt
from conftest import images, main_output, make_backbone, randomize_adapter_
from gated_vpt import GatedPromptBlock, GatedPromptConfig
from reference import read_adapter, reference_forward

pytestmark = pytest.mark.usefixtures("single_thread")


def prompted(backbone="vit_clf", seed=0, randomize=True, **config):
    """A PeftModel on a tiny backbone, in eval mode; ``randomize`` gives the adapter random values."""
    model = get_peft_model(make_backbone(backbone, seed=seed), GatedPromptConfig(num_prompt_tokens=3, **config))
    if randomize:
        randomize_adapter_(model)
    return model.eval()


def blocks(model):
    return [m for m in model.modules() if isinstance(m, GatedPromptBlock)]


def record_block_io(model):
    """Inputs and outputs of the wrapped (inner) blocks, and outputs of the wrappers, appended during forwards."""
    assert not gated_vpt.fast_path_enabled(), "use the plain_path fixture: the fast path does not call the inner blocks"
    record = {"inner_in": [], "inner_out": [], "outer_out": []}
    for block in blocks(model):
        block.base_layer.register_forward_pre_hook(lambda module, args: record["inner_in"].append(args[0]))
        block.base_layer.register_forward_hook(lambda module, args, out: record["inner_out"].append(out))
        block.register_forward_hook(lambda module, args, out: record["outer_out"].append(out))
    return record


# --- the method's semantics ---------------------------------------------------------------------------------


def test_vpt_shallow_is_the_gated_method_with_open_gates_at_unit_temperature(pixels):
    shallow = prompted(gated=False, learnable_temperature=False)
    gated = prompted()
    with torch.no_grad():
        for block_s, block_g in zip(blocks(shallow), blocks(gated)):
            for name, prompt in block_s.gvpt_prompt.items():
                block_g.gvpt_prompt[name].copy_(prompt)
            for logit in block_g.gvpt_gate.values():
                logit.fill_(100.0)  # sigmoid(100) == 1 in float32
            for temperature in block_g.gvpt_temperature.values():
                temperature.fill_(1.0)
        head_s = shallow.base_model.model.classifier.modules_to_save["default"]
        gated.base_model.model.classifier.modules_to_save["default"].load_state_dict(head_s.state_dict())
        want = shallow(pixels).logits
        torch.testing.assert_close(gated(pixels).logits, want, rtol=0, atol=1e-6)
        blocks(gated)[1].gvpt_temperature["default"].fill_(2.0)
        assert (gated(pixels).logits - want).abs().max() > 1e-4, "the temperature has no effect"


@pytest.mark.usefixtures("plain_path")
def test_huge_gate_init_carries_the_prompts_unchanged_to_the_last_block(pixels):
    model = prompted(randomize=False, gate_init=50.0, prompt_dropout=0.0)
    record = record_block_io(model)
    with torch.no_grad():
        out = model(pixels).logits
        last_in = record["inner_in"][-1]
        with model.disable_adapter():
            base_out = model(pixels).logits
    prompts = blocks(model)[0].gvpt_prompt["default"]
    torch.testing.assert_close(last_in[:, 1:4], prompts.expand(2, -1, -1), rtol=0, atol=1e-6)
    # g ~ 0 is not "prompts absent": CLS and patches attend to them in every block
    assert (out - base_out).abs().max() > 1e-3


@pytest.mark.usefixtures("plain_path")
def test_deep_prompts_replace_the_carried_ones_before_every_block(pixels):
    model = prompted(prompt_mode="deep", prompt_start_block=1)
    record = record_block_io(model)
    with torch.no_grad():
        model(pixels)
    assert record["inner_in"][0].shape[1] == 1 + 16
    for block, block_in in zip(blocks(model)[1:], record["inner_in"][1:]):
        assert torch.equal(block_in[:, 1:4], block.gvpt_prompt["default"].expand(2, -1, -1))


@pytest.mark.usefixtures("plain_path")
@pytest.mark.parametrize("start", [0, 2])
def test_prompts_enter_after_the_special_tokens_without_position_embedding(start, pixels):
    model = prompted("deit_clf", prompt_start_block=start)  # DeiT: CLS and distillation token
    record = record_block_io(model)
    embeddings = model.get_base_model().deit.embeddings
    with torch.no_grad():
        model(pixels)
        sequence = embeddings(pixels) if start == 0 else record["outer_out"][start - 1]
    assert sequence.shape[1] == 2 + 16
    prompts = blocks(model)[start].gvpt_prompt["default"].expand(2, -1, -1)
    assert torch.equal(record["inner_in"][start], torch.cat((sequence[:, :2], prompts, sequence[:, 2:]), dim=1))


@pytest.mark.usefixtures("plain_path")
@pytest.mark.parametrize("backbone", ["vit_clf", "deit_clf", "dinov2_reg"])
def test_gates_mix_prompt_rows_with_the_block_input_and_leave_other_tokens_alone(backbone, pixels):
    model = prompted(backbone)
    special = {"vit_clf": 1, "deit_clf": 2, "dinov2_reg": 3}[backbone]
    rows = slice(special, special + 3)
    record = record_block_io(model)
    with torch.no_grad():
        model(pixels)
    for index, block in enumerate(blocks(model)[:-1]):
        block_in, block_out, gated = record["inner_in"][index], record["inner_out"][index], record["outer_out"][index]
        g = torch.sigmoid(block.gvpt_gate["default"])
        assert 0.04 < g < 0.96
        assert torch.equal(gated[:, :special], block_out[:, :special])
        assert torch.equal(gated[:, special + 3 :], block_out[:, special + 3 :])
        torch.testing.assert_close(gated[:, rows], g * block_out[:, rows] + (1 - g) * block_in[:, rows])
        assert torch.equal(record["inner_in"][index + 1], gated)
    # the last block is not gated; its prompt rows leave with it
    last_out, final = record["inner_out"][-1], record["outer_out"][-1]
    assert torch.equal(final, torch.cat((last_out[:, :special], last_out[:, special + 3 :]), dim=1))


LAYOUTS = {  # config -> (blocks with prompts, with gate logits, with temperatures), 4 blocks
    "gated": ({}, {0}, {0, 1, 2}, {0, 1, 2, 3}),
    "start_2": (dict(prompt_start_block=2), {2}, {2}, {2, 3}),
    "start_last": (dict(prompt_start_block=3), {3}, set(), {3}),
    "vpt_shallow": (dict(gated=False, learnable_temperature=False), {0}, set(), set()),
    "gates_only": (dict(learnable_temperature=False), {0}, {0, 1, 2}, set()),
    "temperature_only": (dict(gated=False), {0}, set(), {0, 1, 2, 3}),
    "vpt_deep": (dict(prompt_mode="deep"), {0, 1, 2, 3}, set(), set()),
    "deep_start_1": (dict(prompt_mode="deep", prompt_start_block=1), {1, 2, 3}, set(), set()),
    "deep_temperature": (dict(prompt_mode="deep", learnable_temperature=True), {0, 1, 2, 3}, set(), {0, 1, 2, 3}),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_parameter_layout(layout):
    config, prompts, gates, temperatures = LAYOUTS[layout]
    model = prompted(randomize=False, **config)
    found = {"gvpt_prompt": set(), "gvpt_gate": set(), "gvpt_temperature": set()}
    for block in blocks(model):
        for kind in found:
            if "default" in getattr(block, kind):
                found[kind].add(block.index)
    assert found == {"gvpt_prompt": prompts, "gvpt_gate": gates, "gvpt_temperature": temperatures}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 3 * 32 * len(prompts) + len(gates) + len(temperatures) + (32 * 3 + 3)


@pytest.mark.parametrize("patch_size", [4, 8])
def test_initial_values(patch_size):
    model = get_peft_model(
        make_backbone("vit_clf", patch_size=patch_size), GatedPromptConfig(num_prompt_tokens=64, gate_init=7.5)
    )
    bound = math.sqrt(6 / (3 * patch_size * patch_size + 32))
    for block in blocks(model):
        if block.index < 3:
            assert block.gvpt_gate["default"].item() == -7.5
        assert block.gvpt_temperature["default"].item() == 1.0
    prompts = blocks(model)[0].gvpt_prompt["default"]
    assert prompts.shape == (64, 32)
    assert prompts.abs().max() <= bound
    assert prompts.max() > 0.9 * bound and prompts.min() < -0.9 * bound  # uniform over the whole range
    assert abs(prompts.mean().item()) < 0.1 * bound


def test_temperatures_are_clamped_to_the_papers_range(pixels):
    model = prompted()

    def run(value):
        with torch.no_grad():
            for block in blocks(model):
                block.gvpt_temperature["default"].fill_(value)
            return model(pixels).logits

    torch.testing.assert_close(run(0.001), run(0.01))
    torch.testing.assert_close(run(25.0), run(10.0))
    assert (run(9.0) - run(10.0)).abs().max() > 1e-5
    assert (run(0.02) - run(0.01)).abs().max() > 1e-5


def _temperatures(model):
    return [block.gvpt_temperature["default"] for block in blocks(model)]


def test_stored_temperatures_are_clamped_in_place_before_every_forward(pixels):
    model = prompted()  # RANDOM_TEMPERATURES: 0.5, 2.5, 25.0, 0.004
    with torch.no_grad():
        model(pixels)
    assert [t.item() for t in _temperatures(model)] == pytest.approx([0.5, 2.5, 10.0, 0.01], rel=1e-7)
    assert _temperatures(model)[2].item() == 10.0 and _temperatures(model)[3] == torch.tensor(0.01)
    base = model.base_model.model  # the clamp also holds when the wrapped model is called directly
    with torch.no_grad():
        _temperatures(model)[0].fill_(50.0)
        base(pixels)
    assert _temperatures(model)[0].item() == 10.0


def test_two_forwards_before_one_backward_see_the_same_clamped_temperatures():
    """The clamp must not modify a tensor that the first forward saved for backward (autograd would refuse), and
    both forwards must use the same (clamped) value."""
    first, second = images(batch=2, seed=1), images(batch=2, seed=2)
    model = prompted()
    (model(first).logits.sum() + model(second).logits.sum()).backward()
    together = [t.grad.clone() for t in _temperatures(model)]
    separate = prompted()
    with torch.no_grad():
        for t, clamped in zip(_temperatures(separate), (0.5, 2.5, 10.0, 0.01)):
            t.fill_(clamped)
    separate(first).logits.sum().backward()
    separate(second).logits.sum().backward()
    for got, want in zip(together, (t.grad for t in _temperatures(separate))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_a_temperature_pushed_past_the_bound_stays_on_it_and_leaves_when_the_gradient_turns(pixels, tmp_path):
    """The released code's semantics, in a plain user loop: an optimizer step may push the stored temperature far
    past 10; the next forward puts it back on 10 exactly (a straight-through clamp would let it drift and return
    late), the saved adapter holds 10, and the first step with the opposite gradient brings it inside the range."""
    model = prompted()
    temperature = _temperatures(model)[1]
    with torch.no_grad():
        temperature.fill_(10.0)
    model(pixels).logits.sum().backward()
    slope = temperature.grad.item()
    assert slope != 0
    up = -math.copysign(1.0, slope)  # loss = up * sum(logits) pushes the temperature upwards
    optimizer = torch.optim.SGD([temperature], lr=40.0 / abs(slope))
    for _ in range(5):
        optimizer.zero_grad()
        (up * model(pixels).logits.sum()).backward()
        assert temperature.item() == 10.0  # the forward clamped what the previous step pushed to 50
        optimizer.step()
        assert temperature.item() == pytest.approx(50.0, rel=1e-4)
    model.save_pretrained(tmp_path)
    saved = [v for k, v in load_file(tmp_path / "adapter_model.safetensors").items() if "layer.1.gvpt_temperature" in k]
    assert [v.item() for v in saved] == [10.0]
    optimizer.zero_grad()
    optimizer.param_groups[0]["lr"] = 2.0 / abs(slope)
    (-up * model(pixels).logits.sum()).backward()
    optimizer.step()
    assert temperature.item() == pytest.approx(8.0, rel=1e-4)  # one step back from the bound, not from 50


def test_gradient_checkpointing_with_out_of_range_temperatures_matches_clamped_ones():
    def gradients(checkpointing, temperatures):
        base = make_backbone("vit_clf")
        if checkpointing:
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(base, GatedPromptConfig(num_prompt_tokens=3, prompt_dropout=0.0)).train()
        with torch.no_grad():
            for t, value in zip(_temperatures(model), temperatures):
                t.fill_(value)
        model(images(batch=3), labels=torch.tensor([0, 1, 2])).loss.backward()
        return [t.item() for t in _temperatures(model)], [t.grad.clone() for t in _temperatures(model)]

    stored, checkpointed = gradients(True, (25.0, 0.004, 3.0, 1e6))
    assert stored == pytest.approx([10.0, 0.01, 3.0, 10.0], rel=1e-7)
    _, plain = gradients(False, (10.0, 0.01, 3.0, 10.0))
    for got, want in zip(checkpointed, plain):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_classifier_init_is_kaiming_fan_out_with_the_prior_bias():
    """The released code: weights N(0, 2 / num_classes), bias -log(99)."""
    from gated_vpt import init_classifier_

    torch.manual_seed(0)
    for classes, features in ((2, 20000), (200, 400)):
        head = init_classifier_(torch.nn.Linear(features, classes))
        std = math.sqrt(2 / classes)
        assert head.weight.std().item() == pytest.approx(std, rel=0.02)  # 40,000-80,000 draws: ~0.4 % error
        assert abs(head.weight.mean().item()) < 0.02 * std
        assert torch.equal(head.bias, torch.full((classes,), -math.log(99.0)))


# --- training: what is trainable, what stays frozen ----------------------------------------------------------


def test_trainable_set():
    model = prompted()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(
        ".gvpt_prompt." in name or ".gvpt_gate." in name or ".gvpt_temperature." in name
        or ".classifier.modules_to_save.default." in name
        for name in trainable
    ), trainable
    kinds = {kind for name in trainable for kind in ("prompt", "gate", "temperature") if f"gvpt_{kind}" in name}
    assert kinds == {"prompt", "gate", "temperature"}
    assert model.peft_config["default"].modules_to_save == ["classifier"]


@pytest.mark.parametrize("backbone", ["vit_clf", "dinov2"])
def test_training_mode_leaves_the_backbone_in_eval_mode(backbone):
    dropout = dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    if backbone == "dinov2":
        dropout["drop_path_rate"] = 0.3
    model = get_peft_model(make_backbone(backbone, **dropout), GatedPromptConfig(num_prompt_tokens=3, prompt_dropout=0.0))
    model.train()
    assert model.training and all(b.training for b in blocks(model))
    # every module whose behaviour depends on its mode: dropout, drop-path, attention (attention-probs dropout)
    stochastic = [m for m in model.get_base_model().base_model.modules()
                  if any(kind in type(m).__name__ for kind in ("Dropout", "DropPath", "Attention"))]
    assert len(stochastic) >= 8
    assert [type(m).__name__ for m in stochastic if m.training] == []
    x = images()
    first, second = main_output(model(x)), main_output(model(x))
    assert torch.equal(first, second)
    with torch.no_grad():
        model.eval()
        assert torch.equal(main_output(model(x)), first)


def test_prompt_dropout_is_active_in_training_mode_only():
    model = get_peft_model(make_backbone("vit_clf"), GatedPromptConfig(num_prompt_tokens=3, prompt_dropout=0.5))
    x = images()
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x).logits, model(x).logits)
        model.eval()
        assert torch.equal(model(x).logits, model(x).logits)


@pytest.mark.usefixtures("plain_path")
@pytest.mark.parametrize("mode", ["shallow", "deep"])
def test_prompt_dropout_zeroes_prompt_rows_only_at_the_configured_rate_with_inverse_scaling(mode):
    """On entry to each block that inserts prompts, the CLS and patch rows are exactly what reached it (the
    embeddings, or the previous block's output); a share ``prompt_dropout`` of the prompt entries is zero and the
    rest are the prompts times ``1 / (1 - p)``."""
    rate, num_prompts = 0.3, 40
    model = get_peft_model(make_backbone("vit"), GatedPromptConfig(num_prompt_tokens=num_prompts, prompt_mode=mode,
                                                                   prompt_dropout=rate))
    record = record_block_io(model)
    x = images(batch=4)
    with torch.no_grad():
        model.eval()(x)
        embeddings = record["inner_in"][0]
        for kept in record.values():
            kept.clear()
        model.train()(x)
    rows = slice(1, 1 + num_prompts)
    entering = [block for block in blocks(model) if "default" in block.gvpt_prompt]
    assert len(entering) == (4 if mode == "deep" else 1)
    dropped = []
    for block in entering:
        trained = record["inner_in"][block.index]
        arrived = embeddings if block.index == 0 else record["outer_out"][block.index - 1]
        arrived = torch.cat((arrived[:, :1], arrived[:, -16:]), dim=1)  # CLS and the 16 patches
        assert torch.equal(torch.cat((trained[:, :1], trained[:, rows.stop :]), dim=1), arrived)
        prompts = block.gvpt_prompt["default"].expand(4, -1, -1)
        kept = trained[:, rows] != 0
        torch.testing.assert_close(trained[:, rows][kept], prompts[kept] / (1 - rate))
        dropped.append(1 - kept.float().mean().item())
    # 4 x 40 x 32 = 5120 entries per block: the share dropped is within 0.03 of the rate (about 4.5 sigma)
    assert all(abs(share - rate) < 0.03 for share in dropped), dropped


def test_sgd_steps_change_only_the_adapter_and_the_gates_learn():
    model = prompted()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    labels = torch.tensor([0, 2, 1, 1])
    x = images(batch=4)
    for _ in range(3):
        optimizer.zero_grad()
        model(x, labels=labels).loss.backward()
        for block in blocks(model)[:-1]:
            assert block.gvpt_gate["default"].grad.abs() > 0
        optimizer.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != p.requires_grad, name


# --- adapter files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["vit_clf", "dinov2"])  # blocks at `layers` and at `encoder.layer`
def test_save_and_reload_is_bit_identical_with_layout_independent_keys(backbone, tmp_path, pixels):
    model = prompted(backbone)
    with torch.no_grad():
        want = main_output(model(pixels))
    model.save_pretrained(tmp_path)
    keys = list(load_file(tmp_path / "adapter_model.safetensors"))
    block_keys = [k for k in keys if "gvpt_" in k]
    assert block_keys and all(".encoder.layer." in k and ".layers." not in k for k in block_keys), keys
    in_memory = [n for n, _ in model.named_parameters() if "gvpt_" in n]
    assert all((".layers." in n) == (backbone == "vit_clf") for n in in_memory)

    again = PeftModel.from_pretrained(make_backbone(backbone), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(main_output(again(pixels)), want)
    saved = dict(model.named_parameters())
    for name, p in again.named_parameters():
        if "gvpt_" in name or "modules_to_save" in name:
            assert torch.equal(p, saved[name]), name

    config = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, GatedPromptConfig)
    assert config.to_dict() == json.loads((tmp_path / "adapter_config.json").read_text()) | {"peft_type": config.peft_type}


@pytest.mark.parametrize(
    "other, change",
    [("vit_clf", dict(hidden_size=48)), ("vit_clf", dict(num_hidden_layers=3)), ("deit_clf", {})],
    ids=["hidden_size", "depth", "special_tokens"],
)
def test_adapter_for_another_backbone_is_refused_before_any_change(other, change, tmp_path):
    prompted().save_pretrained(tmp_path)
    base = make_backbone(other, **change)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    field = {"hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers"}.get(next(iter(change), None), "num_special_tokens")
    with pytest.raises(ValueError, match=field):
        PeftModel.from_pretrained(base, tmp_path)
    assert not any(isinstance(m, GatedPromptBlock) for m in base.modules())
    assert not any(m._forward_hooks for m in base.modules())
    assert base.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())


# --- several adapters on one base, disabling, unloading ---------------------------------------------------------


def two_adapters():
    model = prompted()
    model.add_adapter("second", GatedPromptConfig(num_prompt_tokens=3, gate_init=2.0))
    randomize_adapter_(model, "second", seed=1)
    return model.eval()


def test_set_adapter_switches_between_two_adapters(pixels):
    base = make_backbone("vit_clf")
    model = two_adapters()
    with torch.no_grad():
        for name in ("default", "second", "default"):
            model.set_adapter(name)
            want = reference_forward(base, pixels, read_adapter(model, name))
            torch.testing.assert_close(model(pixels).logits, want, rtol=1e-5, atol=1e-5)


def test_per_sample_adapters_equal_each_adapter_on_its_own_samples():
    """Each sample's logits come from its adapter's prompts, gates, temperatures and saved classifier."""
    model = two_adapters()
    x = images(batch=5)
    names = ["second", "default", "default", "second", "default"]
    with torch.no_grad():
        mixed = model(x, adapter_names=names).logits
        for name in ("default", "second"):
            model.set_adapter(name)
            rows = [i for i, n in enumerate(names) if n == name]
            torch.testing.assert_close(mixed[rows], model(x[rows]).logits, rtol=1e-5, atol=1e-6)


def test_delete_adapter_leaves_the_other_untouched(pixels):
    model = two_adapters()
    with torch.no_grad():
        want = model(pixels).logits
    model.delete_adapter("second")
    assert list(model.peft_config) == ["default"]
    assert not any(".second" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, want)


@pytest.mark.parametrize("backbone", ["vit_clf", "vit_mae"])
def test_disable_adapter_is_the_base_exactly(backbone, pixels):
    untouched = make_backbone(backbone)
    model = prompted(backbone)
    noise = torch.arange(16, dtype=torch.float32).expand(2, -1)
    extra = {"noise": noise} if backbone == "vit_mae" else {}
    with torch.no_grad(), model.disable_adapter():
        got = main_output(model(pixels, **extra))
    with torch.no_grad():
        assert torch.equal(got, main_output(untouched(pixels, **extra)))


@pytest.mark.parametrize("backbone", ["vit_clf", "vit_mae"])
def test_unload_restores_the_plain_model(backbone, pixels):
    untouched = make_backbone(backbone)
    model = prompted(backbone)
    model.add_adapter("second", GatedPromptConfig(num_prompt_tokens=2))
    plain = model.unload()
    assert type(plain) is type(untouched)
    assert [(n, type(m)) for n, m in plain.named_modules()] == [(n, type(m)) for n, m in untouched.named_modules()]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in plain.modules())
    assert plain.state_dict().keys() == untouched.state_dict().keys()
    noise = torch.arange(16, dtype=torch.float32).expand(2, -1)
    with torch.no_grad():
        # vit_mae: the unloaded model shuffles patches again, as transformers does, unless given noise
        extra = {"noise": noise} if backbone == "vit_mae" else {}
        assert torch.equal(main_output(plain(pixels, **extra)), main_output(untouched(pixels, **extra)))


def test_merge_and_unload_is_refused_clearly():
    model = prompted()
    with pytest.raises(ValueError, match="unload"):
        model.merge_and_unload()
    assert len(blocks(model)) == 4


# --- config errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_prompt_tokens", 0), ("num_prompt_tokens", -2), ("num_prompt_tokens", 2.5), ("num_prompt_tokens", True),
        ("prompt_mode", "middle"), ("gated", "yes"), ("learnable_temperature", 1),
        ("gate_init", 0.0), ("gate_init", -5.0), ("gate_init", "5"), ("gate_init", True), ("gate_init", float("nan")),
        ("gate_init", 50.5), ("gate_init", float("inf")),
        ("prompt_dropout", 1.0), ("prompt_dropout", -0.1), ("prompt_dropout", "0.1"), ("prompt_dropout", True),
        ("prompt_dropout", float("nan")),
        ("prompt_start_block", -1), ("prompt_start_block", 1.0), ("prompt_start_block", True),
        ("head_pooling", "max"),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"GatedPromptConfig.{field}"):
        GatedPromptConfig(**{field: value})


# Both sides of every numeric bound of GatedPromptConfig: (field, value, accepted).
BOUNDS = [
    ("num_prompt_tokens", 1, True), ("num_prompt_tokens", 0, False),
    ("gate_init", 1e-6, True), ("gate_init", 0.0, False), ("gate_init", 50.0, True), ("gate_init", 50.001, False),
    ("prompt_dropout", 0.0, True), ("prompt_dropout", -1e-6, False), ("prompt_dropout", 0.999, True),
    ("prompt_dropout", 1.0, False),
    ("prompt_start_block", 0, True), ("prompt_start_block", -1, False),
]


@pytest.mark.parametrize("field, value, accepted", BOUNDS)
def test_config_bounds_on_both_sides_and_the_recipe_schema_agrees(field, value, accepted):
    from gated_vpt.recipes import ARGS

    if accepted:
        assert getattr(GatedPromptConfig(**{field: value}), field) == value
    else:
        with pytest.raises(ValueError, match=f"GatedPromptConfig.{field}={value!r} is invalid"):
            GatedPromptConfig(**{field: value})
    assert ARGS[field].valid(value) == accepted, "recipes validate this field with another bound"


def test_deep_prompts_with_gates_are_refused():
    with pytest.raises(ValueError, match="prompt_mode='deep', gated=True"):
        GatedPromptConfig(prompt_mode="deep", gated=True)


def test_start_block_beyond_the_backbone_is_refused():
    base = make_backbone("vit_clf")
    with pytest.raises(ValueError, match="prompt_start_block=4.*4 blocks"):
        get_peft_model(base, GatedPromptConfig(prompt_start_block=4))
    assert not any(isinstance(m, GatedPromptBlock) for m in base.modules())
