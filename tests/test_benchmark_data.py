"""The paper's data layouts (VTAB-1k split lists, VPT's FGVC json files): the splits each protocol stage uses, the
tolerated variants, the errors on missing or malformed data, and ``gated-vpt data check``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gated_vpt.cli import main as cli_main
from gated_vpt.training.benchmark_data import (
    DataLayoutError,
    check_data_folder,
    detect_layout,
    load_layout_datasets,
)
from gated_vpt.training.data import load_image_datasets

from conftest import write_vtab1k_task

CLASSES = (3, 5, 8)


@pytest.fixture
def vtab(tmp_path):
    folder = tmp_path / "vtab-1k" / "digits"
    return folder, write_vtab1k_task(folder, CLASSES, sizes=(12, 6, 9))


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("L"))


def _as_written(folder: Path, entries) -> list[tuple[bytes, int]]:
    return [(np.asarray(Image.open(folder / path)).tobytes(), label) for path, label in entries]


def _as_loaded(split) -> list[tuple[bytes, int]]:
    return [(_pixels(row["image"]).tobytes(), row["label"]) for row in split]


def test_vtab1k_stages_use_the_protocol_splits(vtab):
    folder, lists = vtab
    tune = load_layout_datasets(folder, "vtab1k", stage="tune")
    final = load_layout_datasets(folder, stage="final")  # layout detected
    assert detect_layout(folder) == "vtab1k"
    assert set(tune) == {"train", "validation"} and set(final) == {"train", "test"}
    assert _as_loaded(tune["train"]) == _as_written(folder, lists["train800"])
    assert _as_loaded(tune["validation"]) == _as_written(folder, lists["val200"])
    assert _as_loaded(final["train"]) == _as_written(folder, lists["train800"] + lists["val200"])
    assert _as_loaded(final["test"]) == _as_written(folder, lists["test"])
    assert final["train"].features["label"].names == ["0", "1", "2"]
    # the training scripts' entry point reaches the same data through --data_dir
    via_scripts = load_image_datasets(data_dir=str(folder), data_layout="vtab1k", stage="tune")
    assert _as_loaded(via_scripts["validation"]) == _as_loaded(tune["validation"])


def test_vtab1k_line_variants_are_read(tmp_path):
    folder = tmp_path / "task"
    (folder / "images").mkdir(parents=True)
    for name in ("a b.png", "c.png", "d.png"):
        Image.fromarray(np.full((4, 4), 7, np.uint8)).save(folder / "images" / name)
    # Windows line ends, tabs, a blank line, a path with a space (the label is the last field)
    (folder / "train800.txt").write_text("images/a b.png\t1\r\n\r\nimages/c.png  0\r\n")
    (folder / "val200.txt").write_text("images/d.png 1")
    (folder / "train800val200.txt").write_text("images/a b.png 1\nimages/c.png 0\nimages/d.png 1\n")
    (folder / "test.txt").write_text(f"{folder / 'images' / 'd.png'} 1\n")  # absolute paths work too
    splits = load_layout_datasets(folder, "vtab1k", stage="tune")
    assert splits["train"]["label"] == [1, 0] and len(splits["validation"]) == 1
    # paths relative to the parent folder (some copies list "<task>/images/...") are found as well
    (folder / "train800.txt").write_text("task/images/c.png 0\ntask/images/d.png 1\n")
    assert load_layout_datasets(folder, "vtab1k", stage="tune")["train"]["label"] == [0, 1]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: (f / "val200.txt").write_text("images/x.png\n"), r"val200.txt:1: expected '<relative/image/path> <class index>'"),
        (lambda f: (f / "val200.txt").write_text("images/x.png cat\n"), r"val200.txt:1: expected"),
        (lambda f: (f / "val200.txt").write_text("\n"), r"val200.txt lists no images"),
        (lambda f: (f / "test.txt").unlink(), r"missing split file .*test.txt"),
        (lambda f: (f / "val200.txt").write_text("images/gone.png 1\n"), r"val200.txt: image images/gone.png not found"),
    ],
)
def test_malformed_vtab1k_folders_are_refused_naming_file_line_and_layout(vtab, change, message):
    folder, _ = vtab
    change(folder)
    with pytest.raises(DataLayoutError, match=message) as error:
        load_layout_datasets(folder, "vtab1k", stage="final")
    assert str(folder) in str(error.value) and "train800.txt, val200.txt, train800val200.txt and test.txt" in str(error.value)


def test_missing_or_unknown_folders_name_the_folder_and_both_layouts(tmp_path):
    for folder in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(DataLayoutError) as error:
            load_layout_datasets(folder)
        text = str(error.value)
        assert str(folder) in text and "train800val200.txt" in text and "train.json" in text and "docs/RECIPES.md" in text
    with pytest.raises(DataLayoutError, match="No data folder .*nowhere"):
        load_layout_datasets(tmp_path / "nowhere", "vtab1k")
    # an image folder that does not exist is named too (not datasets' 'Instruction "train" corresponds to no data!')
    with pytest.raises(ValueError, match=r"No images in the train folder .*missing \(--train_dir\)"):
        load_image_datasets(train_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="Give one data source, not --dataset_name and --data_dir"):
        load_image_datasets("user/data", data_dir=str(tmp_path))


def _fgvc_folder(root: Path) -> tuple[Path, dict]:
    """VPT's layout with images under images/<class>/ and 1-based class ids, as in VPT's CUB json files."""
    folder = root / "cub"
    rng = np.random.default_rng(0)
    splits = {"train": [], "val": [], "test": []}
    for class_id in (1, 2, 7):
        (folder / "images" / f"{class_id:03d}.bird").mkdir(parents=True)
        for i, split in enumerate(["train"] * 3 + ["val", "test", "test"]):
            relative = f"{class_id:03d}.bird/{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (6, 9, 3), dtype=np.uint8)).save(folder / "images" / relative)
            splits[split].append((relative, class_id))
    for split, entries in splits.items():
        (folder / f"{split}.json").write_text(json.dumps(dict(entries)))
    return folder, splits


def test_fgvc_json_layout_maps_sorted_class_ids_and_keeps_vpt_splits(tmp_path):
    folder, splits = _fgvc_folder(tmp_path)
    assert detect_layout(folder) == "fgvc"
    tune = load_layout_datasets(folder, stage="tune")
    final = load_layout_datasets(folder, "fgvc", stage="final")
    assert set(tune) == {"train", "validation"} and set(final) == {"train", "validation", "test"}
    assert final["train"].features["label"].names == ["1", "2", "7"]
    index = {1: 0, 2: 1, 7: 2}
    for role, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        expected = [(np.asarray(Image.open(folder / "images" / p)).tobytes(), index[c]) for p, c in splits[name]]
        got = [(np.asarray(row["image"]).tobytes(), row["label"]) for row in final[role]]
        assert got == expected, role
    # VPT's code trains on train in both stages for FGVC (train + val only for VTAB)
    assert tune["train"]["label"] == final["train"]["label"]


def test_fgvc_malformed_json_is_refused(tmp_path):
    folder, _ = _fgvc_folder(tmp_path)
    (folder / "val.json").write_text("[1, 2]")
    with pytest.raises(DataLayoutError, match=r"val.json: expected a JSON object"):
        load_layout_datasets(folder)
    (folder / "val.json").write_text('{"001.bird/0.jpg": 1,')
    with pytest.raises(DataLayoutError, match=r"val.json: not valid JSON"):
        load_layout_datasets(folder)


def test_data_check_names_every_problem(vtab, capsys):
    folder, lists = vtab
    report = check_data_folder(folder, num_labels=3)
    assert report.problems == []
    assert report.counts == {name: (len(lists[name]), len({c for _, c in lists[name]})) for name in report.counts}
    assert [n for n, _ in report.counts.values()] == [12, 6, 18, 9]
    assert report.decoded == 27 and report.undecodable == 0
    assert "images decoded: 27 of 27" in report.format()
    # A small folder passes, with each training split's size set against VTAB-1k's (800 / 200 / 1000).
    assert [n for n in report.notes if "where VTAB-1k's has" in n] == [
        "train800 lists 12 images where VTAB-1k's has 800: a subset or another split (the paper's numbers are for "
        "the full splits)",
        "val200 lists 6 images where VTAB-1k's has 200: a subset or another split (the paper's numbers are for the "
        "full splits)",
        "train800val200 lists 18 images where VTAB-1k's has 1000: a subset or another split (the paper's numbers are "
        "for the full splits)",
    ]
    assert cli_main(["data", "check", str(folder)]) == 0
    assert "train800val200" in capsys.readouterr().out

    corrupt = folder / lists["test"][0][0]
    corrupt.write_bytes(corrupt.read_bytes()[:20])  # a truncated PNG
    missing = folder / lists["val200"][1][0]
    missing.unlink()
    with open(folder / "test.txt", "a") as handle:
        handle.write("images/train800_x.png\n")
    report = check_data_folder(folder, num_labels=5)
    text = "\n".join(report.problems)
    assert f"{corrupt}: cannot decode the image" in text
    assert f"image {lists['val200'][1][0]} not found" in text
    assert "test.txt:10: expected" in text
    assert "the splits hold 3 classes but num_labels is 5" in text
    assert len(report.problems) == 5  # the lost image is listed in val200.txt and train800val200.txt
    assert report.undecodable == 1 and "images decoded: 25 of 26" in report.format()  # the lost one is not opened


def test_data_check_cli_reads_the_recipe_and_exits_1_with_one_line_per_problem(vtab, tmp_path, capsys):
    folder, lists = vtab
    (folder / "val200.txt").write_text("".join(f"{p} {c}\n" for p, c in lists["val200"][:-1]))  # one line lost
    recipe = json.loads((Path(__file__).resolve().parent.parent / "hub_configs" / "mae-vtab-dtd.json").read_text())
    recipe["args"]["data_dir"] = str(folder)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    assert cli_main(["data", "check", "--recipe", str(path), "--no_decode"]) == 1
    captured = capsys.readouterr()
    problems = [line for line in captured.err.splitlines() if line.startswith("problem: ")]
    assert problems == [
        "problem: train800val200.txt is not train800.txt + val200.txt (1 entries differ by name and label, 1 by file "
        "content and label)",
        "problem: the splits hold 3 classes but num_labels is 47: fix the data or the recipe",
    ]
    assert "Traceback" not in captured.err and "(num_labels 47)" in captured.out
    assert cli_main(["data", "check", str(tmp_path / "nowhere")]) == 1
    assert "No data folder" in capsys.readouterr().err


def test_the_training_script_names_a_missing_folder_before_building_anything(tmp_path):
    from conftest import load_example

    script = load_example("train_image_classification")
    output = tmp_path / "never-written"
    with pytest.raises(DataLayoutError, match=f"No data folder {tmp_path / 'vtab-1k' / 'dtd'}.*train800val200.txt"):
        script.main(["--data_dir", str(tmp_path / "vtab-1k" / "dtd"), "--output_dir", str(output)])
    assert not output.exists()


def test_the_common_archive_layout_matches_train800val200_by_content_and_loads(tmp_path, capsys):
    """The widely shared vtab-1k archive stores train800val200 as its own JPEG copies (images/train800val200/):
    the check matches it to train800 + val200 by file content and label, says so, and the final stage trains on
    those copies; a same-name layout is matched by name; a copy whose content differs is a problem."""
    archive, same_files = tmp_path / "archive", tmp_path / "same-files"
    lists = write_vtab1k_task(archive, CLASSES, sizes=(12, 6, 9), archive=True)
    write_vtab1k_task(same_files, CLASSES, sizes=(12, 6, 9))
    assert {p for p, _ in lists["train800val200"]}.isdisjoint(p for p, _ in lists["train800"] + lists["val200"])
    report = check_data_folder(archive, num_labels=3)
    assert report.problems == []
    assert [n for n in report.notes if "matched by file content and label" in n] and "by name" not in " ".join(report.notes)
    assert [n for n in check_data_folder(same_files).notes if "matched by name and label" in n]
    assert cli_main(["data", "check", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "note: train800val200 = train800 + val200, matched by file content and label" in out and "OK: ready" in out

    final = load_layout_datasets(archive, stage="final")
    assert _as_loaded(final["train"]) == _as_written(archive, lists["train800val200"])
    assert sorted(_as_loaded(final["train"])) == sorted(_as_written(archive, lists["train800"] + lists["val200"]))

    changed = archive / lists["train800val200"][0][0]
    Image.fromarray(np.full((8, 8), 7, np.uint8), mode="L").save(changed, quality=75)
    report = check_data_folder(archive, num_labels=3, decode=False)
    assert report.problems == [
        "train800val200.txt is not train800.txt + val200.txt (36 entries differ by name and label, 2 by file content and label)"
    ]


def _sun397_like(folder: Path, absent=(4, 5)) -> dict:
    """A VTAB-1k task of 6 digit classes whose train800 and val200 (so train800val200) lack the classes ``absent``,
    while test holds every class: SUN397's situation (397 classes, 1,000 training images)."""
    lists = write_vtab1k_task(folder, (0, 1, 2, 3, 4, 5), sizes=(40, 12, 36), seed=3)
    for name in ("train800", "val200"):
        lists[name] = [(p, c) for p, c in lists[name] if c not in absent]
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for name in ("train800", "val200", "train800val200"):
        (folder / f"{name}.txt").write_text("".join(f"{p} {c}\n" for p, c in lists[name]))
    assert {c for _, c in lists["test"]} == set(range(6))
    return lists


