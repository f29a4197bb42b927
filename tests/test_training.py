"""The image-classification training script end to end on a tiny MAE and a tiny image folder: outputs, exact
resume after an interruption, refusal of bad input before anything is written, recipes, checkpoints, and a
two-process run that matches one process with the same global batch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEModel

from gated_vpt.training.checkpointing import TrainState, load_checkpoint, save_checkpoint
from gated_vpt.training.metrics import load_metric
from gated_vpt.training.optim import build_optimizer, build_scheduler

from conftest import load_example

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "train_image_classification.py"
CLASSES = ("circle", "cross", "square")
script = load_example("train_image_classification")


def _shape(kind: str, rng: np.random.Generator, size: int = 12) -> np.ndarray:
    """A noisy drawing of one of three shapes, so the classes are learnable."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2 + rng.normal(0, 0.7, 2)[:, None, None]
    if kind == "circle":
        image = (np.abs(np.hypot(x, y) - size / 3.5) < 1.2).astype(float)
    elif kind == "cross":
        image = ((np.abs(x) < 1.2) | (np.abs(y) < 1.2)).astype(float)
    else:
        image = ((np.maximum(np.abs(x), np.abs(y)) - size / 3.5) ** 2 < 1.5).astype(float)
    return np.clip(image + rng.normal(0, 0.15, image.shape), 0, 1)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny random MAE (with a preprocessor config) and an image folder: 3 classes, 16 train / 4 validation /
    4 test images each, grayscale PNGs."""
    root = tmp_path_factory.mktemp("training")
    torch.manual_seed(0)
    config = ViTMAEConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                          intermediate_size=64, mask_ratio=0.0)
    ViTMAEModel(config).save_pretrained(root / "mae")
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.2] * 3, image_std=[0.3] * 3).save_pretrained(root / "mae")
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("validation", 4), ("test", 4)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray((255 * _shape(name, rng)).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def _offline_caches(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _argv(assets: Path, output: Path, **overrides) -> list[str]:
    settings = dict(
        model_name_or_path=assets / "mae", train_dir=assets / "train", validation_dir=assets / "validation",
        test_dir=assets / "test", output_dir=output, transform="fgvc", num_prompt_tokens=2, gate_init=2,
        learning_rate=0.2, gate_learning_rate=2.0, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        num_train_epochs=3, warmup_epochs=1, checkpointing_steps=2, seed=3,
    )
    settings.update(overrides)
    argv = []
    for key, value in settings.items():
        argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return argv


def _adapter(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "adapter" / "adapter_model.safetensors"))


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(assets, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted")
    metrics = script.main(_argv(assets, output))
    return output, metrics


def test_run_writes_adapter_metrics_plots_and_card(uninterrupted):
    output, metrics = uninterrupted
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "metrics.json", "gates.png",
                 "learning_curve.png"):
        assert (output / name).is_file(), name
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    assert [r["epoch"] for r in saved["history"]] == [0, 1, 2]
    # The warmup starts at 0 (VPT's schedule), then the cosine; the gate group has its own learning rate.
    assert [r["lr/others"] for r in saved["history"]] == pytest.approx([0.0, 0.2, 0.1])
    assert [r["lr/gates"] for r in saved["history"]] == pytest.approx([0.0, 2.0, 1.0])
    gates = [b["gate"] for b in saved["gates"]["blocks"]]
    assert gates[-1] is None and all(g != pytest.approx(torch.sigmoid(torch.tensor(-2.0)).item()) for g in gates[:-1])
    # 16 images x 3 classes, batches of 4 with 2-step accumulation: 6 updates per epoch.
    assert json.loads((output / "epoch_2" / "state.json").read_text())["state"]["completed_steps"] == 18
    # --save_total_limit 2 (the default): the two newest checkpoints are kept (updates 16 and 18).
    assert sorted(p.name for p in output.iterdir() if p.is_dir() and p.name != "adapter") == ["epoch_2", "step_16"]
    card = (output / "adapter" / "README.md").read_text()  # written by gated_vpt.card
    assert "gated-vpt" in card and "| test_accuracy |" in card and (output / "adapter" / "gates.png").is_file()
    assert json.loads((output / "adapter" / "id2label.json").read_text()) == {str(i): c for i, c in enumerate(CLASSES)}
    umask = os.umask(0)
    os.umask(umask)
    assert {f.name: f.stat().st_mode & 0o777 for f in (output / "adapter").iterdir()} == {
        f.name: 0o666 & ~umask for f in (output / "adapter").iterdir()}
    assert {f.stat().st_mode & 0o777 for f in (output / "epoch_2").iterdir()} == {0o666 & ~umask}


def test_test_every_epoch_gives_the_test_top1_at_the_best_validation_epoch(assets, tmp_path):
    """As the released code's log: the test split evaluated after every epoch next to validation, and metrics.json
    giving the test top-1 of the (earliest) best validation epoch besides the last epoch's."""
    metrics = script.main(_argv(assets, tmp_path / "run", num_train_epochs=4, checkpointing_steps="none",
                                test_every_epoch="true"))
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [sorted(k for k in r if k.endswith("accuracy")) for r in history] == [["test_accuracy", "validation_accuracy"]] * 4
    best = max(range(4), key=lambda e: (history[e]["validation_accuracy"], -e))
    assert (metrics["best_validation_epoch"], metrics["best_validation_accuracy"]) == (best, history[best]["validation_accuracy"])
    assert metrics["test_accuracy_at_best_validation"] == history[best]["test_accuracy"]
    assert metrics["test_accuracy"] == history[-1]["test_accuracy"]  # the last epoch's model, evaluated once more
    assert "best_validation_note" not in metrics


