"""The model card's licence notes and metrics, and which folder the command reads: what a user relies on when
publishing or inspecting an adapter. tests/test_hub.py covers the card's layout and usage snippet, tests/test_cli.py
the commands' output."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard
from peft import get_peft_model

import gated_vpt
from conftest import make_backbone
from gated_vpt.card import write_model_card
from gated_vpt.cli import main

NOTICE = "The official MAE checkpoints are licensed CC-BY-NC-4.0 (non-commercial use only)."
SETTINGS = {"num_prompt_tokens": 3, "prompt_mode": "shallow", "gated": True, "modules_to_save": ["classifier"]}


def _converted_folder(tmp_path, model_type: str):
    """What `gated-vpt convert` leaves besides the weights: its record of the source."""
    folder = tmp_path / f"{model_type}-vit-b16"
    folder.mkdir()
    (folder / "conversion.json").write_text(json.dumps({"source": "x", "model_type": model_type, "classifier": False}))
    return folder


@pytest.mark.parametrize(
    "base, notice",
    [
        ("facebook/vit-mae-base", True),
        ("facebook/vit-mae-huge", True),
        ("google/vit-base-patch16-224-in21k", False),
        ("converted:mae", True),  # the paper's MAE backbone: a folder converted from the official weights
        ("converted:mocov3", False),
        (None, False),
    ],
)
def test_the_licence_section_warns_about_non_commercial_mae_bases(tmp_path, base, notice):
    if base and base.startswith("converted"):
        base = str(_converted_folder(tmp_path, base.split(":")[1]))
    text = write_model_card(tmp_path / "card", config=SETTINGS, base_model=base).read_text()
    licence = text.split("## License\n\n")[1].split("\n\n")[0]
    assert licence.startswith("The adapter weights are released under `apache-2.0`.")
    assert (NOTICE in licence) is notice


def test_metrics_in_the_card_data_are_the_quality_metrics_named_without_their_split(tmp_path):
    metrics = {"test_accuracy": 0.8, "validation_accuracy": 0.75, "train_loss": 1.25, "epoch": 3,
               "train_runtime": 12.0, "eval_samples_per_second": 40.0, "note": "not a number"}
    path = write_model_card(tmp_path, config=SETTINGS, metrics=metrics, dataset="cub_200_2011")
    data = ModelCard.load(path).data
    assert data.metrics == ["accuracy"]
    assert [(r.metric_name, r.metric_type, r.metric_value) for r in data.eval_results] == [
        ("test_accuracy", "accuracy", 0.8), ("validation_accuracy", "accuracy", 0.75)]
    assert all(r.dataset_name == "cub_200_2011" and r.task_type == "image-classification" for r in data.eval_results)
    table = path.read_text().split("| Metric | Value |\n|---|---:|\n")[1].split("\n\n")[0].splitlines()
    assert table == ["| test_accuracy | 0.8 |", "| validation_accuracy | 0.75 |", "| train_loss | 1.25 |", "| epoch | 3 |",
                     "| train_runtime | 12 |", "| eval_samples_per_second | 40 |"]


def _save_adapter(folder, prompts: int) -> None:
    model = get_peft_model(make_backbone("vit_clf"), gated_vpt.GatedPromptConfig(num_prompt_tokens=prompts))
    model.save_pretrained(folder)


def test_a_folder_is_read_as_an_adapter_before_its_adapter_subfolder(tmp_path, capsys):
    """A training run's output folder holds the adapter in adapter/; a folder that is an adapter itself is read as
    it is, even with an adapter/ subfolder inside."""
    run = tmp_path / "run"
    _save_adapter(run / "adapter", prompts=2)
    assert main(["info", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["directory"], summary["config"]["num_prompt_tokens"]) == (str(run / "adapter"), 2)
    _save_adapter(run, prompts=5)
    assert main(["info", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["directory"], summary["config"]["num_prompt_tokens"]) == (str(run), 5)
