"""The ``gated-vpt`` command on local files, run in-process through ``gated_vpt.cli.main`` (the Hub commands run
against the local Hub server in test_hub.py)."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from PIL import Image
from transformers import ViTForImageClassification, ViTImageProcessor

import gated_vpt
from conftest import make_backbone, modules_loaded_by_command, pixels_as_training_evaluates, randomize_adapter_
from gated_vpt.cli import main
from gated_vpt.loading import write_labels

COMMANDS = ("push", "pull", "info", "predict")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved tiny base (with image processor), an adapter trained on it (randomised) and a folder of PNGs."""
    root = tmp_path_factory.mktemp("cli")
    make_backbone("vit_clf").save_pretrained(root / "base")
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.4, 0.5, 0.6]).save_pretrained(root / "base")
    model = get_peft_model(ViTForImageClassification.from_pretrained(root / "base"), gated_vpt.GatedPromptConfig(num_prompt_tokens=3))
    randomize_adapter_(model, seed=5)
    model.save_pretrained(root / "adapter")
    (root / "images").mkdir()
    generator = torch.Generator().manual_seed(1)
    for i, size in enumerate([(16, 16), (30, 22), (9, 40)]):
        pixels = torch.randint(0, 256, (*size, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "images" / f"photo{i}.png")
    (root / "images" / "notes.txt").write_text("not an image, skipped in folders")
    return root


def _expected_top(files: Path, paths: list[Path], k: int) -> tuple[list[list[float]], list[list[int]]]:
    model = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(files / "base"), files / "adapter").eval()
    pixels = pixels_as_training_evaluates(paths, 16, mean=(0.4, 0.5, 0.6))
    with torch.no_grad():
        scores, indices = model(pixels).logits.softmax(-1).topk(k)
    return scores.tolist(), indices.tolist()


