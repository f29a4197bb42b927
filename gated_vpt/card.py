"""Model cards for gated_vpt adapters: the README.md the Hub shows on an adapter's page.

``write_model_card`` replaces whatever README.md is in the adapter directory (peft's ``save_pretrained`` writes
a generic template there) with one card: Hub metadata that lists the adapter under its base model, the method
and citation, a config summary, metrics, the per-block gates, a usage snippet and the license.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import peft
import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open
from torch import nn

from .backbones import CONVERSION_RECORD
from .base_models import BASE_CLASSES, DEFAULT_BASE_CLASS
from .config import GatedPromptConfig
from .introspection import gate_report
from .paths import is_local_path
from .layout import CLASSIFIER_WEIGHT
from .recipes import CLASSIFICATION
from .tasks import INSTALL, LOCAL_NOTE, TASKS, Task, register_task, registered_tasks
from .version import __version__

CARD_TAGS = ("gated-vpt", "visual-prompt-tuning", "peft", "vision")
PAPER_URL = "https://arxiv.org/abs/2306.05067"
CITATION = """@inproceedings{yoo2023improving,
  title     = {Improving Visual Prompt Tuning for Self-supervised Vision Transformers},
  author    = {Yoo, Seungryong and Kim, Eunji and Jung, Dahuin and Lee, Jungbeom and Yoon, Sungroh},
  booktitle = {Proceedings of the 40th International Conference on Machine Learning (ICML)},
  series    = {Proceedings of Machine Learning Research},
  volume    = {202},
  year      = {2023}
}"""
# The bare vision towers' adapters are image feature extractors (pooler_output) for a head of one's own.
FEATURE_EXTRACTORS = ("clip_vision_model", "siglip_vision_model", "dinov3_vit")
NON_COMMERCIAL_BASES = ("facebook/vit-mae-",)  # and local folders converted from the official MAE weights
_ADAPTER_LINE = re.compile(r'^adapter_id = "(?P<id>[^"]*)"$', re.MULTILINE)
_NOT_METRICS = ("loss", "runtime", "per_second", "epoch", "step")
# Paths inside a checkout of this repository (e.g. the embedded assets/mae-tiny) are named relative to it.
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def write_model_card(
    output_dir: Union[str, Path],
    model: Optional[nn.Module] = None,
    config: Optional[Union[GatedPromptConfig, Mapping[str, Any]]] = None,
    metrics: Optional[Mapping[str, float]] = None,
    gates_image: Optional[Union[str, Path]] = None,
    base_model: Optional[str] = None,
    dataset: Optional[str] = None,
    *,
    repo_id: Optional[str] = None,
    adapter_name: str = "default",
    license: str = "apache-2.0",
    task: Optional[str] = None,
) -> Path:
    """Write ``output_dir/README.md`` for the adapter saved there (call it after ``model.save_pretrained``).

    The adapter's config comes from ``config``, else ``model.peft_config[adapter_name]``, else the directory's
    ``adapter_config.json``. The gate table comes from ``model`` or the saved weights; ``gates_image`` (a PNG) is
    copied beside the card and embedded. ``repo_id`` is the id shown in the usage snippet (default: the
    directory; ``gated_vpt.hub.push_adapter`` puts the repo id in when it uploads). When ``model`` is given, the
    card's tags are also added to its base model's ``model_tags``, so a later ``save_pretrained`` (which rewrites
    the card's tags) keeps them.

    ``task`` (``"image-classification"`` or ``"semantic-segmentation"``: the tasks registered in ``gated_vpt.tasks``)
    sets the pipeline tag, the model-index task and the usage snippet (a
    segmentation adapter loads through ``gated_vpt.segmentation.load_segmentation_adapter``); by default it is read
    off the adapter: the registered task whose heads its ``modules_to_save`` hold, else classification.

    Example:

    ```py
    >>> import gated_vpt
    >>> from peft import get_peft_model
    >>> from transformers import ViTConfig, ViTForImageClassification
    >>> base = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
    ...     num_attention_heads=2, intermediate_size=64, num_labels=3))
    >>> model = get_peft_model(base, gated_vpt.GatedPromptConfig())  # ... then train it
    >>> model.save_pretrained("out/cub-gated")
    >>> write_model_card("out/cub-gated", model, metrics={"accuracy": 0.812}, dataset="cub_200_2011")
    PosixPath('out/cub-gated/README.md')
    ```
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = _adapter_config(output_dir, model, config, adapter_name)
    task = _task(task, settings)
    pipeline_tag = _pipeline_tag(task, settings)
    tags = (*CARD_TAGS, task, pipeline_tag)
    base_model = base_model or settings.get("base_model_name_or_path") or _name_or_path(model)
    hub_base = base_model if _is_hub_id(base_model) else None
    local_base = bool(base_model) and hub_base is None
    non_commercial = _is_official_mae(base_model)
    base_model = portable_name(base_model)
    metrics = {name: float(value) for name, value in (metrics or {}).items() if isinstance(value, (int, float))}
    image = _place_image(Path(gates_image), output_dir) if gates_image is not None else None
    if model is not None and hasattr(model.get_base_model(), "add_model_tags"):
        model.get_base_model().add_model_tags(list(tags))

    data = ModelCardData(
        library_name="peft",
        base_model=hub_base,
        license=license,
        pipeline_tag=pipeline_tag,
        tags=sorted({*tags, "transformers", *([f"base_model:adapter:{hub_base}"] if hub_base else [])}),
        datasets=[dataset] if _is_hub_id(dataset) else None,
        metrics=sorted({_metric_id(name) for name in metrics if _is_quality_metric(name)}) or None,
        model_name=(repo_id or _run_name(output_dir)).split("/")[-1],
        eval_results=_eval_results(metrics, dataset, task),
    )
    adapter_id = repo_id or portable_name(str(output_dir))
    usage = TASKS[task].usage(adapter_id, base_model, settings, local_base, _num_labels(model, output_dir))
    sections = [
        _title(base_model, local_base, dataset, task),
        _config_section(settings),
        _metrics_section(metrics, dataset),
        _gates_section(model, output_dir, settings, adapter_name, image),
        usage,
        _license_section(license, base_model, non_commercial),
        f"## Citation\n\n```bibtex\n{CITATION}\n```",
        _versions_section(),
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n")
    path = output_dir / "README.md"
    card.save(path)
    return path


def set_adapter_id(card_text: str, adapter_id: str) -> str:
    """Point a gated_vpt card's usage section at ``adapter_id`` (e.g. the Hub repo it is being pushed to)."""
    match = _ADAPTER_LINE.search(card_text)
    if match is None:
        return card_text
    start = card_text.rindex("## Usage", 0, match.start())
    end = card_text.find("\n## ", match.end())
    end = len(card_text) if end == -1 else end
    usage = re.sub(rf'(?<=[\s"]){re.escape(match.group("id"))}(?=[\s"])', adapter_id, card_text[start:end])
    return card_text[:start] + usage + card_text[end:]


def is_gated_vpt_card(card_text: str) -> bool:
    return _ADAPTER_LINE.search(card_text) is not None


def _task(task: Optional[str], settings: dict) -> str:
    if task is None:
        claimed = [name for name, known in registered_tasks().items() if known.claims(settings.get("modules_to_save"))]
        return claimed[0] if claimed else CLASSIFICATION
    if task not in registered_tasks():
        raise ValueError(f"task={task!r} is not supported: use one of {list(TASKS)} (or leave it unset).")
    return task


def _pipeline_tag(task: str, settings: dict) -> str:
    if task == CLASSIFICATION and (settings.get("backbone") or {}).get("model_type") in FEATURE_EXTRACTORS:
        return "image-feature-extraction"
    return TASKS[task].pipeline_tag


def _adapter_config(output_dir: Path, model: Optional[nn.Module], config: Any, adapter_name: str) -> dict:
    if config is None and model is not None:
        config = model.peft_config[adapter_name]
    if config is None:
        path = output_dir / "adapter_config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"No adapter config to describe: pass model= or config=, or call model.save_pretrained({str(output_dir)!r}) "
                "before write_model_card."
            )
        return json.loads(path.read_text())
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _name_or_path(model: Optional[nn.Module]) -> Optional[str]:
    if model is None:
        return None
    return getattr(model.get_base_model(), "name_or_path", None) or None


def _is_hub_id(name: Optional[str]) -> bool:
    return bool(name) and not is_local_path(name) and not Path(name).exists()


def portable_name(name: Optional[str]) -> Optional[str]:
    """A Hub id as it is; a local path without the machine's absolute part: relative to a checkout of this repository
    or to the working directory when inside one, else the folder's name."""
    if not name or _is_hub_id(name) or not Path(name).is_absolute():
        return name
    path = Path(name).resolve()
    for root in (REPOSITORY_ROOT, Path.cwd().resolve()):
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name


def _run_name(output_dir: Path) -> str:
    """The adapter's name: its folder's, or the run's when the folder is a training run's ``adapter/``."""
    path = output_dir.resolve()
    return path.parent.name if path.name == "adapter" else path.name


def _place_image(image: Path, output_dir: Path) -> Path:
    if not image.is_file():
        raise FileNotFoundError(f"gates_image={str(image)!r} does not exist; save the gate plot first or leave it out.")
    target = output_dir / image.name
    if image.resolve() != target.resolve():
        shutil.copyfile(image, target)
    return target


def _metric_id(name: str) -> str:
    return re.sub(r"^(eval|test|val|validation)_", "", name)


def _is_quality_metric(name: str) -> bool:
    return not any(word in name for word in _NOT_METRICS)


def _eval_results(metrics: dict[str, float], dataset: Optional[str], task: str) -> Optional[list[EvalResult]]:
    if not dataset:
        return None
    task_type, task_name = TASKS[task].pipeline_tag, TASKS[task].title
    results = [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=_metric_id(name),
            metric_name=name,
            metric_value=value,
        )
        for name, value in metrics.items()
        if _is_quality_metric(name)
    ]
    return results or None