def test_card_of_a_run_names_its_data_and_base_without_local_paths(uninterrupted, assets):
    output, _ = uninterrupted
    card = (output / "adapter" / "README.md").read_text()
    assert str(assets) not in card and str(output) not in card and "/tmp" not in card
    assert "`mae` (a local model folder, not on the Hub)" in card and "trained on `train (a local image folder)`" in card
    assert ModelCard(card).data.model_name == output.name and "pip install -e ." in card


def test_help_shows_defaults_in_groups(capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    text = capsys.readouterr().out
    assert [g for g in ("\nmodel:", "\ndata ", "\nmethod ", "\noptimisation ", "\nrun:") if g not in text] == []
    for shown in ("(default: 0.5)", "(default: 40)", "(default: 64)", "(default: 0)", "(default:\n", "outputs/image-classification"):
        assert shown in text, shown
    assert script.parse_args(["--checkpointing_steps", "none", "--save_total_limit", "none"]).checkpointing_steps is None


def test_saved_adapter_reproduces_the_reported_accuracy(uninterrupted, assets):
    from gated_vpt import load_adapter
    from gated_vpt.training.classification import load_image_classifier
    from gated_vpt.training.data import ImageTransform

    output, metrics = uninterrupted
    # MAE weights in ViTForImageClassification, as trained by the script: the reloaded adapter predicts the same.
    model = load_adapter(load_image_classifier(str(assets / "mae"), list(CLASSES)), output / "adapter")
    assert type(model.get_base_model()).__name__ == "ViTForImageClassification" and model.config.model_type == "vit_mae"
    transform = ImageTransform("fgvc", 16, (0.2,) * 3, (0.3,) * 3)
    pixels, labels = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((assets / "test" / name).glob("*.png")):
            pixels.append(transform(Image.open(path)))
            labels.append(label)
    with torch.no_grad():
        predictions = model.eval()(pixel_values=torch.stack(pixels)).logits.argmax(-1)
    assert (predictions == torch.tensor(labels)).float().mean().item() == pytest.approx(metrics["test_accuracy"])


def test_interrupted_run_resumes_to_the_same_adapter(uninterrupted, assets, tmp_path):
    """Interrupted after the warm-up epoch, mid-epoch, where the learning rate is 0.2: the resumed run ends with
    the uninterrupted run's adapter only if the trainable weights, the optimizer's momentum, the scheduler's
    position and the RNG (prompt dropout, augmentation) are all restored; dropping any one of them changes it."""
    output, _ = uninterrupted
    interrupted = tmp_path / "interrupted"
    # Killed after 9 updates (6 per epoch): the last checkpoint is step_8, in epoch 1, and the ninth update is lost;
    # --save_total_limit 1 has pruned the older ones (step_2, step_4, epoch_0).
    assert script.main(_argv(assets, interrupted, max_train_steps=9, save_total_limit=1)) == {}
    assert not (interrupted / "adapter").exists()
    assert sorted(p.name for p in interrupted.iterdir() if p.is_dir()) == ["step_8"]
    checkpoint = json.loads((interrupted / "step_8" / "state.json").read_text())["state"]
    assert (checkpoint["epoch"], checkpoint["batches_in_epoch"], checkpoint["completed_steps"]) == (1, 4, 8)
    assert json.loads((interrupted / "step_8" / "scheduler.json").read_text())["_last_lr"] == pytest.approx([0.2, 2.0])
    script.main(_argv(assets, interrupted, resume_from_checkpoint="latest", save_total_limit=1))
    # The newest checkpoint is kept, and the one the run resumed from is never deleted.
    assert sorted(p.name for p in interrupted.iterdir() if p.is_dir() and p.name != "adapter") == ["epoch_2", "step_8"]
    expected, resumed = _adapter(output), _adapter(interrupted)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    history = lambda path: json.loads((path / "metrics.json").read_text())["history"]  # noqa: E731
    assert history(interrupted) == history(output)


def test_a_stop_signal_checkpoints_at_the_next_update_and_the_run_resumes_exactly(uninterrupted, assets, tmp_path, monkeypatch):
    """--stop_signals USR2 (a scheduler's notice): the signal arrives during the third update (mid-epoch 0); the
    run writes step_3 right after it and stops with RunInterrupted; resuming ends with the uninterrupted adapter."""
    import signal

    from gated_vpt.training.run import RunInterrupted

    updates, step = [], torch.optim.SGD.step

    def step_and_signal(self, *args, **kwargs):
        updates.append(1)
        if len(updates) == 3:
            signal.raise_signal(signal.SIGUSR2)  # without the flag this would end the process
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step_and_signal)
    output = tmp_path / "stopped"
    previous = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(RunInterrupted, match="Stopped on a signal after optimizer update 3 .epoch 0, batch 6."):
        script.main(_argv(assets, output, stop_signals="USR2"))
    assert signal.getsignal(signal.SIGUSR2) == previous and RunInterrupted.exit_status == 3
    assert sorted(p.name for p in output.iterdir() if p.is_dir()) == ["step_2", "step_3"]
    monkeypatch.undo()
    script.main(_argv(assets, output, resume_from_checkpoint="latest"))
    expected, resumed = _adapter(uninterrupted[0]), _adapter(output)
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)


