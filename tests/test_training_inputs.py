"""Training inputs are checked before the first step: every image decodes (bad files named, or skipped with a count
on request), at least two classes, no evaluation class that training lacks, and a writable output directory."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import load_example
from PIL import Image

from gated_vpt.training.classification import load_classification_data

script = load_example("train_image_classification")


@pytest.fixture(autouse=True)
def _offline_caches(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _folder(root: Path, classes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8), mode="L").save(root / name / f"{i}.png")
    return root


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _args(tmp_path: Path, **flags):
    argv = [f"--{key}={value}" if value is not True else f"--{key}" for key, value in flags.items()]
    return script.parse_args([*argv, "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "2", "--image_size", "16"])


def test_unreadable_images_are_named_before_training(tmp_path):
    train = _folder(tmp_path / "train", {"a": 3, "b": 3})
    (train / "a" / "garbage.png").write_bytes(b"not an image at all")
    (train / "b" / "truncated.png").write_bytes(_png_bytes()[:200])
    with pytest.raises(ValueError, match=r"2 image\(s\) of the train split cannot be decoded: .*garbage\.png.*truncated\.png.*--skip_bad_images"):
        load_classification_data(_args(tmp_path, train_dir=train), num_channels=3)


def test_skip_bad_images_drops_them_with_a_count(tmp_path, caplog):
    train = _folder(tmp_path / "train", {"a": 3, "b": 3})
    (train / "a" / "garbage.png").write_bytes(b"not an image at all")
    with caplog.at_level(logging.WARNING):
        data = load_classification_data(_args(tmp_path, train_dir=train, skip_bad_images=True), num_channels=3)
    assert "Skipping 1 unreadable image(s) of the train split" in caplog.text and "garbage.png" in caplog.text
    assert len(data.train_images) == 6
    assert sum(len(batch["labels"]) for batch in data.train_loader) == 6


def test_a_single_class_folder_says_so(tmp_path):
    train = _folder(tmp_path / "train", {"only": 4})
    with pytest.raises(ValueError, match=r"has 1 class folder\(s\) \['only'\]; image classification needs at least 2"):
        load_classification_data(_args(tmp_path, train_dir=train), num_channels=3)


def test_validation_classes_must_be_training_classes_unless_the_class_count_is_given(tmp_path, caplog):
    train = _folder(tmp_path / "train", {"a": 3, "b": 3})
    validation = _folder(tmp_path / "validation", {"a": 2, "b": 2, "c": 2})
    with pytest.raises(ValueError, match=r"The validation split has classes the train split lacks: \['c'\].*--num_labels"):
        load_classification_data(_args(tmp_path, train_dir=train, validation_dir=validation), num_channels=3)
    with caplog.at_level(logging.WARNING):
        data = load_classification_data(_args(tmp_path, train_dir=train, validation_dir=validation, num_labels=3), num_channels=3)
    assert data.labels == ["a", "b", "c"]
    warnings = [r.getMessage() for r in caplog.records if "Classes absent from a split" in r.getMessage()]
    assert len(warnings) == 1 and "train lacks 1 of 3, validation lacks 0 of 3" in warnings[0]


def test_a_train_split_with_one_class_in_a_labelled_data_set_is_refused(tmp_path, monkeypatch):
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    images = [Image.new("L", (8, 8), i * 40) for i in range(4)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    one_class = DatasetDict({"train": Dataset.from_dict({"image": images, "label": [0] * 4}, features=features)})
    monkeypatch.setattr("gated_vpt.training.classification.load_image_datasets", lambda *a, **k: one_class)
    with pytest.raises(ValueError, match=r"The train split holds 1 class\(es\) \['a'\]; a classifier needs at least 2"):
        load_classification_data(_args(tmp_path), num_channels=3)


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_an_output_directory_that_cannot_be_written_is_refused_at_the_start(tmp_path, where):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    output = blocker if where == "a file" else blocker / "run"
    with pytest.raises(ValueError, match=f"--output_dir {output}: {blocker} is a file, not a folder"):
        script.main(["--output_dir", str(output), "--num_train_epochs", "1", "--warmup_epochs", "0"])
    assert blocker.read_text() == "a file"


@pytest.mark.parametrize("script", ["train_image_classification", "train_semantic_segmentation"])
@pytest.mark.parametrize("flag", [["--learning_rate", "nan"], ["--learning_rate", "-1"]])
def test_a_bad_flag_value_ends_a_training_script_with_one_line_and_no_traceback(script, flag, capsys):
    from gated_vpt.training.run import exit_on_stop

    with pytest.raises(SystemExit) as exit_info:
        exit_on_stop(lambda: load_example(script).main(["--model_name_or_path", "none", *flag]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith(f"error: Invalid arguments: {flag[0]}") and err.count("\n") == 1, err


def _image(mode: str, value) -> Image.Image:
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        return Image.fromarray(np.full((3, 3), value, dtype=dtype))
    return Image.new(mode, (3, 3), value)


# mode, a fill value, and the gray level (or RGB) it means: Pillow's own convert clips the first four
@pytest.mark.parametrize(
    ("mode", "value", "meaning"),
    [("I;16", 65535, (255, 255, 255)), ("I;16", 32896, (128, 128, 128)), ("I", 40000, (156, 156, 156)),
     ("F", 0.5, (128, 128, 128)), ("I", 200, (200, 200, 200)), ("F", 200.0, (200, 200, 200)), ("1", 1, (255, 255, 255)),
     ("L", 77, (77, 77, 77)), ("LA", (77, 0), (77, 77, 77)), ("P", 3, None), ("RGBA", (1, 2, 3, 4), (1, 2, 3)),
     ("CMYK", (0, 255, 255, 0), (255, 0, 0)), ("YCbCr", (255, 128, 128), (255, 255, 255)), ("HSV", (0, 255, 255), (255, 0, 0)),
     ("LAB", (255, 128, 128), (254, 255, 254)), ("RGBX", (9, 8, 7, 0), (9, 8, 7))],
)
def test_every_image_mode_converts_to_the_models_input_without_silent_damage(mode, value, meaning):
    from gated_vpt.training.data import convert_image

    image = _image(mode, value)
    rgb, gray = convert_image(image, "RGB"), convert_image(image, "L")
    assert rgb.mode == "RGB" and gray.mode == "L" and rgb.size == gray.size == (3, 3)
    if meaning is not None:
        assert rgb.getpixel((1, 1)) == meaning


@pytest.mark.parametrize(("mode", "value"), [("I", 70000), ("I", -5), ("F", 300.0), ("F", -0.5)])
def test_image_values_without_an_8_bit_meaning_are_refused(mode, value):
    from gated_vpt.training.data import convert_image

    with pytest.raises(ValueError, match=rf"An image of mode {mode} holds (values from|negative values)"):
        convert_image(_image(mode, value), "RGB")


def test_an_image_size_the_backbone_refuses_stops_the_run_before_training_and_in_the_dry_run(tmp_path, capsys):
    from transformers import ViTConfig, ViTForImageClassification

    ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "vit16")
    train = _folder(tmp_path / "train", {"a": 3, "b": 3})
    argv = ["--model_name_or_path", str(tmp_path / "vit16"), "--train_dir", str(train), "--image_size", "32",
            "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "1", "--warmup_epochs", "0"]
    assert script.main([*argv, "--dry_run"]) == {}
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"WILL FAIL at the first step: --image_size 32: {tmp_path / 'vit16'} cannot take 32x32 images (Input image "
        "size (32*32) doesn't match model (16*16).); leave --image_size unset (the backbone's 16) or use a backbone "
        "made for 32."
    )
    with pytest.raises(SystemExit) as stop:
        script.exit_on_stop(lambda: script.main(argv))
    written = sorted(p.name for p in (tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert stop.value.code == 1 and written in ([], [".run.lock"])  # nothing of the run was written
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: --image_size 32:")
    argv[argv.index("--image_size") + 1] = "16"  # the backbone's own size passes
    assert script.main([*argv, "--dry_run"]) == {} and "WILL FAIL" not in capsys.readouterr().out
