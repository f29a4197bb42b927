"""Data for training: the embedded digits, column and label checks, the paper's transforms, and epoch-seeded
order and augmentation."""

import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from gated_vpt.training.data import (
    EpochShuffleSampler,
    ImageTransform,
    TransformedImages,
    check_images,
    embedded_digits,
    find_column,
    image_normalisation,
    label_names,
)


def test_embedded_digits_split_is_fixed_disjoint_and_stratified():
    digits = embedded_digits()
    assert {k: len(v) for k, v in digits.items()} == {"train": 800, "validation": 200, "test": 797}
    fingerprint = lambda split: {np.asarray(img).tobytes() + bytes([lab]) for img, lab in zip(split["image"], split["label"])}  # noqa: E731
    train, validation = fingerprint(digits["train"]), fingerprint(digits["validation"])
    assert not train & validation
    overall = np.bincount(np.concatenate([list(split["label"]) for split in digits.values()]), minlength=10)
    counts = np.bincount(digits["train"]["label"], minlength=10)
    assert np.abs(counts - 800 * overall / overall.sum()).max() <= 1  # every class in its overall proportion
    assert digits["train"][0]["image"].size == (8, 8) and digits["train"][0]["image"].mode == "L"
    assert embedded_digits()["test"]["label"] == digits["test"]["label"]


def _images(n=6, mode="RGB"):
    rng = np.random.default_rng(0)
    shape = (10, 12, 3) if mode == "RGB" else (10, 12)
    images = [PILImage.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode) for _ in range(n)]
    features = Features({"img": Image(), "labels": ClassLabel(names=["a", "b", "c"]), "note": Value("string")})
    return Dataset.from_dict({"img": images, "labels": [i % 3 for i in range(n)], "note": ["x"] * n}, features=features)


def test_columns_are_found_or_refused_by_name():
    data = _images()
    assert find_column(data, None, ("image", "img"), "image", "--image_column_name") == "img"
    with pytest.raises(ValueError, match=r"no image column 'pixels'; its columns are \['img', 'labels', 'note'\]"):
        find_column(data, "pixels", ("image", "img"), "image", "--image_column_name")
    with pytest.raises(ValueError, match=r"Could not find the label column .*Set --label_column_name"):
        find_column(data, None, ("label",), "label", "--label_column_name")
    with pytest.raises(ValueError, match="holds Value.*not images"):
        check_images(data, "note", 3)
    assert check_images(_images(mode="L"), "img", 3) == "L"


def test_label_names_and_count_checks():
    data = DatasetDict(train=_images(), test=_images(3))
    assert label_names(data, "labels", None) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="--num_labels=5 but the data set has 3 classes"):
        label_names(data, "labels", 5)
    plain = DatasetDict(train=Dataset.from_dict({"label": [0, 2, 1]}), test=Dataset.from_dict({"label": [3]}))
    assert label_names(plain, "label", 4) == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="class indices or a ClassLabel"):
        label_names(DatasetDict(train=Dataset.from_dict({"label": ["cat", "dog"]})), "label", None)
    renamed = DatasetDict(train=_images(), test=_images().cast_column("labels", ClassLabel(names=["x", "y", "z"])))
    with pytest.raises(ValueError, match="test split's labels differ"):
        label_names(renamed, "labels", None)