def test_resume_latest_skips_a_truncated_newest_checkpoint_and_still_matches(uninterrupted, assets, tmp_path, caplog):
    """A full disk truncated step_4's weights: `latest` says so, resumes from step_2, and the run still ends with
    the uninterrupted run's adapter."""
    output, _ = uninterrupted
    interrupted = tmp_path / "interrupted"
    assert script.main(_argv(assets, interrupted, max_train_steps=5)) == {}
    weights = interrupted / "step_4" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        script.main(_argv(assets, interrupted, resume_from_checkpoint="latest"))
    assert f"Skipping damaged checkpoint {interrupted / 'step_4'}: trainable.safetensors is unreadable" in caplog.text
    expected, resumed = _adapter(output), _adapter(interrupted)
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)


def test_resuming_with_another_config_is_refused_before_anything_changes(uninterrupted, assets):
    output, _ = uninterrupted
    before = _snapshot(output)
    with pytest.raises(ValueError, match=r"another configuration \(learning_rate: checkpoint 0.2, now 0.3"):
        script.main(_argv(assets, output, learning_rate=0.3, resume_from_checkpoint="latest"))
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        script.main(_argv(assets, output, resume_from_checkpoint=output / "adapter"))
    assert _snapshot(output) == before


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_column_name": "pixels"}, r"no image column 'pixels'; its columns are \['image', 'label'\]"),
        ({"label_column_name": "target"}, r"no label column 'target'"),
        ({"image_column_name": "label"}, r"Column 'label' holds ClassLabel.*not images"),
        ({"num_labels": 5}, r"--num_labels=5 but the data set has 3 classes"),
        ({"learning_rate": "nan"}, r"--learning_rate = NaN is not a finite number: use a number > 0"),
        ({"gate_learning_rate": "inf"}, r"--gate_learning_rate = Infinity is not a finite number"),
        ({"momentum": 1.0}, r"--momentum = 1.0 is out of range: use a number in \[0, 1\)"),
        ({"weight_decay": -0.1}, r"--weight_decay = -0.1 is out of range: use a number >= 0"),
        ({"num_train_epochs": 0}, r"--num_train_epochs = 0 is out of range: use an integer >= 1"),
        ({"warmup_epochs": 5}, r"--warmup_epochs = 5 is larger than --num_train_epochs = 3"),
        ({"gradient_accumulation_steps": 0}, r"--gradient_accumulation_steps = 0 is out of range"),
        ({"per_device_train_batch_size": 0}, r"--per_device_train_batch_size = 0 is out of range"),
        ({"max_train_steps": -2}, r"--max_train_steps = -2 is out of range"),
        ({"dataset_name": "user/data"}, r"Give one data source, not --dataset_name and --train_dir"),
        ({"resume_from_checkpoint": "latest"}, r"no checkpoint in"),
        ({"gate_init": -1}, r"--gate_init = -1.0 is out of range: use a number in \(0, 50\]"),
        ({"push_to_hub": True}, r"--push_to_hub needs --hub_model_id"),
    ],
)
def test_bad_input_is_refused_before_output_is_written(assets, tmp_path, overrides, message):
    output = tmp_path / "never-written"
    with pytest.raises(ValueError, match=message):
        script.main(_argv(assets, output, **overrides))
    assert not output.exists()


