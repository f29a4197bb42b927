"""Tiny random ViT-family models shared by the tests.

``make_backbone(name)`` builds one of ``BACKBONE_NAMES`` (image 16, patch 4, hidden 32, 4 blocks) with every
weight perturbed away from its initialisation, so zero-initialised tokens and unit layer scales cannot hide a bug.
``randomize_adapter_`` does the same for an adapter's prompts, gate logits, temperatures and saved classifier.
Test modules import these by name (``from conftest import make_backbone``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import pytest
import torch
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPForImageClassification,
    CLIPVisionConfig,
    CLIPVisionModel,
    DINOv3ViTConfig,
    DINOv3ViTModel,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    IJepaConfig,
    IJepaForImageClassification,
    IJepaModel,
    PreTrainedModel,
    SiglipConfig,
    SiglipForImageClassification,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTForImageClassification,
    ViTMAEConfig,
    ViTMAEModel,
    ViTMSNConfig,
    ViTMSNModel,
    ViTModel,
)
from transformers.utils import logging as hf_logging

import gated_vpt  # noqa: F401  (registers the method with peft)

TINY = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=4, num_attention_heads=2)
IMAGE_SHAPE = (3, 16, 16)
NUM_LABELS = 3

_TINY_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _vision_in(composite_config_cls):
    """A composite (vision + text) config class's constructor taking the vision settings as keywords; ``num_labels``
    goes to the composite config."""
    def build(num_labels: int = NUM_LABELS, **vision):
        return composite_config_cls(vision_config=vision, text_config=_TINY_TEXT, num_labels=num_labels)
    return build


# name -> (model class, config class, extra config); "mae_clf" is MAE weights loaded into ViTForImageClassification.
_FAMILIES = {
    "vit": (ViTModel, ViTConfig, dict(intermediate_size=64)),
    "vit_clf": (ViTForImageClassification, ViTConfig, dict(intermediate_size=64, num_labels=NUM_LABELS)),
    "vit_mae": (ViTMAEModel, ViTMAEConfig, dict(intermediate_size=64, mask_ratio=0.0)),
    "mae_clf": (ViTMAEModel, ViTMAEConfig, dict(intermediate_size=64, mask_ratio=0.0)),
    "deit": (DeiTModel, DeiTConfig, dict(intermediate_size=64)),
    "deit_clf": (DeiTForImageClassification, DeiTConfig, dict(intermediate_size=64, num_labels=NUM_LABELS)),
    "dinov2": (Dinov2Model, Dinov2Config, dict(mlp_ratio=2)),
    "dinov2_reg": (Dinov2WithRegistersModel, Dinov2WithRegistersConfig, dict(mlp_ratio=2, num_register_tokens=2)),
    "vit_msn": (ViTMSNModel, ViTMSNConfig, dict(intermediate_size=64)),
    "clip": (CLIPVisionModel, CLIPVisionConfig, dict(intermediate_size=64)),
    "clip_clf": (CLIPForImageClassification, _vision_in(CLIPConfig), dict(intermediate_size=64)),
    "siglip": (SiglipVisionModel, SiglipVisionConfig, dict(intermediate_size=64)),
    "siglip_clf": (SiglipForImageClassification, _vision_in(SiglipConfig), dict(intermediate_size=64)),
    "ijepa": (IJepaModel, IJepaConfig, dict(intermediate_size=64)),
    "ijepa_clf": (IJepaForImageClassification, IJepaConfig, dict(intermediate_size=64, num_labels=NUM_LABELS)),
    "dinov3": (DINOv3ViTModel, DINOv3ViTConfig, dict(intermediate_size=64, num_register_tokens=2)),
}
BACKBONE_NAMES = tuple(_FAMILIES)


def make_backbone(name: str = "vit_clf", seed: int = 0, **config: object) -> PreTrainedModel:
    """A tiny random model of family ``name`` in eval mode; ``config`` overrides the config (e.g. num_hidden_layers).

    ``attn_implementation`` may be passed among ``config``.
    """
    model_cls, config_cls, extra = _FAMILIES[name]
    attn = config.pop("attn_implementation", None)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY, **extra, **config}))
    if name == "mae_clf":
        model = _mae_weights_in_vit_classifier(model)
    if attn is not None:
        model.set_attn_implementation(attn)
    perturb_(model, seed)
    return model.eval()


# timm's VisionTransformer in the configurations people use (tiny: image 16, patch 4, width 32, 4 blocks, 2 heads).
# name -> (how it is built: "timm" directly, or transformers' "wrapper_model" / "wrapper_clf"; timm's keywords).
TIMM_CONFIGS = {
    "cls_token": ("timm", {}),
    "avg_no_cls": ("timm", dict(class_token=False, global_pool="avg")),  # fc_norm follows avg pooling
    "reg_tokens": ("timm", dict(reg_tokens=2, no_embed_class=True)),  # the *_reg4_* models
    "mae_finetune": ("timm", dict(global_pool="avg", fc_norm=True)),  # MAE's fine-tuning head: CLS kept, mean read
    "mae_tag": ("timm", dict(tag="mae")),  # MAE's pretraining weights: token pool, paper's mean head by default
    "layer_scale": ("timm", dict(init_values=0.1, no_embed_class=True)),  # DeiT III
    "qk_norm": ("timm", dict(qk_norm=True)),
    "eager_attention": ("timm", dict(fused_attn=False)),
    "dynamic_img_size": ("timm", dict(dynamic_img_size=True)),
    "map_pool": ("timm", dict(global_pool="map")),
    "bare": ("timm", dict(num_classes=0)),
    "wrapper_model": ("wrapper_model", {}),
    "wrapper_clf": ("wrapper_clf", {}),
}
TIMM_TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0)


def make_timm(name: str = "cls_token", seed: int = 0, **overrides: object) -> nn.Module:
    """A tiny random timm VisionTransformer of ``TIMM_CONFIGS[name]`` (or transformers' wrapper around one) in eval
    mode, every weight perturbed; ``overrides`` go to timm. Needs timm (tests that use it skip without)."""
    timm = pytest.importorskip("timm")
    kind, options = TIMM_CONFIGS[name]
    options = {**TIMM_TINY, **options, **overrides}
    fused, tag = options.pop("fused_attn", True), options.pop("tag", None)
    torch.manual_seed(seed)
    if kind == "timm":
        architecture = f"vit_base_patch16_224.{tag}" if tag else "vit_tiny_patch16_224"  # made tiny by TIMM_TINY
        model = timm.create_model(architecture, pretrained=False, **{"num_classes": NUM_LABELS, **options})
    else:
        from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperModel

        config = TimmWrapperConfig(architecture="vit_tiny_patch16_224", model_args=options, num_labels=NUM_LABELS)
        model = (TimmWrapperModel if kind == "wrapper_model" else TimmWrapperForImageClassification)(config)
    for block in getattr(model, "timm_model", model).blocks:
        block.attn.fused_attn = fused
    perturb_(model, seed)
    return model.eval()


def _mae_weights_in_vit_classifier(mae: ViTMAEModel) -> ViTForImageClassification:
    """What a user gets from ``ViTForImageClassification.from_pretrained("facebook/vit-mae-base")``."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mae.save_pretrained(folder)
            model = ViTForImageClassification.from_pretrained(folder, num_labels=NUM_LABELS)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    assert model.config.model_type == "vit_mae"
    return model


def perturb_(module: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Add ``scale``-sized noise to every parameter (in place)."""
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return module


# Temperatures outside [0.01, 10] on purpose: the forward pass must clamp them.
RANDOM_TEMPERATURES = (0.5, 2.5, 25.0, 0.004, 1.3)


def randomize_adapter_(model: nn.Module, adapter_name: str = "default", seed: int = 0) -> nn.Module:
    """Give adapter ``adapter_name`` of a PeftModel random prompts, gate logits in [-3, 3], temperatures from
    ``RANDOM_TEMPERATURES`` (block by block) and a perturbed saved classifier."""
    generator = torch.Generator().manual_seed(2000 + seed)
    temperatures = iter(RANDOM_TEMPERATURES * 4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith(f".{adapter_name}") and f".modules_to_save.{adapter_name}." not in name:
                continue
            if ".gvpt_prompt." in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
            elif ".gvpt_gate." in name:
                parameter.fill_(6 * torch.rand((), generator=generator).item() - 3)
            elif ".gvpt_temperature." in name:
                parameter.fill_(next(temperatures))
            elif ".modules_to_save." in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


def pixels_as_training_evaluates(paths: Sequence[Path], size: int, mean: Sequence[float],
                                 std: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """Images preprocessed as the training scripts evaluate them (Pillow's bilinear resize to ``size`` x ``size``,
    then ``mean``/``std``): what ``gated-vpt predict`` must match whichever image-processor backend transformers
    has (its torchvision backend resizes differently)."""
    from PIL import Image

    from gated_vpt.training.data import ImageTransform

    transform = ImageTransform("vtab", size, tuple(mean), tuple(std))
    return torch.stack([transform(Image.open(path)) for path in paths])


def main_output(output: object) -> torch.Tensor:
    """``logits`` of a classifier's output, ``last_hidden_state`` of a bare model's."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.last_hidden_state


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def pixels() -> torch.Tensor:
    return images()


@pytest.fixture(autouse=True)
def fast_path_restored():
    """Every test starts with gated_vpt's fast path on (the default), whatever an earlier test switched."""
    gated_vpt.set_fast_path(True)
    yield


@pytest.fixture
def plain_path():
    """Run the test on the plain path (every wrapped block's own forward), e.g. to observe the blocks with hooks:
    the fast path computes blocks from their parts and never calls them."""
    with gated_vpt.fast_path(False):
        yield


@pytest.fixture
def single_thread():
    """One intra-op thread: tiny models gain nothing from more, and lose a lot when the cores are shared.
    Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the script look their module up
    spec.loader.exec_module(module)
    return module


FRESH_PROCESS = """
import json, sys
from peft import PeftConfig
try:
    PeftConfig.from_pretrained(sys.argv[1])
    without_import = "loaded"
except Exception as error:
    without_import = f"{type(error).__name__}: {error}"
import gated_vpt, gated_vpt.introspection, gated_vpt.loading
modules = sorted(sys.modules)
with_import = type(PeftConfig.from_pretrained(sys.argv[1])).__name__
import gated_vpt.training.classification, gated_vpt.training.loop, gated_vpt.training.run
print(json.dumps({"without_import": without_import, "modules_after_core_import": modules, "with_import": with_import,
                  "modules_after_training_import": sorted(sys.modules)}))
"""


@pytest.fixture(scope="session")
def fresh_process(tmp_path_factory) -> dict:
    """What a new Python process sees, for the tests that need one (each start costs seconds, so one serves all):
    peft alone loading a saved gated_vpt config (``without_import``: the error), the modules loaded once the core
    (``gated_vpt``, its introspection and loading) is imported, the config's class after that import, and the modules
    loaded once the classification training machinery is imported too."""
    folder = tmp_path_factory.mktemp("fresh_process")
    gated_vpt.GatedPromptConfig().save_pretrained(folder)
    process = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(folder)], capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.splitlines()[-1])


def modules_loaded_by_command(tmp_path: Path, *argvs: list[str], env: dict | None = None) -> list[set[str]]:
    """Run the installed command's entry point (a script named gated-vpt, as pip writes it) on each argv in turn in
    one process (each must succeed), and return the top-level modules imported by then, after each."""
    script = tmp_path / "gated-vpt"
    script.write_text(
        "import contextlib, io, json, sys\n"
        "from gated_vpt.cli import main\n"
        "for argv in json.loads(sys.argv.pop()):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        assert main(argv) == 0\n"
        "    print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    process = subprocess.run([sys.executable, str(script), json.dumps(argvs)], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=120)
    assert process.returncode == 0, process.stderr[-2000:]
    return [set(json.loads(line)) for line in process.stdout.splitlines()[-len(argvs):]]


def write_vtab1k_task(
    folder: Path, classes: Sequence[int], sizes: tuple[int, int, int] = (24, 8, 16), seed: int = 0, archive: bool = False
) -> dict:
    """A VTAB-1k-layout task folder from scikit-learn's digits of ``classes`` (label = position in ``classes``):
    8x8 grayscale PNGs in ``folder/images`` and the four split lists, ``sizes`` = (train800, val200, test) images.
    ``archive``: as the common vtab-1k archive stores a task, every split (train800val200 too, as its own copies)
    written as JPEG (quality 75) under ``images/<split>/<index>.jpg``. Returns {split name: [(relative path, label), ...]}."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    rows = rng.permutation(np.flatnonzero(np.isin(digits.target, list(classes))))
    chosen, start = {}, 0
    for name, count in zip(("train800", "val200", "test"), sizes):
        chosen[name], start = rows[start : start + count], start + count
    chosen["train800val200"] = np.concatenate([chosen["train800"], chosen["val200"]])
    lists = {}
    for name in ("train800", "val200", "test", "train800val200"):
        entries = []
        for index, row in enumerate(chosen[name]):
            label = list(classes).index(int(digits.target[row]))
            if not archive and name == "train800val200":
                continue
            relative = f"images/{name}/{index:06d}.jpg" if archive else f"images/{name}_{row}.png"
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            pixels = Image.fromarray(np.round(digits.images[row] * 255 / 16).astype(np.uint8), mode="L")
            pixels.save(folder / relative, **({"quality": 75} if archive else {}))
            entries.append((relative, label))
        lists[name] = entries
    if not archive:
        lists["train800val200"] = lists["train800"] + lists["val200"]
    for name, entries in lists.items():
        (folder / f"{name}.txt").write_text("".join(f"{path} {label}\n" for path, label in entries))
    return lists