def _num_labels(model: Optional[nn.Module], output_dir: Path) -> Optional[int]:
    """The classifier's output size, from the model or the saved weights (None without a saved classifier)."""
    if model is not None:
        base = model.get_base_model()
        classifier = getattr(base, "classifier", None) or getattr(getattr(base, "timm_model", base), "head", None)
        return getattr(classifier, "out_features", None)
    weights = output_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(str(weights), framework="pt") as handle:
        keys = [key for key in handle.keys() if CLASSIFIER_WEIGHT.search(key)]
        return handle.get_slice(keys[0]).get_shape()[0] if keys else None


def _title(base_model: Optional[str], local_base: bool, dataset: Optional[str], task: str) -> str:
    base = f" for `{base_model}`" + (" (a local model folder, not on the Hub)" if local_base else "") if base_model else ""
    data = f", trained on `{dataset}`" if dataset else ""
    return (
        f"# Gated visual prompt tuning adapter{base}\n\n"
        f"A [gated visual prompt tuning]({PAPER_URL}) adapter (Yoo et al., ICML 2023){data}, saved as a "
        "[peft](https://github.com/huggingface/peft) adapter by the `gated-vpt` package. Learnable prompt tokens "
        "pass through the frozen ViT; a learned sigmoid gate per block decides how much that block may change them, "
        "and each block's attention has a learnable temperature. The backbone stays frozen: only the prompts, gates, "
        f"temperatures and {TASKS[task].trained} are stored here."
    )