def test_grayscale_images_are_converted_silently_for_an_rgb_backbone(assets, tmp_path, caplog):
    from gated_vpt.training.classification import load_classification_data

    args = script.parse_args(_argv(assets, tmp_path / "out", image_size=16))
    with caplog.at_level(logging.WARNING):
        data = load_classification_data(args, num_channels=3)
    assert caplog.text == ""  # an expected conversion, not a problem
    assert next(iter(data.train_loader))["pixel_values"].shape == (4, 3, 16, 16)


def _recipe(path: Path, assets: Path, **args) -> Path:
    base = {"model_name_or_path": str(assets / "mae"), "train_dir": str(assets / "train"), "num_labels": 3, "transform": "vtab", "num_prompt_tokens": 4,
            "prompt_mode": "shallow", "learning_rate": 0.25, "per_device_train_batch_size": 8, "num_train_epochs": 7,
            "warmup_epochs": 2}
    path.write_text(json.dumps({"task_type": "image-classification", "args": {**base, **args}}))
    return path


def test_recipe_sets_defaults_and_flags_override_it(assets, tmp_path):
    recipe = _recipe(tmp_path / "recipe.json", assets, gate_init=15.0)
    args = script.parse_args(["--config", str(recipe), "--learning_rate", "0.5"])
    assert (args.num_prompt_tokens, args.gate_init, args.num_train_epochs, args.transform) == (4, 15.0, 7, "vtab")
    assert args.learning_rate == 0.5
    assert args.optimizer == "sgd" and args.momentum == 0.9 and args.weight_decay == 0.0


def test_bad_recipes_are_refused(assets, tmp_path):
    with pytest.raises(ValueError, match="optimiser"):
        script.parse_args(["--config", str(_recipe(tmp_path / "unknown.json", assets, optimiser="sgd"))])
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"task_type": "image-classification", "args": {"model_name_or_path": "x"}}))
    with pytest.raises(ValueError, match="num_labels"):
        script.parse_args(["--config", str(missing)])
    segmentation = tmp_path / "segmentation.json"
    segmentation.write_text(json.dumps({"task_type": "semantic-segmentation", "args": {}}))
    with pytest.raises(ValueError, match="semantic-segmentation"):
        script.parse_args(["--config", str(segmentation)])