def test_a_sun397_like_task_with_classes_absent_from_train_trains_and_scores_them_as_errors(tmp_path, caplog, monkeypatch):
    import datasets
    import torch

    from conftest import load_example
    from gated_vpt import load_adapter
    from gated_vpt.training.classification import load_image_classifier
    from gated_vpt.training.data import IMAGENET_MEAN, IMAGENET_STD, ImageTransform

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    folder = tmp_path / "sun397-like"
    lists = _sun397_like(folder)
    # data check: without a class count the splits disagree (a problem); with it, a note per split
    unseen = check_data_folder(folder, decode=False).problems
    assert unseen == ["test.txt has 2 classes that train800val200.txt lacks, e.g. ['4', '5']: give the class count "
                      "(--num_labels or --recipe) if that is intended (VTAB-1k SUN397: 397 classes, 1,000 training images)"]
    counted = check_data_folder(folder, num_labels=6, decode=False)
    assert counted.problems == [] and "train800 lacks 2 of 6, val200 lacks 2 of 6, train800val200 lacks 2 of 6" in counted.notes[-1]

    script = load_example("train_image_classification")
    mae = Path(__file__).resolve().parent.parent / "assets" / "mae-tiny"
    argv = ["--model_name_or_path", str(mae), "--data_dir", str(folder), "--image_size", "32", "--resize",
            "tf_legacy_bilinear", "--image_normalization", "imagenet", "--num_prompt_tokens", "1", "--learning_rate", "0.05",
            "--per_device_train_batch_size", "8", "--num_train_epochs", "3", "--warmup_epochs", "1",
            "--checkpointing_steps", "none", "--output_dir", str(tmp_path / "run")]
    with pytest.raises(ValueError, match=r"The test split has classes the train split lacks: \['4', '5'\]"):
        script.main(argv)  # a user's own folder without a class count: today's refusal
    with caplog.at_level("WARNING"):
        metrics = script.main([*argv, "--num_labels", "6"])
    warnings = [r.getMessage() for r in caplog.records if "Classes absent from a split" in r.getMessage()]
    assert len(warnings) == 1 and "train lacks 2 of 6, test lacks 0 of 6" in warnings[0]
    assert metrics["examples"] == {"train": len(lists["train800val200"]), "test": len(lists["test"])}

    # the saved adapter, run independently over every test image: a 6-way head; the absent classes' images are
    # in the score, and wrong
    model = load_adapter(load_image_classifier(str(mae), [str(i) for i in range(6)]), tmp_path / "run" / "adapter").eval()
    transform = ImageTransform("vtab", 32, IMAGENET_MEAN, IMAGENET_STD, resize="tf_legacy_bilinear")
    pixels = torch.stack([transform(Image.open(folder / p)) for p, _ in lists["test"]])
    labels = torch.tensor([c for _, c in lists["test"]])
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    predictions = logits.argmax(-1)
    absent = labels >= 4
    print(f"\ntest images {len(labels)}, of absent classes {int(absent.sum())}; logits per image {logits.shape[-1]}; "
          f"test_accuracy {metrics['test_accuracy']:.4f}; recomputed {(predictions == labels).float().mean().item():.4f}; "
          f"correct among absent-class images {int((predictions == labels)[absent].sum())}; "
          f"accuracy on present classes {(predictions == labels)[~absent].float().mean().item():.4f}")
    assert logits.shape[-1] == 6 and int(absent.sum()) > 0
    assert metrics["test_accuracy"] == pytest.approx((predictions == labels).float().mean().item())
    assert not (predictions == labels)[absent].any()
    assert metrics["test_accuracy"] <= 1 - absent.float().mean().item() + 1e-9
