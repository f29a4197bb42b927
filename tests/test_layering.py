"""The package's layers (README.md, "Layout"; declared in .importlinter): import-linter keeps the imports pointing down
and the layers free of cycles; here also what it cannot see (imports by name, cycles through a package's
``__init__``, the README's table), and what imports load: the core (``import gated_vpt``) needs only torch,
transformers, peft, safetensors and huggingface_hub (peft itself imports accelerate, so accelerate is not checked);
the training machinery leaves its data, metric and plot libraries until they are used.
"""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

import grimp
from importlinter.api import read_configuration  # noqa: F401  (configures import-linter for use_cases)
from conftest import make_backbone
from importlinter.application import use_cases

import gated_vpt

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gated_vpt"
CONTRACTS = ROOT / ".importlinter"
UPPER = ["gated_vpt.training", "gated_vpt.segmentation", "gated_vpt.cli", "gated_vpt.card", "gated_vpt.hub",
         "gated_vpt.recipes", "gated_vpt.convert", "datasets", "evaluate", "matplotlib", "tensorboard"]


def test_the_import_contracts_are_kept(capsys):
    kept = use_cases.lint_imports(config_filename=str(CONTRACTS), cache_dir=None, no_logo=True)
    report = capsys.readouterr().out
    assert kept, report  # the report names each broken contract and the imports that break it
    assert "0 broken" in report
    assert not [name for name, section in _contracts().items() if "ignore_imports" in section]  # nothing excused


def _contracts() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(CONTRACTS)
    return config


def _declared_layers() -> list[set[str]]:
    lines = _contracts()["importlinter:contract:layers"]["layers"].split("\n")
    return [set(re.split(r"\s*[|:]\s*", line.strip())) for line in lines if line.strip()]


def _readme_layers() -> list[tuple[str, list[str]]]:
    section = (ROOT / "README.md").read_text().split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| ") and "`" in line]
    return [(layer.strip(), re.findall(r"`([\w./]+)`", modules)) for layer, modules in rows]


def test_the_readme_lists_the_declared_layers_and_every_module_once():
    rows = _readme_layers()
    names = [name for _, modules in rows for name in modules]
    present = {p.name for p in PACKAGE.glob("*.py")} | {p.parent.name + "/" for p in PACKAGE.glob("*/__init__.py")}
    assert sorted(names) == sorted(present)  # every module and subpackage once, nothing that is not there
    below_the_face = [{name.removesuffix(".py").removesuffix("/") for name in modules} for layer, modules in rows
                      if modules != ["__init__.py"]]
    assert below_the_face == _declared_layers()


def test_no_module_is_imported_by_name():
    # import-linter sees import statements, also inside functions, but not importlib.import_module("gated_vpt.x").
    calls = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in sorted(PACKAGE.rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
             in ("import_module", "__import__")]
    assert calls == []


def test_no_import_cycles_module_by_module_package_inits_included():
    # acyclic_siblings compares the children of each package; a cycle through a package's __init__ (the face's
    # included) would pass it, so every module's imports are followed here.
    graph = grimp.build_graph("gated_vpt", cache_dir=None)
    modules = sorted(m for m in graph.modules if m.split(".")[0] == "gated_vpt")
    cycles = [(module, imported) for module in modules for imported in graph.find_modules_directly_imported_by(module)
              if imported.split(".")[0] == "gated_vpt" and graph.find_shortest_chain(imported, module) is not None]
    assert cycles == []


def test_only_the_command_imports_the_face():
    # gated_vpt/__init__ imports the core, and the Hub layer and the task packages when they are used: a module below
    # the command that imported it would close a loop.
    graph = grimp.build_graph("gated_vpt", cache_dir=None)
    assert graph.find_modules_that_directly_import("gated_vpt") <= {"gated_vpt.cli"}


def test_the_card_knows_every_task_before_its_package_is_imported(tmp_path):
    # The card learns segmentation from gated_vpt.tasks, filled by gated_vpt.segmentation; a new process that never
    # imported that package still writes a segmentation card for a segmentation adapter's folder.
    from gated_vpt.segmentation import SegmentationHeadConfig, SegmentationModel, get_segmentation_peft_model
    from gated_vpt.segmentation import save_segmentation_adapter

    heads = SegmentationHeadConfig(num_labels=3, aux_blocks=[1])
    model = get_segmentation_peft_model(SegmentationModel(make_backbone("vit"), heads), gated_vpt.GatedPromptConfig())
    folder = save_segmentation_adapter(model, tmp_path / "adapter")
    code = ("import sys, gated_vpt\nfrom gated_vpt.card import write_model_card\n"
            "assert 'gated_vpt.segmentation' not in sys.modules\n"
            "print(write_model_card(sys.argv[1]).read_text().split('pipeline_tag: ')[1].split()[0])")
    process = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300,
                             cwd=ROOT)
    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.split() == ["image-segmentation"]


def test_importing_the_core_loads_no_upper_layer(fresh_process):
    assert "gated_vpt.loading" in fresh_process["modules_after_core_import"]
    assert [m for m in UPPER if m in fresh_process["modules_after_core_import"]] == []


def test_the_training_machinery_imports_data_metric_and_plot_libraries_only_when_used(fresh_process):
    # A training script answers --help and refuses a missing backbone before datasets, evaluate and matplotlib
    # (about a second together) are imported; they load when the data, the metric or a figure is needed.
    loaded = {name.split(".")[0] for name in fresh_process["modules_after_training_import"]}
    assert "accelerate" in loaded and not {"datasets", "evaluate", "matplotlib"} & loaded


def test_importing_the_core_does_not_import_timm(fresh_process):
    # timm is an optional extra: gated_vpt recognises timm's classes by name and never imports timm itself.
    assert "timm" not in {name.split(".")[0] for name in fresh_process["modules_after_core_import"]}