def test_checkpoint_round_trip_restores_weights_buffers_optimizer_scheduler_and_rng(tmp_path):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
        model[0].requires_grad_(False)  # a frozen module: its buffers belong to the base model, not the checkpoint
        optimizer = build_optimizer(model, "adamw", learning_rate=0.1)
        return model, optimizer, build_scheduler(optimizer, 5, 1, 3, "step")

    model, optimizer, scheduler = make()
    for _ in range(4):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    state = TrainState(epoch=1, batches_in_epoch=1, completed_steps=4, history=[{"epoch": 0, "train_loss": 1.5}])
    save_checkpoint(tmp_path, model, optimizer, scheduler, state, {"seed": 0})
    expected_random = torch.rand(3)
    restored, restored_optimizer, restored_scheduler = make()
    assert load_checkpoint(tmp_path, restored, restored_optimizer, restored_scheduler) == state
    assert torch.equal(torch.rand(3), expected_random)
    assert set(load_file(str(tmp_path / "trainable.safetensors"))) == {
        "1.weight", "1.bias", "2.weight", "2.bias", "2.running_mean", "2.running_var", "2.num_batches_tracked",
        "3.weight", "3.bias",
    }
    for name, tensor in model.state_dict().items():
        if not name.startswith("0."):
            assert torch.equal(restored.state_dict()[name], tensor), name
    assert int(restored[2].num_batches_tracked) == 4 and int(restored[0].num_batches_tracked) == 0
    assert restored_scheduler.state_dict() == scheduler.state_dict()
    saved, loaded = optimizer.state_dict(), restored_optimizer.state_dict()
    assert len(saved["state"]) == 6 and loaded["state"].keys() == saved["state"].keys()  # AdamW state per trainable tensor
    for index, values in saved["state"].items():
        assert values.keys() == loaded["state"][index].keys() and all(torch.equal(values[k], loaded["state"][index][k]) for k in values)
    assert [(g["lr"], g["initial_lr"]) for g in loaded["param_groups"]] == [(g["lr"], g["initial_lr"]) for g in saved["param_groups"]]
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.bin"))
    without_norm = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    without_norm[0].requires_grad_(False)
    optimizer = build_optimizer(without_norm, "adamw", learning_rate=0.1)
    with pytest.raises(ValueError, match="another model or configuration"):
        load_checkpoint(tmp_path, without_norm, optimizer, build_scheduler(optimizer, 5, 1, 3, "step"))


def test_bundled_accuracy_metric_loads_offline():
    metric = load_metric("accuracy")
    metric.add_batch(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2])
    assert metric.compute() == {"accuracy": 0.75}
    with pytest.raises(ValueError, match="available: \\['accuracy'"):
        load_metric("f1")


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(assets, tmp_path):
    overrides = dict(prompt_dropout=0.0, checkpointing_steps=1000, gradient_accumulation_steps=1, num_train_epochs=2)
    single = tmp_path / "single"
    script.main(_argv(assets, single, per_device_train_batch_size=8, **{**overrides, "checkpointing_steps": "none"}))
    assert not list(single.glob("epoch_*")) and not list(single.glob("step_*"))
    double = tmp_path / "double"
    # `accelerate launch --cpu --num_processes 2` starts ONE process unless MPI is set up; torchrun-style CPU
    # processes come from --multi_gpu with ACCELERATE_USE_CPU=1 (gloo backend).
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache"),
           "ACCELERATE_USE_CPU": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT),
               *_argv(assets, double, per_device_train_batch_size=4, **overrides)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((double / "epoch_0" / "state.json").read_text())["run_config"]["num_processes"] == 2
    expected, actual = _adapter(single), _adapter(double)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")
    metrics = lambda path: json.loads((path / "metrics.json").read_text())  # noqa: E731
    assert metrics(double)["test_accuracy"] == metrics(single)["test_accuracy"]
    for one, two in zip(metrics(single)["history"], metrics(double)["history"]):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)


def test_compare_methods_report_has_mean_std_and_parameters(tmp_path):
    compare = load_example("compare_methods")
    results = [{"method": "gated", "seed": s, "test_accuracy": a, "trainable_parameters": 981, "seconds": 2.0}
               for s, a in enumerate((0.5, 0.6, 0.7))]
    results.append({"method": "linear probe", "seed": 0, "test_accuracy": 0.25, "trainable_parameters": 650, "seconds": 1.0})
    text = compare.write_report(results, tmp_path, "python examples/compare_methods.py --seeds 0 1 2")
    assert "| gated | 60.00 ± 10.00 | 981 | 2 |" in text and "| linear probe | 25.00 ± 0.00 | 650 | 1 |" in text
    assert (tmp_path / "comparison.png").is_file() and json.loads((tmp_path / "results.json").read_text()) == results
    assert set(compare.METHODS) == {"linear", "full", "vpt-shallow", "vpt-deep", "gated", "gated-temp"}