def _config_section(settings: dict) -> str:
    backbone = settings.get("backbone") or {}
    rows = [
        ("Prompt tokens", settings.get("num_prompt_tokens")),
        ("Prompt mode", settings.get("prompt_mode")),
        ("First prompted block", settings.get("prompt_start_block")),
        ("Gated", settings.get("gated")),
        ("Gate init (logits start at -gate_init)", settings.get("gate_init")),
        ("Learnable temperature", settings.get("learnable_temperature")),
        ("Prompt dropout", settings.get("prompt_dropout")),
        ("Head pooling", settings.get("head_pooling")),
        ("Trained modules besides prompts", ", ".join(settings.get("modules_to_save") or []) or "none"),
        ("Backbone", ", ".join(f"{k}={v}" for k, v in sorted(backbone.items())) or "unknown"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"## Configuration\n\n| Setting | Value |\n|---|---|\n{table}"


def _metrics_section(metrics: dict[str, float], dataset: Optional[str]) -> str:
    if not metrics:
        return ""
    where = f" on `{dataset}`" if dataset else ""
    rows = "\n".join(f"| {name} | {value:.4g} |" for name, value in metrics.items())
    return f"## Results\n\nMetrics reported by the training run{where}:\n\n| Metric | Value |\n|---|---:|\n{rows}"


def _gates_section(model: Optional[nn.Module], output_dir: Path, settings: dict, adapter_name: str, image: Optional[Path]) -> str:
    if not (settings.get("gated") or settings.get("learnable_temperature")):
        return ""
    if model is not None:
        table = gate_report(model, adapter_name).format_table()
    elif (output_dir / "adapter_model.safetensors").is_file():
        table = gate_report(output_dir).format_table()
    else:
        table = ""
    picture = f"![Per-block gates and selection ratio]({image.name})\n\n" if image is not None else ""
    return (
        "## Learned gates\n\nEach block's gate `g = sigmoid(gamma)` is the share of that block's change to the prompts "
        "that is kept; the selection ratio is how much of the prompts reaching the last block each block's output "
        f"makes up (the paper's Fig. 4). `gated-vpt info` prints the same table.\n\n{picture}{table}"
    ).rstrip()


def _usage_section(
    adapter_id: str, base_model: Optional[str], settings: dict, local_base: bool, num_labels: Optional[int]
) -> str:
    model_type = (settings.get("backbone") or {}).get("model_type")
    base_class = BASE_CLASSES.get(model_type, DEFAULT_BASE_CLASS)
    base_id = base_model or "<the base model this adapter was trained on>"
    labels = f", num_labels={num_labels}" if num_labels else ""
    return f"""## Usage

```python
import gated_vpt  # registers the gated_vpt method with peft
from peft import PeftModel

adapter_id = "{adapter_id}"
# a transformers {base_class}, sized for the adapter's classifier
base = gated_vpt.load_base_model("{base_id}"{labels}){LOCAL_NOTE if local_base else ""}
model = PeftModel.from_pretrained(base, adapter_id).eval()
# or, with file checks and clear errors: model = gated_vpt.load_adapter(base, adapter_id)
```

From the command line ({INSTALL}):

```bash
gated-vpt info {adapter_id}
gated-vpt predict {adapter_id} --base {base_id} photo.jpg
```

Several adapters can share one frozen backbone and be mixed in one batch, each image through its own adapter:
`model.load_adapter(other_id, adapter_name="other")`, then `model(pixel_values, adapter_names=["default", "other", ...])`."""


register_task(Task(CLASSIFICATION, "image-classification", "Image Classification", "the classifier head",
                   usage=_usage_section))


def _license_section(license: str, base_model: Optional[str], non_commercial: bool) -> str:
    text = (
        f"## License\n\nThe adapter weights are released under `{license}`. Using them needs the base model"
        f"{f' `{base_model}`' if base_model else ''}, whose own license applies."
    )
    if non_commercial:
        text += " The official MAE checkpoints are licensed CC-BY-NC-4.0 (non-commercial use only)."
    return text


def _is_official_mae(base_model: Optional[str]) -> bool:
    """A base made from the official MAE weights: a ``facebook/vit-mae-*`` Hub id, or a folder that
    ``gated-vpt convert --model_type mae`` wrote (the paper's MAE backbone, e.g. ``backbones/mae-vit-b16``)."""
    if not base_model:
        return False
    if base_model.startswith(NON_COMMERCIAL_BASES):
        return True
    record = Path(base_model) / CONVERSION_RECORD
    try:
        return json.loads(record.read_text()).get("model_type") == "mae"
    except (OSError, ValueError, AttributeError):
        return False


def _versions_section() -> str:

    # peft's save_pretrained appends this heading unless its own version line is already present.
    return (
        f"### Framework versions\n\n- PEFT {peft.__version__}\n- gated-vpt {__version__}\n"
        f"- Transformers {transformers.__version__}\n- PyTorch {torch.__version__}"
    )
