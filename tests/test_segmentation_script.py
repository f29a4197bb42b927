"""examples/train_semantic_segmentation.py: the --quick run end to end (adapter, metrics, card, reload), resuming
an interrupted run, and bad input refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import load_example

REPO = Path(__file__).resolve().parent.parent
script = load_example("train_semantic_segmentation")
# One epoch of the quick setting (12 updates) with the default BatchNorm decoder, validation only at the end.
QUICK_ARGS = ["--quick", "--num_train_epochs", "1", "--checkpointing_steps", "4", "--eval_every_epochs", "0"]


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("quick")
    metrics = script.main([*QUICK_ARGS, "--output_dir", str(output)])
    return output, metrics


@pytest.mark.slow
def test_quick_run_learns_and_writes_one_adapter_file_with_a_card(quick_run):
    output, metrics = quick_run
    assert metrics["validation_miou"] > 0.4  # 4 classes; image-blind predictors score below 0.2 (test_segmentation)
    assert 0 < metrics["validation_miou_multi_scale"] <= 1
    assert len(metrics["validation_per_class_iou"]) == 4
    adapter = output / "adapter"
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    for part in ("gvpt_prompt", "gvpt_gate", "gvpt_temperature", "decode_head", "aux_heads"):
        assert any(part in key for key in weights), part
    assert (adapter / "segmentation_head.json").is_file()
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["validation_miou"] == pytest.approx(metrics["validation_miou"])
    assert "validation_miou" in (adapter / "README.md").read_text()
    assert (output / "gates.png").is_file() and (output / "learning_curve.png").is_file()


@pytest.mark.slow
def test_saved_adapter_reproduces_the_reported_miou(quick_run):
    from gated_vpt.segmentation import load_segmentation_adapter
    from gated_vpt.segmentation.inference import evaluate_segmentation
    from gated_vpt.segmentation.training import load_backbone, load_segmentation_data

    output, metrics = quick_run
    args = script.parse_args([*QUICK_ARGS, "--output_dir", str(output)])
    model = load_segmentation_adapter(load_backbone(None, seed=args.seed), output / "adapter")
    data = load_segmentation_data(args)
    scores = evaluate_segmentation(model, data.eval_loaders["validation"], 4, 255)
    assert scores["mean_iou"] == pytest.approx(metrics["validation_miou"], abs=1e-6)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_adapter(quick_run, tmp_path):
    output, _ = quick_run
    argv = [*QUICK_ARGS, "--output_dir", str(tmp_path), "--multi_scale_eval", "false"]
    assert script.main([*argv, "--max_train_steps", "6"]) == {}
    script.main([*argv, "--resume_from_checkpoint", "latest"])
    expected, resumed = load_file(str(output / "adapter" / "adapter_model.safetensors")), load_file(
        str(tmp_path / "adapter" / "adapter_model.safetensors")
    )
    assert expected.keys() == resumed.keys() and any(key.endswith("norm.running_mean") for key in expected)
    for key in expected:  # prompts, gates, heads and the decoder's BatchNorm statistics
        assert torch.equal(expected[key], resumed[key]), key


def test_classification_recipe_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'image-classification' recipe"):
        script.main(["--config", str(REPO / "hub_configs" / "mae-fgvc-cub.json"), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def _folder(root: Path, mask_size: tuple[int, int] = (12, 10), mask_value: int = 1) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(4):
        Image.fromarray(np.full((10, 12, 3), 80, dtype=np.uint8)).save(root / "images" / f"{i}.png")
        Image.new("L", mask_size, color=mask_value if i == 3 else 0).save(root / "annotations" / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "mask_size, mask_value, message",
    [((12, 9), 1, "exactly its image's size"), ((12, 10), 7, r"\[7\] outside the class range 0..2")],
)
def test_bad_masks_are_refused_before_training(tmp_path, mask_size, mask_value, message):
    data = _folder(tmp_path / "data", mask_size, mask_value)
    with pytest.raises(ValueError, match=message):
        script.main(["--train_dir", str(data), "--num_labels", "3", "--model_name_or_path", str(_tiny_backbone(tmp_path)),
                     "--output_dir", str(tmp_path / "out"), "--crop_size", "8"])
    assert not (tmp_path / "out").exists()


def _tiny_backbone(tmp_path: Path) -> Path:
    from transformers import ViTConfig, ViTModel

    path = tmp_path / "vit"
    ViTModel(ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32), add_pooling_layer=False).save_pretrained(path)
    return path


def test_every_segmentation_recipe_loads_into_the_script():
    from gated_vpt.recipes import SEGMENTATION, list_recipes

    recipes = [p for p in list_recipes() if json.loads(p.read_text())["task_type"] == SEGMENTATION]
    assert len(recipes) >= 6  # MAE and MoCo v3: gated, VPT-shallow, VPT-deep
    for path in recipes:
        args = script.parse_args(["--config", str(path)])
        recipe = json.loads(path.read_text())["args"]
        assert {key: getattr(args, key) for key in recipe} == recipe, path.name
        assert args.num_labels == 150 and args.reduce_labels and args.scheduler == "poly"


def test_push_without_a_repo_id_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        script.main([*QUICK_ARGS, "--output_dir", str(tmp_path / "out"), "--push_to_hub"])
    assert not (tmp_path / "out").exists()


def test_heads_train_at_ten_times_the_rate_and_the_poly_decay_ends_at_the_floor():
    """SETR-PUP's ADE20K optimisation: decode and auxiliary heads at 10x the learning rate, every group decays as
    min_lr + (base - min_lr) * (1 - t / T) ** 0.9 (mmsegmentation's poly with min_lr 1e-4)."""
    from gated_vpt.segmentation.model import HEAD_MODULES
    from gated_vpt.segmentation.training import build_segmentation_model
    from gated_vpt.training.optim import build_optimizer, build_scheduler

    args = script.parse_args(["--quick", "--learning_rate", "0.001", "--decoder_lr_multiplier", "10",
                              "--min_learning_rate", "1e-4"])
    model = build_segmentation_model(args)
    optimizer = build_optimizer(model, "sgd", args.learning_rate, head_modules=HEAD_MODULES,
                                head_lr_multiplier=args.decoder_lr_multiplier)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert sorted(groups) == ["heads", "others"]
    assert (groups["others"]["lr"], groups["heads"]["lr"]) == (0.001, pytest.approx(0.01))
    names = {id(p): n for n, p in model.named_parameters()}
    head_names = [names[id(p)] for p in groups["heads"]["params"]]
    assert head_names and all(".decode_head." in n or ".aux_heads." in n for n in head_names)
    assert all("gvpt_" in names[id(p)] for p in groups["others"]["params"])
    total = 20
    scheduler = build_scheduler(optimizer, 4, 0, 5, "step", decay="poly", power=0.9, min_learning_rate=1e-4)
    seen = {name: [] for name in groups}
    for _ in range(total + 1):
        for name, group in groups.items():
            seen[name].append(group["lr"])
        optimizer.step()
        scheduler.step()
    for name, base in (("others", 0.001), ("heads", 0.01)):
        want = [1e-4 + (base - 1e-4) * (1 - min(t, total) / total) ** 0.9 for t in range(total + 1)]
        assert seen[name] == pytest.approx(want, rel=1e-9), name
        assert seen[name][-1] == pytest.approx(1e-4)


def test_the_last_partial_batch_is_kept_and_the_dry_run_says_so(tmp_path, capsys):
    from gated_vpt.segmentation.training import load_segmentation_data

    args = script.parse_args(["--quick", "--per_device_train_batch_size", "10"])
    loader = load_segmentation_data(args).train_loader
    assert [len(batch["labels"]) for batch in loader] == [10] * 9 + [6]  # 96 synthetic training images
    output = tmp_path / "never-written"
    assert script.main(["--quick", "--per_device_train_batch_size", "10", "--dry_run", "--output_dir", str(output)]) == {}
    printed = capsys.readouterr().out
    assert "updates per epoch: 10 (ceil(96 / 10) batches" in printed
    assert "trainable parameters: 37,643 of 95,987" in printed and "all: 0:0.05 " in printed
    assert not output.exists()


def test_dry_run_of_an_ade20k_recipe_names_the_backbone_to_prepare(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert script.main(["--config", str(REPO / "hub_configs" / "mae-ade20k.json"), "--dry_run"]) == {}
    printed = capsys.readouterr().out
    assert "backbone: backbones/mae-vit-b16 NOT PREPARED" in printed
    assert "gated-vpt convert --model_type mae timm/vit_base_patch16_224.mae backbones/mae-vit-b16" in printed
    assert "  heads: 0:0.01 " in printed and "  others: 0:0.001 " in printed
    assert "data: data/ade20k/training: MISSING" in printed and not (tmp_path / "outputs").exists()