def test_learning_curve_plots_each_task_s_scores(tmp_path):
    from gated_vpt.training.plots import plot_learning_curve, score_keys

    classification = [{"epoch": e, "train_loss": 1.0 / (e + 1), "lr": 0.1, "validation_accuracy": 0.5 + e / 10} for e in range(3)]
    # Segmentation with --eval_every_epochs 2: the scores of epoch 0 are missing; two learning-rate groups.
    segmentation = [{"epoch": e, "train_loss": 2.0 - e, "lr/others": 0.01, "lr/gates": 0.1} for e in range(3)]
    for record in segmentation[1:]:
        record.update(validation_miou=0.3 * record["epoch"], validation_pixel_accuracy=0.4 * record["epoch"])
    assert score_keys(classification) == ["validation_accuracy"]
    assert score_keys(segmentation) == ["validation_miou", "validation_pixel_accuracy"]
    for name, history in (("classification", classification), ("segmentation", segmentation)):
        path = plot_learning_curve(history, tmp_path / f"{name}.png", title=name)
        assert Image.open(path).size == (600, 500)


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, kept open for inspection."""
    from gated_vpt.training import plots

    kept = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: kept.append(figure) or Path(path))
    yield kept
    import matplotlib.pyplot as plt

    for figure in kept:
        plt.close(figure)


def test_learning_curve_legend_sits_above_the_curves_and_epochs_are_whole(figures, tmp_path):
    from gated_vpt.training.plots import plot_learning_curve

    history = [{"epoch": e, "train_loss": 2.0 - e, "lr": 0.01, "validation_miou": 0.3 * e} for e in range(3)]
    plot_learning_curve(history, tmp_path / "curve.png")
    [figure] = figures
    figure.canvas.draw()
    top, bottom = figure.axes[0], figure.axes[1]
    [legend] = [axis.get_legend() for axis in figure.axes if axis.get_legend() and axis.bbox.height > bottom.bbox.height]
    assert legend.get_window_extent().y0 >= top.bbox.y1 - 1  # outside the plotting area
    assert [t.get_text() for t in legend.get_texts()] == ["train loss", "validation_miou"]
    ticks = [tick for tick in bottom.get_xticks() if 0 <= tick <= 2]
    assert ticks == [0, 1, 2]


def test_gate_plot_marks_the_initial_gate_and_the_blocks_without_one(figures, tmp_path):
    from gated_vpt.introspection import BlockReport, GateReport
    from gated_vpt.training.plots import plot_gates

    blocks = [BlockReport(i, g, None if g is None else -1.0, 1.0 + i / 10, g, g) for i, g in enumerate([0.01, 0.002, None])]
    plot_gates(GateReport(tuple(blocks), 0.5), tmp_path / "gates.png", gate_init=5.0)
    [figure] = figures
    gate_axis = figure.axes[0]
    [line] = gate_axis.get_lines()
    assert line.get_ydata()[0] == pytest.approx(torch.sigmoid(torch.tensor(-5.0)).item())
    assert [(t.get_text(), t.get_position()[0]) for t in gate_axis.texts] == [("no gate", 2)]


@pytest.mark.parametrize("warmup, total, power", [(0, 12, 0.9), (3, 12, 0.9), (0, 5, 1.0), (2, 6, 2.0)])
def test_poly_schedule_matches_setr_formula(warmup, total, power):
    from gated_vpt.training.optim import PolyDecay

    def reference(t: int) -> float:  # mmsegmentation's PolyLrUpdaterHook (min_lr 0) after a linear warmup from 0
        return t / warmup if t < warmup else (1 - (t - warmup) / max(1, total - warmup)) ** power

    factor = PolyDecay(total, power, warmup)
    assert [factor(t) for t in range(total + 1)] == pytest.approx([reference(t) for t in range(total + 1)])
    assert factor(total) == 0.0


def test_poly_scheduler_steps_per_update_over_all_epochs():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = build_scheduler(optimizer, 3, 0, 4, "step", decay="poly", power=0.9)  # 12 updates
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.01 * (1 - t / 12) ** 0.9 for t in range(12)])
    with pytest.raises(ValueError, match="Unknown learning-rate decay 'step'"):
        build_scheduler(optimizer, 3, 0, 4, "step", decay="step")


def test_tracker_config_is_scalars():
    import argparse

    from gated_vpt.training.args import tracker_config

    args = argparse.Namespace(learning_rate=0.1, aux_blocks=[5, 9], gated=None, seed=3)
    assert tracker_config(args) == {"learning_rate": 0.1, "aux_blocks": "[5, 9]", "gated": "None", "seed": 3}


# --- the last partial batch, the epoch loss, non-finite losses --------------------------------------------------


def test_the_last_partial_batch_is_kept(assets, tmp_path):
    """48 training images in batches of 5: ceil(48 / 5) = 10 batches (the last one of 3), every image once per
    epoch, and ceil(10 / 2) = 5 optimizer updates per epoch with accumulation 2."""
    from gated_vpt.training.classification import load_classification_data
    from gated_vpt.training.loop import updates_per_epoch

    args = script.parse_args(_argv(assets, tmp_path / "out", per_device_train_batch_size=5, image_size=16))
    loader = load_classification_data(args, num_channels=3).train_loader
    sizes = [len(batch["labels"]) for batch in loader]
    assert sizes == [5] * 9 + [3] and len(loader) == 10
    assert updates_per_epoch(len(loader), args.gradient_accumulation_steps) == 5


class _ScaledMean(torch.nn.Module):
    """loss = w * mean(pixel_values): the epoch loss is known in closed form."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, pixel_values, labels):
        from types import SimpleNamespace

        return SimpleNamespace(loss=self.w * pixel_values.mean())


