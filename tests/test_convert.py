"""The checkpoint converter, on synthetic state dicts that use the official MoCo v3 / MAE key names and shapes.

A converted model must compute what the original timm-style ViT computes; the reference forward below is written
from the timm architecture (pre-norm blocks, fused qkv, LayerNorm eps 1e-6, exact GELU) in plain torch.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F
from transformers import ViTForImageClassification, ViTModel
from conftest import modules_loaded_by_command

from gated_vpt.convert import convert_checkpoint, convert_timm_vit_state_dict, main

DIM, DEPTH, HEADS, MLP, PATCH, IMAGE, CLASSES = 32, 2, 2, 64, 8, 32, 5
TOLERANCE = 1e-5


def timm_vit_weights(seed: int = 0, head: bool = True, fc_norm: bool = False) -> dict[str, torch.Tensor]:
    """A tiny ViT's weights under timm's names, random (LayerNorm scales around 1)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    grid = (IMAGE // PATCH) ** 2
    weights = {
        "cls_token": rand(1, 1, DIM),
        "pos_embed": rand(1, grid + 1, DIM),
        "patch_embed.proj.weight": rand(DIM, 3, PATCH, PATCH, scale=0.05),
        "patch_embed.proj.bias": rand(DIM),
    }
    for i in range(DEPTH):
        weights.update({
            f"blocks.{i}.norm1.weight": rand(DIM, offset=1.0), f"blocks.{i}.norm1.bias": rand(DIM),
            f"blocks.{i}.attn.qkv.weight": rand(3 * DIM, DIM), f"blocks.{i}.attn.qkv.bias": rand(3 * DIM),
            f"blocks.{i}.attn.proj.weight": rand(DIM, DIM), f"blocks.{i}.attn.proj.bias": rand(DIM),
            f"blocks.{i}.norm2.weight": rand(DIM, offset=1.0), f"blocks.{i}.norm2.bias": rand(DIM),
            f"blocks.{i}.mlp.fc1.weight": rand(MLP, DIM), f"blocks.{i}.mlp.fc1.bias": rand(MLP),
            f"blocks.{i}.mlp.fc2.weight": rand(DIM, MLP), f"blocks.{i}.mlp.fc2.bias": rand(DIM),
        })
    norm = "fc_norm" if fc_norm else "norm"
    weights.update({f"{norm}.weight": rand(DIM, offset=1.0), f"{norm}.bias": rand(DIM)})
    if head:
        weights.update({"head.weight": rand(CLASSES, DIM), "head.bias": rand(CLASSES)})
    return weights


def timm_forward(w: dict[str, torch.Tensor], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference ViT forward (timm's VisionTransformer): returns (pre-norm tokens, normed tokens)."""
    x = F.conv2d(images, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w["cls_token"].expand(len(x), -1, -1), x], dim=1) + w["pos_embed"]
    batch, tokens, _ = x.shape
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (DIM,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(batch, tokens, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (DIM // HEADS) ** -0.5).softmax(dim=-1)
        h = (attention @ v).transpose(1, 2).reshape(batch, tokens, DIM)
        x = x + F.linear(h, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        h = F.layer_norm(x, (DIM,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])), w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
        x = x + h
    norm = "fc_norm" if "fc_norm.weight" in w else "norm"
    return x, F.layer_norm(x, (DIM,), w[f"{norm}.weight"], w[f"{norm}.bias"], eps=1e-6)


def mocov3_linear_probe(weights):
    """MoCo v3's linear-probe file: the DDP-wrapped encoder under 'state_dict'."""
    return {"epoch": 90, "arch": "vit_base", "state_dict": {f"module.base_encoder.{k}": v for k, v in weights.items()}}


def mocov3_pretraining(weights):
    """MoCo v3's pretraining file: base and momentum encoders (heads replaced by BN projectors) and a predictor."""
    encoder = {k: v for k, v in weights.items() if not k.startswith("head.")}
    projector = {"head.0.weight": torch.randn(16, DIM), "head.1.weight": torch.ones(16), "head.1.bias": torch.zeros(16),
                 "head.1.running_mean": torch.zeros(16), "head.1.running_var": torch.ones(16),
                 "head.1.num_batches_tracked": torch.tensor(3), "head.3.weight": torch.randn(8, 16)}
    state = {}
    for name in ("base_encoder", "momentum_encoder"):
        state.update({f"module.{name}.{k}": v.clone() for k, v in {**encoder, **projector}.items()})
    state.update({"module.predictor.0.weight": torch.randn(16, 8), "module.predictor.3.weight": torch.randn(8, 16)})
    return {"epoch": 300, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4}]}}


def mae_pretraining(weights):
    """MAE's pretraining file: encoder weights plus mask token and decoder under 'model'."""
    encoder = {k: v for k, v in weights.items() if not k.startswith("head.")}
    decoder = {"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.randn(16, DIM),
               "decoder_pos_embed": torch.zeros(1, 17, 16), "decoder_blocks.0.norm1.weight": torch.ones(16),
               "decoder_norm.weight": torch.ones(16), "decoder_pred.weight": torch.randn(192, 16)}
    return {"model": {**encoder, **decoder}}


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


def load(config, weights, cls=ViTForImageClassification):
    model = cls(config).eval()
    model.load_state_dict(weights, strict=True)
    return model


@pytest.mark.parametrize("layout", ["module.base_encoder.", "module.", ""])
def test_mocov3_linear_probe_matches_reference_forward(images, layout):
    weights = timm_vit_weights()
    state = {layout + k: v for k, v in weights.items()}
    config, converted = convert_timm_vit_state_dict(state, "mocov3", num_attention_heads=HEADS)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (DIM, DEPTH, MLP)
    assert (config.image_size, config.patch_size, config.num_labels, config.layer_norm_eps) == (IMAGE, PATCH, CLASSES, 1e-6)
    model = load(config, converted)
    with torch.no_grad():
        _, features = timm_forward(weights, images)
        expected_logits = F.linear(features[:, 0], weights["head.weight"], weights["head.bias"])
        out = model(images, output_hidden_states=True)
        hidden = model.vit.layernorm(out.hidden_states[-1])
    assert (hidden - features).abs().max() < TOLERANCE
    assert (out.logits - expected_logits).abs().max() < TOLERANCE


def test_mocov3_pretraining_checkpoint_keeps_base_encoder_only(tmp_path, images):
    weights = timm_vit_weights(seed=2)
    checkpoint = mocov3_pretraining(weights)
    path = tmp_path / "vit-tiny-300ep.pth.tar"
    torch.save(checkpoint, path)
    out = convert_checkpoint(path, tmp_path / "out", "mocov3", trust_checkpoint=True, num_attention_heads=HEADS)
    projector_and_momentum = [k for k in checkpoint["state_dict"] if ".head." in k or "momentum" in k or "predictor" in k]
    assert json.loads((out / "conversion.json").read_text())["dropped_pretraining_weights"] == len(projector_and_momentum)
    encoder = ViTModel.from_pretrained(out).eval()
    with torch.no_grad():
        assert (encoder(images).last_hidden_state - timm_forward(weights, images)[1]).abs().max() < TOLERANCE


def test_mae_pretraining_and_global_pool_finetuned(images):
    weights = timm_vit_weights(seed=3, head=False)
    config, converted = convert_timm_vit_state_dict(mae_pretraining(weights)["model"], "mae", HEADS)
    encoder = ViTModel(config, add_pooling_layer=False).eval()
    encoder.load_state_dict({k.removeprefix("vit."): v for k, v in converted.items()}, strict=True)
    with torch.no_grad():
        assert (encoder(images).last_hidden_state - timm_forward(weights, images)[1]).abs().max() < TOLERANCE

    # MAE fine-tuning with global pooling: fc_norm(mean of the patch tokens), then the head.
    finetuned = timm_vit_weights(seed=4, fc_norm=True)
    config, converted = convert_timm_vit_state_dict(finetuned, "mae", HEADS)
    model = load(config, converted)
    with torch.no_grad():
        tokens, _ = timm_forward(finetuned, images)
        pooled = F.layer_norm(tokens[:, 1:].mean(1), (DIM,), finetuned["fc_norm.weight"], finetuned["fc_norm.bias"], eps=1e-6)
        expected = F.linear(pooled, finetuned["head.weight"], finetuned["head.bias"])
        last = model(images, output_hidden_states=True).hidden_states[-1]
        logits = model.classifier(model.vit.layernorm(last[:, 1:].mean(1)))
    assert (logits - expected).abs().max() < TOLERANCE


def test_unknown_missing_and_malformed_keys_raise():
    weights = timm_vit_weights()
    with pytest.raises(ValueError, match=r"does not know: blocks\.0\.attn\.rel_pos"):
        convert_timm_vit_state_dict({**weights, "blocks.0.attn.rel_pos": torch.zeros(3)}, "mocov3", HEADS)
    with pytest.raises(ValueError, match=r"missing: .*layers\.1\.mlp\.fc2\.weight"):
        convert_timm_vit_state_dict({k: v for k, v in weights.items() if k != "blocks.1.mlp.fc2.weight"}, "mocov3", HEADS)
    with pytest.raises(ValueError, match="lacks cls_token"):
        convert_timm_vit_state_dict({k: v for k, v in weights.items() if k != "cls_token"}, "mae", HEADS)
    with pytest.raises(ValueError, match="3 x 32 rows"):
        convert_timm_vit_state_dict({**weights, "blocks.0.attn.qkv.weight": torch.zeros(64, DIM)}, "mocov3", HEADS)
    with pytest.raises(ValueError, match="outside base_encoder: queue"):
        convert_timm_vit_state_dict({"queue": torch.zeros(2), **mocov3_linear_probe(weights)["state_dict"]}, "mocov3", HEADS)
    with pytest.raises(ValueError, match="pass num_attention_heads"):
        convert_timm_vit_state_dict(weights, "mocov3")
    with pytest.raises(ValueError, match="model_type='dino' is not supported"):
        convert_timm_vit_state_dict(weights, "dino", HEADS)
    # A head that is not one linear layer (MAE's linear probe: BatchNorm + Linear) needs drop_head.
    probe = {k: v for k, v in weights.items() if not k.startswith("head.")}
    probe.update({"head.0.running_mean": torch.zeros(DIM), "head.1.weight": torch.zeros(CLASSES, DIM)})
    with pytest.raises(ValueError, match="drop_head=True"):
        convert_timm_vit_state_dict(probe, "mae", HEADS)
    _, converted = convert_timm_vit_state_dict(probe, "mae", HEADS, drop_head=True)
    assert not any(k.startswith("classifier.") for k in converted)


def test_default_heads_for_official_sizes():
    # Heads cannot be read off the weights; hidden size 768 is ViT-B/16 (12 heads) in both releases.
    scale = {DIM: 768, 3 * DIM: 3 * 768, MLP: 4 * 768}
    wide = {k: torch.zeros(*[scale.get(s, s) for s in v.shape]) for k, v in timm_vit_weights().items()}
    config, _ = convert_timm_vit_state_dict(wide, "mae")
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (768, 12, 3072)


def test_pickled_checkpoint_needs_opt_in_and_round_trips(tmp_path, images):
    weights = timm_vit_weights(seed=5)
    path = tmp_path / "linear-vit-tiny.pth.tar"
    torch.save(mocov3_linear_probe(weights), path)
    out = tmp_path / "converted"
    with pytest.raises(ValueError, match="--trust_checkpoint"):
        convert_checkpoint(path, out, "mocov3", num_attention_heads=HEADS)
    assert not out.exists()
    convert_checkpoint(path, out, "mocov3", trust_checkpoint=True, num_attention_heads=HEADS)
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "conversion.json"} <= {p.name for p in out.iterdir()}
    model = ViTForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        expected = F.linear(timm_forward(weights, images)[1][:, 0], weights["head.weight"], weights["head.bias"])
        assert (model(images).logits - expected).abs().max() < TOLERANCE
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["image_mean"] == [0.485, 0.456, 0.406] and preprocessor["size"] == {"height": IMAGE, "width": IMAGE}
    with pytest.raises(ValueError, match="not empty"):
        convert_checkpoint(path, out, "mocov3", trust_checkpoint=True, num_attention_heads=HEADS)


def test_drop_head_loads_with_any_label_count(tmp_path, images):
    weights = timm_vit_weights(seed=6, head=False)
    path = tmp_path / "mae.safetensors"
    save_file(mae_pretraining(weights)["model"], str(path))
    out = convert_checkpoint(path, tmp_path / "mae", "mae", num_attention_heads=HEADS)  # safetensors: no opt-in
    model = ViTForImageClassification.from_pretrained(out, num_labels=7).eval()
    assert model.classifier.out_features == 7
    with torch.no_grad():
        hidden = model.vit(images).last_hidden_state
    assert (hidden - timm_forward(weights, images)[1]).abs().max() < TOLERANCE


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": timm_vit_weights(), "hook": Exploit()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_checkpoint(path, tmp_path / "out", "mocov3", trust_checkpoint=True, num_attention_heads=HEADS)
    assert Exploit.ran is False


class Exploit:
    ran = False

    def __reduce__(self):
        return (setattr, (Exploit, "ran", True))


def test_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--trust_checkpoint" in help_text and "--drop_head" in help_text and "linear-vit-b-300ep" in help_text
    path = tmp_path / "ckpt.pth.tar"
    torch.save(mocov3_linear_probe(timm_vit_weights()), path)
    assert main([str(path), str(tmp_path / "a"), "--model_type", "mocov3", "--num_attention_heads", "2"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("gated-vpt: error: ") and "--trust_checkpoint" in error and error.count("\n") == 1
    args = [str(path), str(tmp_path / "b"), "--model_type", "mocov3", "--num_attention_heads", "2", "--trust_checkpoint",
            "--drop_head"]
    assert main(args) == 0
    assert "without classifier" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "conversion.json").read_text())["classifier"] is False


def _recipe_command(name: str) -> tuple[list[str], dict]:
    """A recipe's backbone.prepare command as ``gated-vpt`` arguments after ``convert``, and the recipe's args."""
    from gated_vpt.recipes import RECIPES_DIR, load_recipe

    recipe_path = RECIPES_DIR / name
    words = json.loads(recipe_path.read_text())["backbone"]["prepare"].split()
    assert words[:2] == ["gated-vpt", "convert"]
    return words[2:], load_recipe(recipe_path)


def test_recipe_conversion_command_produces_the_recipe_backbone(tmp_path, monkeypatch, images):
    """The MoCo v3 recipes' prepare command, run as written, yields their model_name_or_path."""
    argv, args = _recipe_command("mocov3-fgvc-cub.json")
    assert argv[-1] == args["model_name_or_path"] and "--trust_checkpoint" in argv
    weights = timm_vit_weights(seed=7)
    monkeypatch.chdir(tmp_path)
    torch.save(mocov3_linear_probe(weights), argv[-2])
    assert main(argv + ["--num_attention_heads", str(HEADS)]) == 0
    model = ViTForImageClassification.from_pretrained(args["model_name_or_path"], num_labels=args["num_labels"]).eval()
    assert model.classifier.out_features == 200
    with torch.no_grad():
        assert (model.vit(images).last_hidden_state - timm_forward(weights, images)[1]).abs().max() < TOLERANCE


def test_mae_recipe_command_converts_timm_named_safetensors_from_the_hub(tmp_path, images):
    """The MAE recipes' prepare command reads timm's safetensors (MAE's pretraining weights, no pickle) from a Hub
    repo, here served by the local test Hub, and yields the recipe's folder with the same forward as timm's ViT."""
    import os

    from safetensors.torch import save

    from hub_server import Repo, running_hub

    argv, args = _recipe_command("mae-vtab-dtd.json")
    repo_id = argv[-2]
    assert repo_id == "timm/vit_base_patch16_224.mae" and "--trust_checkpoint" not in argv
    weights = timm_vit_weights(seed=9, head=False)  # timm's MAE copy: encoder only, final norm, no head
    sha = "9" * 40
    with running_hub() as hub:
        hub.repos[repo_id] = Repo(commits=[(sha, {"model.safetensors": save(weights)})])
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
        [loaded] = modules_loaded_by_command(tmp_path, ["convert", *argv, "--num_attention_heads", str(HEADS)], env=env)
    assert "transformers" in loaded and "peft" not in loaded  # the installed command converts without peft
    folder = tmp_path / args["model_name_or_path"]
    assert json.loads((folder / "conversion.json").read_text())["source"] == repo_id
    assert json.loads((folder / "conversion.json").read_text())["revision"] == sha
    model = ViTForImageClassification.from_pretrained(folder, num_labels=args["num_labels"]).eval()
    with torch.no_grad():
        assert (model.vit(images).last_hidden_state - timm_forward(weights, images)[1]).abs().max() < TOLERANCE


def test_a_missing_file_that_is_no_hub_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist: pass the path of the downloaded file, or a Hub repo id"):
        convert_checkpoint(tmp_path / "no" / "such" / "file.pth", tmp_path / "out", "mae")
