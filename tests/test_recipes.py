"""The recipes in hub_configs/ and their loader.

Table 5 and the class counts are written out here again, independently of hub_configs/generate_recipes.py, so a
slip in the generator shows up as a mismatch.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gated_vpt.recipes import ARGS, PAPER_FIELDS, RECIPES_DIR, list_recipes, load_recipe

# The paper's Table 5: task | MAE (BS, prompt tokens, LR, gate_init) | MoCo v3 (same).
TABLE5 = """
| Caltech101 | 128, 1, 0.5, 5 | 128, 10, 2.5, 4 |
| CIFAR-100 | 128, 1, 0.25, 5 | 128, 10, 1, 15 |
| Clevr-Dist | 128, 1, 0.1, 15 | 128, 5, 1, 10 |
| Clevr-Count | 128, 1, 0.05, 15 | 128, 5, 0.5, 5 |
| Retinopathy | 128, 5, 0.05, 10 | 128, 5, 0.5, 5 |
| DMLab | 128, 1, 0.1, 5 | 128, 1, 1, 5 |
| dSpr-Ori | 128, 1, 0.05, 5 | 128, 5, 0.5, 5 |
| dSpr-Loc | 128, 1, 0.1, 5 | 128, 5, 0.5, 5 |
| DTD | 128, 1, 0.25, 1 | 128, 10, 1, 5 |
| EuroSAT | 128, 5, 0.1, 1 | 128, 10, 1, 5 |
| KITTI-Dist | 128, 5, 0.1, 7 | 128, 5, 1, 5 |
| Flowers102 | 128, 1, 0.25, 5 | 128, 5, 1, 7 |
| Pets | 128, 1, 0.5, 10 | 64, 100, 1, 1 |
| Camelyon | 128, 1, 0.05, 5 | 128, 1, 1, 10 |
| Resisc45 | 128, 10, 0.25, 5 | 64, 100, 1, 7 |
| sNORB-Azim | 128, 1, 0.1, 20 | 128, 10, 0.5, 3 |
| sNORB-Elev | 128, 1, 0.05, 10 | 128, 5, 0.5, 4 |
| SUN397 | 128, 1, 0.5, 10 | 128, 1, 1, 4 |
| SVHN | 128, 1, 0.1, 10 | 128, 5, 1, 10 |
| CUB | 64, 100, 0.1, 5 | 64, 100, 1, 5 |
| Flowers (FGVC) | 64, 100, 0.1, 15 | 64, 100, 1, 10 |
| Stanford Cars | 64, 100, 0.25, 5 | 64, 100, 0.5, 5 |
| Stanford Dogs | 64, 100, 0.5, 15 | 64, 100, 0.5, 10 |
| NABirds | 64, 100, 0.5, 5 | 64, 100, 1, 5 |
| ADE20K | 16, 100, 0.001, 10 | 16, 100, 0.001, 10 |
"""
# Table 5's task name -> (recipe file stem after the backbone, class count from the paper).
TASKS = {
    "Caltech101": ("vtab-caltech101", 102), "CIFAR-100": ("vtab-cifar100", 100), "DTD": ("vtab-dtd", 47),
    "Flowers102": ("vtab-flowers102", 102), "Pets": ("vtab-pets", 37), "SVHN": ("vtab-svhn", 10),
    "SUN397": ("vtab-sun397", 397), "Camelyon": ("vtab-camelyon", 2), "EuroSAT": ("vtab-eurosat", 10),
    "Resisc45": ("vtab-resisc45", 45), "Retinopathy": ("vtab-retinopathy", 5), "Clevr-Count": ("vtab-clevr-count", 8),
    "Clevr-Dist": ("vtab-clevr-dist", 6), "DMLab": ("vtab-dmlab", 6), "KITTI-Dist": ("vtab-kitti-dist", 4),
    "dSpr-Loc": ("vtab-dsprites-loc", 16), "dSpr-Ori": ("vtab-dsprites-ori", 16),
    "sNORB-Azim": ("vtab-smallnorb-azim", 18), "sNORB-Elev": ("vtab-smallnorb-elev", 9),
    "CUB": ("fgvc-cub", 200), "Flowers (FGVC)": ("fgvc-flowers", 102), "Stanford Cars": ("fgvc-cars", 196),
    "Stanford Dogs": ("fgvc-dogs", 120), "NABirds": ("fgvc-nabirds", 555), "ADE20K": ("ade20k", 150),
}
BACKBONE_IDS = {"mae": "backbones/mae-vit-b16", "mocov3": "backbones/mocov3-vit-b16-linear"}
# The paper's backbones: MAE's pretraining weights (timm's Hub copy holds them as safetensors), MoCo v3's
# linear-probe checkpoint.
BACKBONE_CHECKPOINTS = {"mae": ("mae_pretrain_vit_base.pth", "timm/vit_base_patch16_224.mae"),
                        "mocov3": ("linear-vit-b-300ep.pth.tar",)}


# The paper's Tables 1-3: (backbone, method) -> the paper's numbers.
FGVC_TOP1 = {  # CUB, Flowers, Cars, Dogs, NABirds
    ("mae", "vpt-shallow"): (42.15, 69.15, 43.38, 77.07, 57.43), ("mae", "vpt-deep"): (68.33, 80.05, 67.67, 78.83, 65.22),
    ("mae", "gated"): (70.56, 78.55, 71.70, 78.90, 67.26),
    ("mocov3", "vpt-shallow"): (79.05, 90.47, 71.91, 81.97, 72.92),
    ("mocov3", "vpt-deep"): (82.67, 94.41, 79.18, 83.33, 75.99), ("mocov3", "gated"): (82.86, 93.71, 79.02, 83.37, 76.02),
}
FGVC_ORDER = ("fgvc-cub", "fgvc-flowers", "fgvc-cars", "fgvc-dogs", "fgvc-nabirds")
VTAB_GROUP_MEANS = {  # Natural, Specialized, Structured
    ("mae", "vpt-shallow"): (39.96, 69.65, 27.50), ("mae", "vpt-deep"): (36.02, 60.61, 26.57),
    ("mae", "gated"): (47.61, 76.86, 36.80),
    ("mocov3", "vpt-shallow"): (67.34, 82.26, 37.55), ("mocov3", "vpt-deep"): (70.27, 83.04, 42.38),
    ("mocov3", "gated"): (74.84, 83.38, 49.10),
}
VTAB_GROUPS = {  # The paper's class counts, in group order: 7 Natural, 4 Specialized, 8 Structured
    "Natural": ("Caltech101", "CIFAR-100", "DTD", "Flowers102", "Pets", "SVHN", "SUN397"),
    "Specialized": ("Camelyon", "EuroSAT", "Resisc45", "Retinopathy"),
    "Structured": ("Clevr-Count", "Clevr-Dist", "DMLab", "KITTI-Dist", "dSpr-Loc", "dSpr-Ori", "sNORB-Azim", "sNORB-Elev"),
}
ADE20K_MIOU = {  # single-scale, multi-scale
    ("mae", "vpt-shallow"): (34.20, 35.23), ("mae", "vpt-deep"): (37.76, 38.80), ("mae", "gated"): (38.44, 39.81),
    ("mocov3", "vpt-shallow"): (34.55, 36.18), ("mocov3", "vpt-deep"): (35.50, 37.15), ("mocov3", "gated"): (36.81, 38.55),
}
METHOD_SETTINGS = {  # (prompt_mode, gated, learnable_temperature)
    "gated": ("shallow", True, True), "vpt-shallow": ("shallow", False, False), "vpt-deep": ("deep", False, False),
}


def table5() -> dict[tuple[str, str], tuple[int, int, float, float]]:
    rows = {}
    for line in TABLE5.strip().splitlines():
        task, mae, moco = (cell.strip() for cell in line.strip("|").split("|"))
        for backbone, cell in (("mae", mae), ("mocov3", moco)):
            batch, prompts, lr, gate = (float(v) for v in cell.split(","))
            rows[(backbone, task)] = (int(batch), int(prompts), lr, gate)
    return rows


def read(name: str) -> dict:
    return json.loads((RECIPES_DIR / name).read_text())


def test_every_recipe_validates_and_uses_known_arguments():
    paths = list_recipes()
    assert len(paths) == 78 and all(p.suffix == ".json" for p in paths)
    for path in paths:
        recipe = json.loads(path.read_text())
        args = load_recipe(path, task_type=recipe["task_type"])
        assert args == recipe["args"]
        assert set(args) <= set(ARGS) and set(recipe["paper"]) <= set(PAPER_FIELDS)
        assert all(recipe[key].strip() for key in ("description", "backbone_source", "data_source")), path.name
        assert args["output_dir"] == f"outputs/{path.stem}"


def test_gated_recipes_match_table5_and_class_counts():
    expected = table5()
    assert len(expected) == 50
    for (backbone, task), (batch, prompts, lr, gate_init) in expected.items():
        stem, classes = TASKS[task]
        name = f"{backbone}-{stem}.json"
        args = load_recipe(RECIPES_DIR / name)
        found = (args["per_device_train_batch_size"], args["num_prompt_tokens"], args["learning_rate"], args["gate_init"])
        assert found == (batch, prompts, lr, gate_init), name
        assert args["num_labels"] == classes, name
        assert args["model_name_or_path"] == BACKBONE_IDS[backbone], name
        assert (args["prompt_mode"], args["gated"], args["learnable_temperature"]) == ("shallow", True, True), name
        assert (args["optimizer"], args["momentum"], args["weight_decay"]) == ("sgd", 0.9, 0.0), name
        assert args["image_normalization"] == "imagenet", name
        backbone_fields = read(name)["backbone"]
        assert all(c in backbone_fields["checkpoint"] for c in BACKBONE_CHECKPOINTS[backbone]), name
        assert backbone_fields["prepare"].startswith(f"gated-vpt convert --model_type {backbone} "), name
        assert backbone_fields["prepare"].split()[-1] == BACKBONE_IDS[backbone], name
        if task == "ADE20K":
            continue
        assert args["transform"] == stem.split("-")[0] and args["image_size"] == 224, name
        assert (args["num_train_epochs"], args["warmup_epochs"], args["scheduler_step"]) == (100, 10, "epoch"), name
        assert args["head_pooling"] == {"mae": "mean", "mocov3": "cls"}[backbone], name


def _parse_name(name: str) -> tuple[str, str, str]:
    """``mae-fgvc-cub-vpt-deep.json`` -> ("mae", "fgvc-cub", "vpt-deep")."""
    backbone, rest = name.removesuffix(".json").split("-", 1)
    for method in ("vpt-shallow", "vpt-deep"):
        if rest.endswith("-" + method):
            return backbone, rest.removesuffix("-" + method), method
    return backbone, rest, "gated"


def test_every_recipe_carries_the_spec_settings_and_the_papers_numbers():
    """All 78 files, baselines included, read as JSON (not through the generator): the method, Table 5's batch
    size, the class count, the paper's training recipe, prompt dropout 0.1 on prompts from block 0, one seed, and
    the number the paper reports for exactly this backbone, task and method."""
    task_of_stem = {stem: task for task, (stem, _) in TASKS.items()}
    group_of_task = {task: group for group, tasks in VTAB_GROUPS.items() for task in tasks}
    assert set(group_of_task) == {task for task, (stem, _) in TASKS.items() if stem.startswith("vtab-")}
    table = table5()
    seen = set()
    for path in list_recipes():
        recipe = json.loads(path.read_text())
        args, paper = recipe["args"], recipe["paper"]
        backbone, stem, method = _parse_name(path.name)
        task = task_of_stem[stem]
        seen.add((backbone, task, method))
        batch, prompts, _, _ = table[(backbone, task)]
        where = path.name
        assert (args["prompt_mode"], args["gated"], args["learnable_temperature"]) == METHOD_SETTINGS[method], where
        assert args["num_prompt_tokens"] == (10 if method == "vpt-deep" else prompts), where
        assert args["per_device_train_batch_size"] == batch and args["num_labels"] == TASKS[task][1], where
        assert (args["prompt_dropout"], args["prompt_start_block"], args["seed"]) == (0.1, 0, 0), where
        assert (args["optimizer"], args["momentum"], args["weight_decay"]) == ("sgd", 0.9, 0.0), where
        if stem == "ade20k":
            assert recipe["task_type"] == "semantic-segmentation", where
            single, multi = ADE20K_MIOU[(backbone, method)]
            assert paper["reported_miou_single_scale"] == single and paper["reported_miou_multi_scale"] == multi, where
            continue
        assert (args["num_train_epochs"], args["warmup_epochs"], args["scheduler_step"]) == (100, 10, "epoch"), where
        assert (args["image_size"], args["transform"]) == (224, stem.split("-")[0]), where
        assert args["head_pooling"] == {"mae": "mean", "mocov3": "cls"}[backbone], where
        if stem.startswith("fgvc-"):
            assert paper["reported_top1"] == FGVC_TOP1[(backbone, method)][FGVC_ORDER.index(stem)], where
        else:
            group = group_of_task[task]
            assert paper["vtab_group"] == group and paper["reported_top1"] is None, where
            mean = VTAB_GROUP_MEANS[(backbone, method)][("Natural", "Specialized", "Structured").index(group)]
            assert paper["reported_group_mean_top1"] == mean, where
    assert {(b, t) for b, t, m in seen if m == "gated"} == set(table)  # every Table 5 cell has its gated recipe
    assert len(seen) == 78


def test_spot_checks():
    cub = load_recipe(RECIPES_DIR / "mae-fgvc-cub.json")
    assert (cub["learning_rate"], cub["num_prompt_tokens"], cub["gate_init"], cub["num_labels"]) == (0.1, 100, 5, 200)
    pets = load_recipe(RECIPES_DIR / "mocov3-vtab-pets.json")
    assert (pets["per_device_train_batch_size"], pets["num_prompt_tokens"], pets["gate_init"]) == (64, 100, 1)
    caltech = load_recipe(RECIPES_DIR / "mocov3-vtab-caltech101.json")
    assert (caltech["learning_rate"], caltech["gate_init"], caltech["transform"]) == (2.5, 4, "vtab")
    assert load_recipe(RECIPES_DIR / "mae-vtab-smallnorb-azim.json")["gate_init"] == 20
    assert load_recipe(RECIPES_DIR / "mae-fgvc-nabirds.json")["num_labels"] == 555
    assert read("mocov3-fgvc-dogs.json")["paper"]["reported_top1"] == 83.37
    assert read("mae-vtab-dtd.json")["paper"]["reported_group_mean_top1"] == 47.61


# The folder names of the widely shared preprocessed VTAB-1k archive, by recipe stem.
VTAB_FOLDERS = {
    "caltech101": "caltech101", "cifar100": "cifar", "dtd": "dtd", "flowers102": "oxford_flowers102",
    "pets": "oxford_iiit_pet", "svhn": "svhn", "sun397": "sun397", "camelyon": "patch_camelyon", "eurosat": "eurosat",
    "resisc45": "resisc45", "retinopathy": "diabetic_retinopathy", "clevr-count": "clevr_count",
    "clevr-dist": "clevr_dist", "dmlab": "dmlab", "kitti-dist": "kitti", "dsprites-loc": "dsprites_loc",
    "dsprites-ori": "dsprites_ori", "smallnorb-azim": "smallnorb_azi", "smallnorb-elev": "smallnorb_ele",
}


def test_benchmark_recipes_name_their_data_folder_and_layout():
    """The stage picks the splits inside the folder (gated_vpt.training.benchmark_data), so tune and final args are
    the same and no recipe needs tune_args."""
    for backbone in ("mae", "mocov3"):
        for stem, folder in VTAB_FOLDERS.items():
            recipe = read(f"{backbone}-vtab-{stem}.json")
            assert (recipe["args"]["data_dir"], recipe["args"]["data_layout"]) == (f"data/vtab-1k/{folder}", "vtab1k")
        for task in ("cub", "flowers", "cars", "dogs", "nabirds"):
            recipe = read(f"{backbone}-fgvc-{task}.json")
            assert (recipe["args"]["data_dir"], recipe["args"]["data_layout"]) == (f"data/fgvc/{task}", "fgvc")
    for path in list_recipes():
        recipe = read(path.name)
        assert "tune_args" not in recipe, path.name
        assert not {"train_dir", "test_dir"} & set(recipe["args"]) or recipe["task_type"] == "semantic-segmentation"
    final = load_recipe(RECIPES_DIR / "mae-vtab-eurosat.json")
    assert load_recipe(RECIPES_DIR / "mae-vtab-eurosat.json", stage="tune") == final


def test_baseline_recipes():
    fgvc = ("cub", "flowers", "cars", "dogs", "nabirds")
    reported_deep_mae = (68.33, 80.05, 67.67, 78.83, 65.22)
    for backbone in ("mae", "mocov3"):
        vtab_baselines = [p for p in list_recipes() if p.name.startswith(f"{backbone}-vtab-") and "-vpt-" in p.name]
        assert len(vtab_baselines) >= 2
        stems = [f"fgvc-{t}" for t in fgvc] + ["ade20k"]
        for stem in stems:
            gated = load_recipe(RECIPES_DIR / f"{backbone}-{stem}.json")
            shallow = load_recipe(RECIPES_DIR / f"{backbone}-{stem}-vpt-shallow.json")
            deep = load_recipe(RECIPES_DIR / f"{backbone}-{stem}-vpt-deep.json")
            assert (shallow["prompt_mode"], shallow["gated"], shallow["learnable_temperature"]) == ("shallow", False, False)
            assert shallow["num_prompt_tokens"] == gated["num_prompt_tokens"]
            assert (deep["prompt_mode"], deep["gated"], deep["learnable_temperature"]) == ("deep", False, False)
            assert deep["num_prompt_tokens"] == 10
            assert shallow["num_labels"] == deep["num_labels"] == gated["num_labels"]
    for task, top1 in zip(fgvc, reported_deep_mae):
        assert read(f"mae-fgvc-{task}-vpt-deep.json")["paper"]["reported_top1"] == top1


def test_segmentation_recipes():
    expected_miou = {"mae": (38.44, 39.81), "mocov3": (36.81, 38.55)}
    for backbone, (single, multi) in expected_miou.items():
        path = RECIPES_DIR / f"{backbone}-ade20k.json"
        args = load_recipe(path, task_type="semantic-segmentation")
        assert (args["decoder"], args["aux_blocks"], args["crop_size"], args["num_labels"]) == ("setr_pup", [5, 9], 512, 150)
        assert (args["scheduler"], args["ignore_index"], args["reduce_labels"]) == ("poly", 255, True)
        # SETR-PUP's ADE20K settings: 10x learning rate on the heads, poly (power 0.9) down to 1e-4, 512 channels.
        assert (args["decoder_lr_multiplier"], args["poly_power"], args["min_learning_rate"]) == (10.0, 0.9, 1e-4)
        assert args["decoder_channels"] == 512 and args["image_normalization"] == "imagenet"
        paper = read(path.name)["paper"]
        assert (paper["reported_miou_single_scale"], paper["reported_miou_multi_scale"]) == (single, multi)
        with pytest.raises(ValueError, match="is a 'semantic-segmentation' recipe, but this script trains 'image-classification'"):
            load_recipe(path, task_type="image-classification")
    with pytest.raises(ValueError, match="is a 'image-classification' recipe, but this script trains 'semantic-segmentation'"):
        load_recipe(RECIPES_DIR / "mae-fgvc-cub.json", task_type="semantic-segmentation")


def test_files_match_the_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("generate_recipes", RECIPES_DIR / "generate_recipes.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    recipes = generator.all_recipes()
    assert sorted(recipes) == [p.name for p in list_recipes()]
    for name, recipe in recipes.items():
        assert (RECIPES_DIR / name).read_text() == generator.render(recipe), f"{name}: run python hub_configs/generate_recipes.py"
    assert generator.main(["--check"]) == 0
    assert generator.main(["--check", "--directory", str(tmp_path)]) == 1


@pytest.fixture
def write(tmp_path):
    base = read("mae-fgvc-cub.json")

    def make(args=None, drop=(), **top):
        recipe = {**base, **top, "args": {k: v for k, v in {**base["args"], **(args or {})}.items() if k not in drop}}
        for key in drop:
            recipe.pop(key, None)
        path = tmp_path / "recipe.json"
        path.write_text(json.dumps(recipe))
        return path

    return make


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(args={"learning_rte": 0.1}), r"args\.'learning_rte' is not a known field: did you mean 'learning_rate'\?"),
        (dict(drop=("num_labels",)), r"missing args\.num_labels: add it"),
        (dict(drop=("task_type",)), r"missing field 'task_type'"),
        (dict(drop=("args",)), r"missing field 'args'"),
        (dict(notes="x"), r"'notes' is not a known field"),
        (dict(args={"num_prompt_tokens": "100"}), r"args\.num_prompt_tokens = \"100\" has the wrong type: use an integer >= 1"),
        (dict(args={"num_prompt_tokens": 0}), r"args\.num_prompt_tokens = 0 is out of range"),
        (dict(args={"gated": 1}), r"args\.gated = 1 has the wrong type: use true or false"),
        (dict(args={"num_labels": True}), r"args\.num_labels = true has the wrong type"),
        (dict(args={"gate_init": 0}), r"args\.gate_init = 0 is out of range: use a number in \(0, 50\]"),
        (dict(args={"gate_init": 60}), r"args\.gate_init = 60 is out of range"),
        (dict(args={"learning_rate": -1}), r"args\.learning_rate = -1 is out of range: use a number > 0"),
        (dict(args={"prompt_mode": "middle"}), r"args\.prompt_mode = \"middle\" is out of range: use one of 'shallow', 'deep'"),
        (dict(args={"transform": "imagenet"}), r"args\.transform = \"imagenet\" is out of range: use one of 'fgvc', 'vtab'"),
        (dict(args={"crop_size": 512}), r"args\.crop_size is a semantic-segmentation argument, not a image-classification one"),
        (dict(args={"model_name_or_path": None}), r"args\.model_name_or_path is null"),
        (dict(args={"prompt_mode": "deep"}), r"args\.gated = true with prompt_mode 'deep'"),
        (dict(args={"data_dir": None}), r"no data: set args\.data_dir"),
        (dict(args={"train_dir": "images"}), r"args sets data_dir and train_dir: keep one data source"),
        (dict(args={"data_layout": "imagenet"}), r"args\.data_layout = \"imagenet\" is out of range: use 'vtab1k'"),
        (dict(args={"warmup_epochs": 200}), r"warmup_epochs is larger than args\.num_train_epochs"),
        (dict(task_type="detection"), r"task_type = 'detection' is invalid"),
        (dict(paper={"reported_top1": 170}), r"paper\.reported_top1 = 170 is out of range"),
        (dict(args={"learning_rate": float("nan")}), r"args\.learning_rate = NaN is not a finite number"),
        (dict(backbone={"checkpoint": "x"}), r"backbone\.prepare must be a non-empty string"),
    ],
)
def test_loader_errors_name_file_field_and_fix(write, change, message):
    path = write(**change)
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(path) in str(error.value)


def test_loader_reports_every_problem_and_bad_json(write, tmp_path):
    path = write(args={"learning_rate": 0, "momentum": 1.5}, drop=("num_labels",))
    with pytest.raises(ValueError) as error:
        load_recipe(path)
    assert all(field in str(error.value) for field in ("learning_rate", "momentum", "num_labels"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"task_type": "image-classification",\n "args": {,}}')
    with pytest.raises(ValueError, match=r"broken.json is not valid JSON: .* line 2"):
        load_recipe(broken)
    with pytest.raises(ValueError, match="Cannot read recipe"):
        load_recipe(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"load_recipe\(task_type='segmentation'\) is invalid"):
        load_recipe(write(), task_type="segmentation")


def test_list_recipes_directory(tmp_path):
    (tmp_path / "mine.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    assert list_recipes(tmp_path) == [tmp_path / "mine.json"]
    with pytest.raises(FileNotFoundError, match="hub_configs"):
        list_recipes(Path(tmp_path / "nowhere"))


def _script(name: str):
    path = RECIPES_DIR.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "script_name, task_type",
    [("train_image_classification", "image-classification"), ("train_semantic_segmentation", "semantic-segmentation")],
)
def test_recipes_load_into_the_training_script_arguments(script_name, task_type):
    script = _script(script_name)
    for path in list_recipes():
        recipe = json.loads(path.read_text())
        if recipe["task_type"] != task_type:
            with pytest.raises(ValueError, match=f"but this script trains '{task_type}'"):
                script.parse_args(["--config", str(path)])
            continue
        for stage in ("final", "tune") if "tune_args" in recipe else ("final",):
            args = vars(script.parse_args(["--config", str(path), "--recipe_stage", stage]))
            assert {k: args[k] for k in recipe["args"]} == load_recipe(path, stage=stage), path.name
    example = "mae-fgvc-cub.json" if task_type == "image-classification" else "mae-ade20k.json"
    overridden = script.parse_args(["--config", str(RECIPES_DIR / example), "--learning_rate", "0.25"])
    assert overridden.learning_rate == 0.25 and overridden.num_prompt_tokens == 100


def _stop_message(script, path, tmp_path, monkeypatch):
    """Run the script's main on a recipe from an empty working directory; return the RunStopped message. The stop
    must come before the Accelerator starts (and so before any model or data is looked up)."""
    from gated_vpt.training.run import RunStopped

    def started(*args, **kwargs):
        raise AssertionError(f"{path.name}: the Accelerator started before the missing backbone stopped the run")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(script, "start_accelerator", started)
    with pytest.raises(RunStopped) as stop:
        script.main(["--config", str(path)])
    return str(stop.value)


@pytest.mark.parametrize(
    "script_name, task_type",
    [("train_image_classification", "image-classification"), ("train_semantic_segmentation", "semantic-segmentation")],
)
def test_every_recipe_without_its_backbone_stops_at_once_saying_what_to_prepare(script_name, task_type, tmp_path, monkeypatch):
    """No Hub lookup, no traceback: the recipe's checkpoint and its one prepare command, before the Accelerator."""
    script = _script(script_name)
    paths = [p for p in list_recipes() if json.loads(p.read_text())["task_type"] == task_type]
    assert paths
    for path in paths:
        backbone = read(path.name)["backbone"]
        message = _stop_message(script, path, tmp_path, monkeypatch)
        folder = load_recipe(path)["model_name_or_path"]
        assert f"The backbone folder {folder} does not exist" in message, path.name
        assert backbone["checkpoint"] in message and backbone["prepare"] in message, path.name
        assert "protocol ... -- --model_name_or_path" in message, path.name  # the protocol passes it on after --
        assert not (tmp_path / "outputs").exists()


def test_an_unprepared_backbone_ends_the_script_with_status_1_and_no_traceback(tmp_path):
    script = RECIPES_DIR.parent / "examples" / "train_image_classification.py"
    process = subprocess.run(
        [sys.executable, str(script), "--config", str(RECIPES_DIR / "mocov3-vtab-dtd.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(RECIPES_DIR.parent), "HF_HUB_OFFLINE": "1"},
    )
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert "error: The backbone folder backbones/mocov3-vit-b16-linear does not exist" in process.stderr
    assert "gated-vpt convert --model_type mocov3 --trust_checkpoint --drop_head linear-vit-b-300ep.pth.tar" in process.stderr