class _Values(torch.utils.data.Dataset):
    """Sample i is the value values[i]; from epoch ``bad_epoch`` on, sample ``bad_index`` is NaN."""

    def __init__(self, values, bad_epoch=None, bad_index=None):
        self.values, self.bad_epoch, self.bad_index, self.epoch = values, bad_epoch, bad_index, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.values)

    def __getitem__(self, i):
        bad = self.bad_epoch is not None and self.epoch >= self.bad_epoch and i == self.bad_index
        return {"pixel_values": torch.tensor([float("nan") if bad else self.values[i]]), "labels": torch.tensor(0)}


def _loop_run(tmp_path, data, learning_rate, epochs=2):
    from accelerate import Accelerator

    from gated_vpt.training.loop import LoopSettings, train

    accelerator = Accelerator(cpu=True)
    model = _ScaledMean()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = build_scheduler(optimizer, epochs, 0, len(loader))
    settings = LoopSettings(num_train_epochs=epochs, output_dir=tmp_path, run_config={})
    return model, train(accelerator, model, optimizer, scheduler, loader, [data], settings, TrainState())


def test_the_epoch_loss_is_a_mean_over_samples(tmp_path):
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0]  # batches of 3, 3 and 1: the mean of batch means would be 37.5
    _, state = _loop_run(tmp_path, _Values(values), learning_rate=0.0)
    assert [record["train_loss"] for record in state.history] == pytest.approx([sum(values) / 7] * 2)
    assert state.completed_steps == 6


def test_a_non_finite_loss_stops_the_run_before_the_update_and_keeps_the_last_checkpoint(tmp_path):
    from gated_vpt.training.run import RunStopped

    data = _Values([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], bad_epoch=1, bad_index=4)
    with pytest.raises(RunStopped) as stop:
        _loop_run(tmp_path, data, learning_rate=0.01, epochs=3)
    message = str(stop.value)
    assert "loss is nan at epoch 1, batch 2 of 3 (optimizer update 5)" in message
    assert f"The last checkpoint, {tmp_path / 'epoch_0'}, is kept" in message and "Lower --learning_rate" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0", "stopped.json"]  # stopped.json: for the protocol
    assert json.loads((tmp_path / "stopped.json").read_text())["reason"] == message
    assert torch.isfinite(load_file(str(tmp_path / "epoch_0" / "trainable.safetensors"))["w"]).all()


def test_dry_run_of_the_default_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    output = tmp_path / "never-written"
    assert script.main(["--dry_run", "--output_dir", str(output)]) == {}
    printed = capsys.readouterr().out
    assert "data: the embedded digits" in printed
    assert "updates per epoch: 13 (ceil(800 / 64) batches" in printed  # the last batch of 32 is kept
    assert "  all: 0:0 1:0.05 2:0.1 " in printed and " 10:0.5 " in printed and " 39:0.00137" in printed
    assert "trainable parameters: 1,941 of 1,220,127" in printed
    assert not output.exists()