def test_help_lists_every_command_and_each_has_its_own(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert all(f"\n    {command} " in text for command in (*COMMANDS, "convert"))
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit:
            main([command, "--help"])
        assert exit.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: gated-vpt {command}")


def test_info_prints_config_gates_parameters_and_sizes(files, capsys):
    assert main(["info", str(files / "adapter")]) == 0
    text = capsys.readouterr().out
    assert gated_vpt.gate_report(files / "adapter").format_table() in text
    assert "num_prompt_tokens: 3" in text and "adapter_model.safetensors (" in text

    assert main(["info", str(files / "adapter"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["gates"] == gated_vpt.gate_report(files / "adapter").to_dict()
    # 4 blocks: prompts 3x32 in block 0, gates on blocks 0-2, a temperature per block, a 3-way classifier on 32.
    assert summary["parameters"] == {"gvpt_gate": 3, "gvpt_prompt": 96, "gvpt_temperature": 4,
                                     "head (classifier)": 3 * 32 + 3}
    assert summary["files"]["adapter_config.json"] == (files / "adapter" / "adapter_config.json").stat().st_size


def test_predict_folder_and_file_with_label_names(files, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    folder = files / "images"
    args = ["predict", str(files / "adapter"), str(folder), str(folder / "photo0.png"), "--top_k", "2", "--labels", str(labels)]
    assert main(args) == 0  # the base comes from the adapter config's base_model_name_or_path
    lines = capsys.readouterr().out.splitlines()
    paths = [folder / f"photo{i}.png" for i in range(3)] + [folder / "photo0.png"]
    scores, indices = _expected_top(files, paths, 2)
    assert len(lines) == len(paths)
    for line, path, row_scores, row_indices in zip(lines, paths, scores, indices):
        names = ["cat", "dog", "bird"]
        assert line == f"{path}: " + ", ".join(f"{names[i]} ({s:.4f})" for s, i in zip(row_scores, row_indices))


def test_predict_json_with_an_explicit_base(files, capsys):
    image = files / "images" / "photo1.png"
    assert main(["predict", str(files / "adapter"), str(image), "--base", str(files / "base"), "--json"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    scores, indices = _expected_top(files, [image], 3)
    assert [t["index"] for t in row["top"]] == indices[0] and [t["label"] for t in row["top"]] == [f"LABEL_{i}" for i in indices[0]]
    assert [t["score"] for t in row["top"]] == pytest.approx(scores[0], abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "{adapter}", "{root}/missing.png"], "No image file or folder"),
        (["predict", "{adapter}", "{root}/images/notes.txt"], "Cannot read an image"),
        (["predict", "{adapter}", "{root}/images", "--labels", "{root}/images/notes.txt"], "has 1 names but"),
        (["predict", "{adapter}", "{root}/images", "--base", "{root}/wider_base"], "another backbone"),
        (["info", "{root}/images"], "has no adapter_config.json"),
        (["pull", "{adapter}"], "pull takes a Hub repo id"),
        (["push", "{root}/images", "someone/adapter"], "has no adapter_config.json"),
    ],
)
def test_bad_input_is_one_clear_line(files, capsys, args, message):
    if not (files / "wider_base").exists():
        make_backbone("vit_clf", hidden_size=48).save_pretrained(files / "wider_base")
    argv = [a.format(adapter=files / "adapter", root=files) for a in args]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("gated-vpt: error:") and message in err and err.count("\n") == 1, err


def test_predict_without_a_known_base_asks_for_one(files, tmp_path, capsys):
    config = json.loads((files / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "adapter_model.safetensors").write_bytes((files / "adapter" / "adapter_model.safetensors").read_bytes())
    assert main(["predict", str(tmp_path), str(files / "images")]) == 1
    assert "pass --base" in capsys.readouterr().err


def test_convert_forwards_its_arguments_untouched_under_the_command_name(monkeypatch):
    received = []
    convert = types.ModuleType("gated_vpt.convert")
    convert.main = lambda argv, prog: received.append((argv, prog)) or 3
    monkeypatch.setitem(sys.modules, "gated_vpt.convert", convert)
    monkeypatch.setattr(gated_vpt, "convert", convert, raising=False)
    assert main(["convert", "--help", "in.pth", "--out", "x"]) == 3
    assert received == [(["--help", "in.pth", "--out", "x"], "gated-vpt convert")]


@pytest.fixture(scope="module")
def run_folder(files, tmp_path_factory):
    """A training run's output folder: the adapter in adapter/ with its class names, as the scripts write it."""
    run = tmp_path_factory.mktemp("run")
    base = ViTForImageClassification.from_pretrained(files / "base", id2label={0: "cat", 1: "dog", 2: "bird"})
    model = PeftModel.from_pretrained(base, files / "adapter")
    model.save_pretrained(run / "adapter")
    assert write_labels(run / "adapter", model) == run / "adapter" / "id2label.json"
    (run / "metrics.json").write_text("{}")
    return run


def test_info_and_predict_take_a_run_folder_and_print_the_saved_labels(files, run_folder, capsys):
    assert main(["info", str(run_folder)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"Adapter {run_folder} ({run_folder / 'adapter'})\n")
    assert gated_vpt.gate_report(files / "adapter").format_table() in text and "id2label.json (" in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == len(set(lines))  # nothing printed twice

    image = files / "images" / "photo0.png"
    assert main(["predict", str(run_folder), str(image), "--top_k", "3", "--json"]) == 0
    captured = capsys.readouterr()
    [row] = [json.loads(line) for line in captured.out.splitlines()]
    scores, indices = _expected_top(files, [image], 3)
    assert [t["label"] for t in row["top"]] == [["cat", "dog", "bird"][i] for i in indices[0]]
    assert captured.err == ""  # no notes or library warnings


@pytest.mark.parametrize("saved", ['["cat", "dog", "bird"]', '{"0": "cat", "2": "bird"}', '{"0": 1, "1": 2, "2": 3}', "{not json"])
def test_class_names_from_a_stranger_must_be_an_id2label_file(files, tmp_path, capsys, saved):
    shutil.copytree(files / "adapter", tmp_path / "adapter")
    (tmp_path / "adapter" / "id2label.json").write_text(saved)
    image = str(files / "images" / "photo0.png")
    assert main(["predict", str(tmp_path / "adapter"), image, "--base", str(files / "base")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gated-vpt: error: ") and "id2label.json is not a list of class names" in err and "--labels" in err
    (tmp_path / "names.txt").write_text("a\nb\nc\n")  # names given on the command line replace the saved file
    assert main(["predict", str(tmp_path / "adapter"), image, "--base", str(files / "base"), "--labels", str(tmp_path / "names.txt")]) == 0


def test_info_of_an_adapter_folder_names_it_once(files, capsys):
    assert main(["info", str(files / "adapter")]) == 0
    assert capsys.readouterr().out.count(str(files / "adapter")) == 1


def test_the_installed_command_imports_only_what_each_command_needs(files, tmp_path):
    # The entry point defers loading the core until a command runs: --help needs none of the heavy libraries, info
    # reads and checks the files with torch and safetensors only, predict loads the adapter through peft (the
    # method registered).
    helps = [["--help"], *([command, "--help"] for command in (*COMMANDS, "convert", "protocol")), ["data", "check", "--help"]]
    infos = [["info", str(files / "adapter")], ["info", str(files / "adapter"), "--json"]]
    predict = ["predict", str(files / "adapter"), str(files / "images"), "--base", str(files / "base")]
    loaded = modules_loaded_by_command(tmp_path, *helps, *infos, predict, predict)
    assert not {"torch", "transformers", "peft", "huggingface_hub"} & loaded[len(helps) - 1]
    after_info = loaded[len(helps) + len(infos) - 1]
    assert "torch" in after_info and not {"peft", "transformers"} & after_info
    assert "peft" in loaded[-1]


def test_predict_with_the_recorded_base_missing_asks_for_base(files, tmp_path, capsys):
    shutil.copytree(files / "adapter", tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "another-machine" / "base")
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "adapter"), str(files / "images")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gated-vpt: error: The adapter's base model {tmp_path / 'another-machine' / 'base'} is not "
                          "on this machine") and "pass --base" in err and err.count("\n") == 1, err
    assert main(["predict", str(tmp_path / "adapter"), str(files / "images" / "photo0.png"), "--base", str(files / "base")]) == 0


def test_predict_skip_bad_images_leaves_them_out_with_a_note(files, tmp_path, capsys):
    shutil.copytree(files / "images", tmp_path / "images")
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    assert main(["predict", str(files / "adapter"), str(tmp_path / "images")]) == 1
    assert "--skip_bad_images" in capsys.readouterr().err
    assert main(["predict", str(files / "adapter"), str(tmp_path / "images"), "--skip_bad_images", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    paths = [tmp_path / "images" / f"photo{i}.png" for i in range(3)]
    assert [row["image"] for row in rows] == [str(p) for p in paths]
    assert [[t["index"] for t in row["top"]] for row in rows] == _expected_top(files, paths, 3)[1]
    assert f"skipped {tmp_path / 'images' / 'broken.png'}" in err


def test_a_missing_local_path_is_refused_before_torch_or_the_hub_load(tmp_path):
    import os
    import subprocess

    (tmp_path / "runs" / "cub").mkdir(parents=True)
    code = ("import sys\nsys.argv[0] = 'gated-vpt'\nfrom gated_vpt.cli import main\nstatus = main(sys.argv[1:])\n"
            "print(sorted({name.split('.')[0] for name in sys.modules} & {'torch', 'huggingface_hub', 'transformers'}))\n"
            "sys.exit(status)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    for argv, message in ((["info", "runs/cbu"], "Similar names in runs/: cub"),
                          (["predict", "./runs/cub/adapter", "x.png"], "No such folder: ./runs/cub/adapter"),
                          (["push", "../nowhere", "user/x"], "No such folder: ../nowhere"),
                          (["predict", "user/x", "x.png", "--base", "./runs/base"], "Pass --base an existing model folder")):
        process = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, capture_output=True,
                                 text=True, timeout=120)
        assert process.returncode == 1 and process.stdout.strip() == "[]", (argv, process.stdout, process.stderr)
        assert process.stderr.startswith("gated-vpt: error: No such folder") and message in process.stderr, process.stderr
        assert process.stderr.count("\n") == 1


def test_flags_take_underscores_and_the_dashed_spellings_of_earlier_releases(files, capsys):
    image = str(files / "images" / "photo1.png")
    for spelling in (["--top_k", "1"], ["--top-k", "1"], ["--top-k=1"]):
        assert main(["predict", str(files / "adapter"), image, "--json", *spelling]) == 0
        [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(row["top"]) == 1, spelling
    with pytest.raises(SystemExit):  # a flag that does not exist in either spelling is still a usage error
        main(["predict", str(files / "adapter"), image, "--top-kk", "1"])
    assert "unrecognized arguments: --top_kk" in capsys.readouterr().err
    # what protocol passes on after -- goes to the training script as written
    assert gated_vpt.cli._underscored_flags(["x", "--no-decode", "--", "--learning-rate", "1"]) == [
        "x", "--no_decode", "--", "--learning-rate", "1"]