def test_vtab_transform_resizes_and_normalises_exactly():
    image = PILImage.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.1)
    out = ImageTransform("vtab", 16, mean, std, num_channels=3)(image)
    expected = np.asarray(image.convert("RGB").resize((16, 16), PILImage.BILINEAR), dtype=np.float32) / 255.0
    expected = (torch.from_numpy(expected).permute(2, 0, 1) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(out, expected)
    gray = ImageTransform("vtab", 16, mean, std, num_channels=1)(PILImage.new("RGB", (8, 8), (255, 0, 0)))
    assert gray.shape == (1, 16, 16)  # RGB converted to L for a 1-channel backbone
    torch.testing.assert_close(gray, torch.full((1, 16, 16), (76 / 255 - 0.5) / 0.2))


def test_fgvc_transform_crops_flips_and_centres():
    array = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    image = PILImage.fromarray(array)
    train = ImageTransform("fgvc", 14, (0.0,) * 3, (1.0,) * 3, train=True)
    resized = np.asarray(image.resize((16, 16), PILImage.BILINEAR), dtype=np.float32) / 255.0  # round(14 * 256/224)
    crops = {tuple(train(image, torch.Generator().manual_seed(s)).flatten()[:5].tolist()) for s in range(20)}
    assert len(crops) > 5  # crops and flips vary with the generator
    windows = [resized[y:y + 14, x:x + 14] for y in range(3) for x in range(3)]
    candidates = [torch.from_numpy(np.ascontiguousarray(w[:, ::f])).permute(2, 0, 1) for w in windows for f in (1, -1)]
    sample = train(image, torch.Generator().manual_seed(3))
    assert any(torch.allclose(sample, c) for c in candidates)
    torch.testing.assert_close(train(image, torch.Generator().manual_seed(3)), sample)
    centre = ImageTransform("fgvc", 14, (0.0,) * 3, (1.0,) * 3)(image)
    torch.testing.assert_close(centre, torch.from_numpy(resized[1:15, 1:15]).permute(2, 0, 1))


def test_fgvc_transform_resizes_the_shorter_side_of_a_non_square_image():
    """VPT's FGVC resize: shorter side to 256 (224 * 256/224), aspect ratio kept, then a 224 crop. A 300x600
    (height x width) image becomes 256x512: the center crop takes rows 16..240 and columns 144..368."""
    rng = np.random.default_rng(1)
    image = PILImage.fromarray(rng.integers(0, 256, (300, 600, 3), dtype=np.uint8))
    resized = np.asarray(image.resize((512, 256), PILImage.BILINEAR), dtype=np.float32) / 255.0
    centre = ImageTransform("fgvc", 224, (0.0,) * 3, (1.0,) * 3)(image)
    torch.testing.assert_close(centre, torch.from_numpy(resized[16:240, 144:368].copy()).permute(2, 0, 1))
    train = ImageTransform("fgvc", 224, (0.0,) * 3, (1.0,) * 3, train=True)
    rows = np.lib.stride_tricks.sliding_window_view(resized[:33, :, 0], 224, axis=1)  # (y, x, 224): row y, cols x..
    offsets = set()
    for seed in range(12):
        sample = train(image, torch.Generator().manual_seed(seed)).numpy()
        flip = 1 if np.isclose(rows, sample[0, 0]).all(-1).any() else -1
        ys, xs = np.nonzero(np.isclose(rows, sample[0, 0, ::flip]).all(-1))
        assert len(ys) == 1
        y, x = int(ys[0]), int(xs[0])
        np.testing.assert_allclose(sample, resized[y:y + 224, x:x + 224][:, ::flip].transpose(2, 0, 1), atol=1e-6)
        offsets.add((y, x))
    assert max(x for _, x in offsets) > 32  # the crop moves along the longer side, beyond a square resize's range
    tall = ImageTransform("fgvc", 224, (0.0,) * 3, (1.0,) * 3)(image.transpose(PILImage.TRANSPOSE))
    assert tall.shape == (3, 224, 224)


def test_sampler_and_augmentation_depend_only_on_seed_epoch_and_index():
    sampler = EpochShuffleSampler(50, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(50))
    assert list(EpochShuffleSampler(50, seed=2)) != first
    data = TransformedImages(_images(), "img", "labels", ImageTransform("fgvc", 8, (0.0,) * 3, (1.0,) * 3, train=True), seed=1)
    a = data[4]["pixel_values"]
    data[0], data[2]  # other samples drawn in between change nothing
    assert torch.equal(data[4]["pixel_values"], a) and data[4]["labels"].item() == 1
    data.set_epoch(1)
    assert not torch.equal(data[4]["pixel_values"], a)


def test_normalisation_comes_from_the_backbone_or_falls_back_to_imagenet(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 3]}))
    assert image_normalisation(str(tmp_path)) == ((0.1, 0.2, 0.3), (1, 2, 3))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert image_normalisation(str(empty)) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # The paper's recipes: ImageNet's fixed values whatever the checkpoint says.
    assert image_normalisation(str(tmp_path), "imagenet") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_best_validation_scores_pick_the_earliest_best_epoch_and_its_test_top1():
    from gated_vpt.training.classification import best_validation_scores

    history = [{"epoch": 0, "validation_accuracy": 0.5, "test_accuracy": 0.4},
               {"epoch": 1, "validation_accuracy": 0.75, "test_accuracy": 0.6},
               {"epoch": 2, "validation_accuracy": 0.75, "test_accuracy": 0.7},
               {"epoch": 3, "validation_accuracy": 0.7, "test_accuracy": 0.8}]
    assert best_validation_scores(history, has_test=True) == {
        "best_validation_epoch": 1, "best_validation_accuracy": 0.75, "test_accuracy_at_best_validation": 0.6}
    untested = [{k: v for k, v in record.items() if k != "test_accuracy"} for record in history]
    assert best_validation_scores(untested, has_test=True)["test_accuracy_at_best_validation"] is None
    assert "not evaluated every epoch" in best_validation_scores(untested, has_test=True)["best_validation_note"]
    assert best_validation_scores(untested, has_test=False) == {"best_validation_epoch": 1, "best_validation_accuracy": 0.75}
    no_validation = best_validation_scores([{"epoch": 0, "train_loss": 1.0}], has_test=True)
    assert no_validation["test_accuracy_at_best_validation"] is None and "no validation split" in no_validation["best_validation_note"]