def test_dry_run_of_a_recipe_names_the_backbone_to_prepare(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert script.main(["--config", str(REPO / "hub_configs" / "mocov3-fgvc-cub.json"), "--dry_run"]) == {}
    printed = capsys.readouterr().out
    assert "backbone: backbones/mocov3-vit-b16-linear NOT PREPARED: made from MoCo v3 ViT-B/16" in printed
    assert "gated-vpt convert --model_type mocov3 --trust_checkpoint --drop_head linear-vit-b-300ep.pth.tar" in printed
    assert "trainable parameters: unknown until the backbone folder is prepared" in printed
    assert "  all: 0:0 1:0.1 " in printed  # lr 1.0, 10 warmup epochs


@pytest.mark.parametrize("stage, train_images, updates", [("tune", 24, 3), ("final", 36, 5)])
def test_dry_run_reads_a_benchmark_folder_for_its_stage(tmp_path, capsys, stage, train_images, updates):
    from conftest import write_vtab1k_task

    write_vtab1k_task(tmp_path / "task", (0, 1, 6), (24, 12, 20))
    argv = ["--dry_run", "--data_dir", str(tmp_path / "task"), "--recipe_stage", stage,
            "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "out")]
    assert script.main(argv) == {}
    printed = capsys.readouterr().out
    assert f"(vtab1k layout): train = {'train800' if stage == 'tune' else 'train800val200'} ({train_images} images)" in printed
    assert f"updates per epoch: {updates} (ceil({train_images} / 8) batches" in printed
    assert "trainable parameters: 1,038 of" in printed  # 3 classes: 5 x 128 prompts, 11 scalars, 3 x 128 + 3 head


_HOLD_FOLDER = """
import sys, types
from gated_vpt.training.run import claim_output_dir
claim_output_dir(types.SimpleNamespace(is_main_process=True), sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no operating-system lock on Windows")
def test_a_second_run_on_an_output_folder_in_use_is_refused_and_a_dead_runs_folder_is_taken_over(assets, tmp_path, monkeypatch):
    import subprocess

    from gated_vpt.training import run

    monkeypatch.setattr(run, "_CLAIMED", {})  # this process holds nothing yet
    output = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_FOLDER, str(output)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ValueError, match=rf"--output_dir {output} is in use by another run \(process {holder.pid}\)"):
            script.main(_argv(assets, output, num_train_epochs=1, warmup_epochs=0))
        assert sorted(p.name for p in output.iterdir()) == [".run.lock"]  # nothing of the second run was written
    finally:
        holder.kill()
        holder.wait()
    metrics = script.main(_argv(assets, output, num_train_epochs=1, warmup_epochs=0))  # the dead run's folder is free
    assert "test_accuracy" in metrics and (output / "adapter" / "adapter_model.safetensors").is_file()
    for handle in run._CLAIMED.values():
        handle.close()


def test_an_output_folder_that_is_a_link_to_nothing_is_refused_at_the_start(assets, tmp_path):
    output = tmp_path / "link"
    output.symlink_to(tmp_path / "missing")
    with pytest.raises(ValueError, match=rf"--output_dir {output}: {output} is a symbolic link to {tmp_path / 'missing'}, which does not exist"):
        script.main(_argv(assets, output))
    assert not (tmp_path / "missing").exists()


def test_compare_methods_records_each_run_and_resumes(tmp_path, monkeypatch):
    compare = load_example("compare_methods")
    argv = ["--methods", "linear", "--seeds", "0", "--num_train_epochs", "1", "--warmup_epochs", "0",
            "--output_dir", str(tmp_path)]
    first = compare.main(argv)
    [line] = (tmp_path / "runs.jsonl").read_text().splitlines()
    recorded = json.loads(line)["result"]
    assert json.loads((tmp_path / "results.json").read_text()) == [recorded] and recorded["method"] == "linear probe"

    def must_not_train(*args):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare, "run_one", must_not_train)
    with open(tmp_path / "runs.jsonl", "a") as file:
        file.write('{"settings": {"cut short')  # a run interrupted while its line was written
    assert compare.main(argv) == first
    assert json.loads((tmp_path / "results.json").read_text()) == [recorded]
    with pytest.raises(SystemExit, match=r"other settings \(learning_rate\)"):
        compare.main([*argv, "--learning_rate", "0.1"])
