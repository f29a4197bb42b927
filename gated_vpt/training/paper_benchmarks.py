"""The paper's classification benchmarks as data: the VTAB-1k and FGVC tasks (recipe slug, name, class count,
folder name in the shared data layouts, VTAB group), the adapter settings of each method, and the numbers the paper
reports (its Tables 1-3). ``hub_configs/generate_recipes.py`` writes the recipes from these
tables and ``gated_vpt.training.protocol`` puts the paper's numbers next to a protocol run's.

Example:

```py
>>> [t.slug for t in VTAB1K_TASKS if t.group == "Specialized"]
['camelyon', 'eurosat', 'resisc45', 'retinopathy']
>>> PAPER_VTAB1K["mae"]["gated"]
(47.61, 76.86, 36.8, 49.22)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

BACKBONE_NAMES = ("mae", "mocov3")
METHODS = ("gated", "vpt-shallow", "vpt-deep")
VTAB_GROUPS = ("Natural", "Specialized", "Structured")
DEEP_PROMPTS_PER_BLOCK = 10


@dataclass(frozen=True)
class BenchmarkTask:
    """One task: ``slug`` names its recipes (``<backbone>-<benchmark>-<slug>.json``), ``folder`` its data folder in
    the shared layout (VTAB-1k: the widely shared archive's folder names), ``group`` its VTAB group."""

    slug: str
    title: str
    classes: int
    folder: str
    group: Optional[str] = None


# VTAB-1k in its usual order (7 Natural, 4 Specialized, 8 Structured).
VTAB1K_TASKS = (
    BenchmarkTask("caltech101", "Caltech101", 102, "caltech101", "Natural"),
    BenchmarkTask("cifar100", "CIFAR-100", 100, "cifar", "Natural"),
    BenchmarkTask("dtd", "DTD", 47, "dtd", "Natural"),
    BenchmarkTask("flowers102", "Flowers102", 102, "oxford_flowers102", "Natural"),
    BenchmarkTask("pets", "Oxford-IIIT Pets", 37, "oxford_iiit_pet", "Natural"),
    BenchmarkTask("svhn", "SVHN", 10, "svhn", "Natural"),
    BenchmarkTask("sun397", "SUN397", 397, "sun397", "Natural"),
    BenchmarkTask("camelyon", "Patch Camelyon", 2, "patch_camelyon", "Specialized"),
    BenchmarkTask("eurosat", "EuroSAT", 10, "eurosat", "Specialized"),
    BenchmarkTask("resisc45", "Resisc45", 45, "resisc45", "Specialized"),
    BenchmarkTask("retinopathy", "Diabetic Retinopathy", 5, "diabetic_retinopathy", "Specialized"),
    BenchmarkTask("clevr-count", "Clevr/count", 8, "clevr_count", "Structured"),
    BenchmarkTask("clevr-dist", "Clevr/distance", 6, "clevr_dist", "Structured"),
    BenchmarkTask("dmlab", "DMLab", 6, "dmlab", "Structured"),
    BenchmarkTask("kitti-dist", "KITTI/distance", 4, "kitti", "Structured"),
    BenchmarkTask("dsprites-loc", "dSprites/location", 16, "dsprites_loc", "Structured"),
    BenchmarkTask("dsprites-ori", "dSprites/orientation", 16, "dsprites_ori", "Structured"),
    BenchmarkTask("smallnorb-azim", "SmallNORB/azimuth", 18, "smallnorb_azi", "Structured"),
    BenchmarkTask("smallnorb-elev", "SmallNORB/elevation", 9, "smallnorb_ele", "Structured"),
)
FGVC_TASKS = (
    BenchmarkTask("cub", "CUB-200-2011", 200, "cub"),
    BenchmarkTask("flowers", "Oxford Flowers", 102, "flowers"),
    BenchmarkTask("cars", "Stanford Cars", 196, "cars"),
    BenchmarkTask("dogs", "Stanford Dogs", 120, "dogs"),
    BenchmarkTask("nabirds", "NABirds", 555, "nabirds"),
)
BENCHMARKS = {"vtab1k": VTAB1K_TASKS, "fgvc": FGVC_TASKS}
# Recipe file names use these benchmark names: <backbone>-<RECIPE_FAMILY[benchmark]>-<slug>.json
RECIPE_FAMILY = {"vtab1k": "vtab", "fgvc": "fgvc"}

# Paper Tables 1-3 (ViT-B/16, top-1 %). FGVC: one number per task in FGVC_TASKS' order. VTAB-1k: the group means
# (Natural, Specialized, Structured) and the mean over the 19 tasks.
PAPER_FGVC = {
    "mae": {
        "vpt-shallow": (42.15, 69.15, 43.38, 77.07, 57.43),
        "vpt-deep": (68.33, 80.05, 67.67, 78.83, 65.22),
        "gated": (70.56, 78.55, 71.70, 78.90, 67.26),
    },
    "mocov3": {
        "vpt-shallow": (79.05, 90.47, 71.91, 81.97, 72.92),
        "vpt-deep": (82.67, 94.41, 79.18, 83.33, 75.99),
        "gated": (82.86, 93.71, 79.02, 83.37, 76.02),
    },
}
PAPER_FGVC_MEAN = {
    "mae": {"vpt-shallow": 57.84, "vpt-deep": 72.02, "gated": 73.39},
    "mocov3": {"vpt-shallow": 79.26, "vpt-deep": 83.12, "gated": 83.00},
}
PAPER_VTAB1K = {
    "mae": {
        "vpt-shallow": (39.96, 69.65, 27.50, 40.96),
        "vpt-deep": (36.02, 60.61, 26.57, 37.22),
        "gated": (47.61, 76.86, 36.80, 49.22),
    },
    "mocov3": {
        "vpt-shallow": (67.34, 82.26, 37.55, 57.94),
        "vpt-deep": (70.27, 83.04, 42.38, 61.22),
        "gated": (74.84, 83.38, 49.10, 65.80),
    },
}


def method_args(method: str, prompts: int, gate_init: float) -> dict[str, Any]:
    """The adapter arguments (training-script names) of ``method``: the paper's gated prompts with ``prompts``
    tokens and ``gate_init``, VPT-shallow with the same number of prompts, or VPT-deep with
    ``DEEP_PROMPTS_PER_BLOCK`` fresh prompts before every block (the paper's baselines have no gates and no
    temperature)."""
    if method == "gated":
        return {"num_prompt_tokens": prompts, "prompt_mode": "shallow", "gated": True, "gate_init": gate_init,
                "learnable_temperature": True}
    if method == "vpt-shallow":
        return {"num_prompt_tokens": prompts, "prompt_mode": "shallow", "gated": False, "learnable_temperature": False}
    if method == "vpt-deep":
        return {"num_prompt_tokens": DEEP_PROMPTS_PER_BLOCK, "prompt_mode": "deep", "gated": False,
                "learnable_temperature": False}
    raise ValueError(f"Unknown method {method!r}: use one of {list(METHODS)}.")
