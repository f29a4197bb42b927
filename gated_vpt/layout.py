"""What a gated_vpt adapter holds, and the check of a saved one before it touches a model.

The tensors of an adapter follow from its config and the backbone. Per block: a prompt set where prompts enter
(and in every later block in deep mode), a gate logit for gated blocks except the last, a temperature for every
prompted block when it is learnable; plus the state of the modules named in ``modules_to_save``. A saved file is
accepted only when it holds exactly those tensors, with their shapes, a floating dtype (integer buffers such as
a BatchNorm's ``num_batches_tracked`` keep theirs) and finite values: anything else could overwrite weights of
the frozen backbone, or leave random or NaN parameters in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .backbones import Backbone
from .settings import PREFIX, GatedPromptSettings

PROMPT, GATE, TEMPERATURE = (PREFIX + name for name in ("prompt", "gate", "temperature"))
PEFT_PREFIX = "base_model.model."
# Adapter files name block N of the vision tower ``encoder.layer.N`` (as ViT checkpoints on disk do), whatever layout
# transformers uses: ``layers.N`` (ViT since 5.9), ``encoder.layers.N`` (CLIP, SigLIP), ``model.layer.N`` (DINOv3) and
# a ``vision_model.`` wrapper (the CLIP and SigLIP classification classes; CLIPVisionModel before 5.x) all fold into it,
# and so do timm's ``blocks.N``. The ``timm_model.`` of transformers' TimmWrapper classes is dropped from every key
# (blocks and saved head alike), so that one adapter file serves a timm model and its wrapper.
_BLOCK_KEY = re.compile(
    r"(^|\.)(?:vision_model\.)?(?:layers|blocks|encoder\.layers?|model\.layer)\.(\d+)\.(?=" + PREFIX + ")"
)
_TIMM_WRAPPER = re.compile(r"(^|\.)timm_model\.")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# The weight of a saved classifier in adapter files: transformers' ``classifier``, timm's ``head``.
CLASSIFIER_WEIGHT = re.compile(r"(^|\.)(classifier|head)\.weight$")
_SAVED_BLOCK_KEY = re.compile(r"^(.*?)encoder\.layer\.(\d+)\.(" + PREFIX + r"\w+)$")


@dataclass(frozen=True)
class Expected:
    """One tensor an adapter must hold: its shape, the dtype it loads into and what it is (for messages)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    what: str


def block_tensor_shapes(config: GatedPromptSettings, index: int, num_blocks: int, hidden_size: int) -> dict[str, tuple[int, ...]]:
    """The parameters block ``index`` of ``num_blocks`` holds for an adapter with ``config``, by name."""
    if index < config.prompt_start_block:
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    if index == config.prompt_start_block or config.prompt_mode == "deep":
        shapes[PROMPT] = (config.num_prompt_tokens, hidden_size)
    if config.gated and index < num_blocks - 1:
        shapes[GATE] = ()
    if config.learnable_temperature:
        shapes[TEMPERATURE] = ()
    return shapes


def saved_key(module_key: str) -> str:
    """The name a tensor has in adapter files for its name in the model: block parameters are
    ``encoder.layer.N.gvpt_*``, and a TimmWrapper's ``timm_model.`` is left out."""
    return _BLOCK_KEY.sub(r"\1encoder.layer.\2.", _TIMM_WRAPPER.sub(r"\1", module_key, count=1))


def saved_module_keys_to_model(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` (an adapter file's) with the keys of saved modules renamed from their names in files (``saved_key``)
    to their paths in ``model`` (a PeftModel), where the two differ (a TimmWrapper's head, ``timm_model.head``)."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    renames = {}
    for path, module in model.named_modules():
        if isinstance(module, AuxiliaryTrainingWrapper) and saved_key(path) != path:
            renames[saved_key(path) + "."] = path + "."
    if not renames:
        return tensors
    renamed = {}
    for key, tensor in tensors.items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        renamed[renames[prefix] + key[len(prefix):] if prefix else key] = tensor
    return renamed


def saved_modules(config: GatedPromptSettings, backbone: Backbone, model: nn.Module) -> dict[str, nn.Module]:
    """The modules ``config.modules_to_save`` names in ``model`` (peft's rule: a module whose name ends with an
    entry), unwrapped from peft's wrappers. Each entry must name exactly one module, a task head outside the
    backbone (the vision tower with its embeddings, blocks and norms): an adapter may not replace frozen weights."""
    from peft.utils.other import AuxiliaryTrainingWrapper  # a saved file is checked without peft; a model has it

    names = config.modules_to_save or []
    tower = next(key for key, module in model.named_modules() if module is backbone.encoder)
    # timm's classifier lives inside the model that is its tower: that one module is the task head, not the backbone
    head = ".".join(filter(None, (tower, backbone.classifier))) if backbone.spec.classifier_in_tower else None
    found: dict[str, nn.Module] = {}
    matches: dict[str, list[str]] = {name: [] for name in names}
    for key, module in model.named_modules(remove_duplicate=False):
        entries = [name for name in names if key.endswith(name)]
        if not key or not entries or _inside_wrapper(model, key):
            continue
        if key != head and (not tower or key == tower or key.startswith(tower + ".") or tower.startswith(key + ".")):
            _refuse_backbone_module(names, key, tower or type(model).__name__)
        for name in entries:
            matches[name].append(key)
        found[key] = module.original_module if isinstance(module, AuxiliaryTrainingWrapper) else module
    several = {name: keys for name, keys in matches.items() if len(keys) > 1}
    if several:
        name, keys = next(iter(several.items()))
        raise ValueError(
            f"GatedPromptConfig.modules_to_save={names}: {name!r} matches several modules ({', '.join(keys)}); "
            "name each head by a path that matches only it, e.g. ['classifier']."
        )
    unmatched = [name for name, keys in matches.items() if not keys]
    if unmatched:
        modules = [key for key, _ in model.named_children()]
        raise ValueError(
            f"GatedPromptConfig.modules_to_save={names}: {unmatched} matches no module of {type(model).__name__} "
            f"(its top-level modules: {modules}). Name the head to train and save, e.g. ['classifier'], or use []."
        )
    return found


def _refuse_backbone_module(names: list[str], module: str, backbone: str) -> None:
    raise ValueError(
        f"GatedPromptConfig.modules_to_save={names} names {module!r}, which is part of the backbone {backbone!r} or "
        "holds it: modules_to_save is for task heads outside the backbone (e.g. ['classifier']). The frozen backbone "
        "cannot be trained or saved with an adapter."
    )


def _inside_wrapper(model: nn.Module, key: str) -> bool:
    """Whether ``key`` lies inside a peft wrapper (its original or saved copies), not the wrapper itself."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    parts = key.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), AuxiliaryTrainingWrapper) for i in range(1, len(parts)))


def expected_tensors(config: GatedPromptSettings, backbone: Backbone, model: nn.Module) -> dict[str, Expected]:
    """Every tensor a saved adapter with ``config`` (already prepared for ``model``) must hold, by its key in the
    file."""
    expected = {}
    for index, block in enumerate(backbone.block_names):
        for name, shape in block_tensor_shapes(config, index, backbone.num_blocks, backbone.hidden_size).items():
            expected[PEFT_PREFIX + saved_key(f"{block}.{name}")] = Expected(shape, torch.float32, _describe(name, config))
    for key, module in saved_modules(config, backbone, model).items():
        for name, tensor in module.state_dict().items():
            what = f"the model's {key}.{name}"
            expected[PEFT_PREFIX + saved_key(f"{key}.{name}")] = Expected(tuple(tensor.shape), tensor.dtype, what)
    return expected


def expected_from_record(config: GatedPromptSettings, tensors: dict[str, torch.Tensor]) -> dict[str, Expected]:
    """What a saved adapter must hold, without a model: the block tensors follow from ``config`` and its backbone
    record; tensors under a module in ``modules_to_save`` are taken as they are (only a model knows their shapes)."""
    record = config.backbone or {}
    num_blocks, hidden_size = record.get("num_hidden_layers", 0), record.get("hidden_size", 0)
    prefixes = [m.group(1) for m in map(_SAVED_BLOCK_KEY.match, tensors) if m]
    prefix = max(set(prefixes), key=prefixes.count) if prefixes else PEFT_PREFIX
    expected = {}
    for index in range(num_blocks):
        for name, shape in block_tensor_shapes(config, index, num_blocks, hidden_size).items():
            expected[f"{prefix}encoder.layer.{index}.{name}"] = Expected(shape, torch.float32, _describe(name, config))
    for name in config.modules_to_save or []:
        for key in filter(_SAVED_BLOCK_KEY.match, tensors):
            paths = _module_paths(key)
            reaching = [path for path in paths if path.endswith(name)]
            if reaching:
                _refuse_backbone_module(config.modules_to_save, reaching[0], paths[-1])
        owned = {
            key: tensor for key, tensor in tensors.items()
            if not _SAVED_BLOCK_KEY.match(key) and any(path.endswith(name) for path in _module_paths(key))
        }
        if not owned:
            expected[f"{PEFT_PREFIX}{name}.*"] = Expected((), torch.float32, f"modules_to_save entry {name!r}")
        expected.update({key: Expected(tuple(t.shape), t.dtype, f"modules_to_save entry {name!r}") for key, t in owned.items()})
    return expected


def _module_paths(key: str) -> list[str]:
    """The module paths a tensor key lies under, without peft's prefix: ``a.b.weight`` -> ``a``, ``a.b``."""
    parts = key.removeprefix(PEFT_PREFIX).split(".")[:-1]
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _describe(name: str, config: GatedPromptSettings) -> str:
    if name == PROMPT:
        return f"prompts (num_prompt_tokens={config.num_prompt_tokens}, prompt_mode={config.prompt_mode!r})"
    if name == GATE:
        return "a gate logit (gated=True)"
    return "a temperature (learnable_temperature=True)"


def check_tensors(expected: dict[str, Expected], tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise ``ValueError`` naming every tensor of ``tensors`` that ``expected`` does not allow, every one it lacks,
    wrong shapes and dtypes, and non-finite values."""
    problems = []
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        problems.append(
            f"tensors that are not this adapter's {_names(unexpected)} (an adapter holds only its prompts, gates, "
            "temperatures and the modules in its modules_to_save; loading these would change other weights)"
        )
    missing = sorted(set(expected) - set(tensors))
    if missing:
        problems.append(f"missing tensors {_names(missing)} ({expected[missing[0]].what}, ...)")
    for key in sorted(set(expected) & set(tensors)):
        tensor, spec = tensors[key], expected[key]
        problem = _tensor_problem(tensor, spec)
        if problem:
            problems.append(f"{key} {problem}")
    if problems:
        raise ValueError(
            f"{where} does not match the adapter's config: " + "; ".join(problems[:6])
            + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            + ". Nothing was loaded. Re-save the adapter with save_pretrained or download it again; an adapter "
            "from an unknown source that fails this check must not be used."
        )


def _tensor_problem(tensor: torch.Tensor, spec: Expected) -> Optional[str]:
    if tensor.numel() == 0:  # an empty tensor must not stand in for a shape (e.g. of a head to be built from it)
        return f"is empty (shape {list(tensor.shape)}); every tensor of an adapter holds values"
    if tuple(tensor.shape) != spec.shape:
        return f"has shape {list(tensor.shape)}, expected {list(spec.shape)} for {spec.what}"
    if spec.dtype.is_floating_point != tensor.dtype.is_floating_point or (
        not spec.dtype.is_floating_point and tensor.dtype != spec.dtype
    ):
        kind = "a floating-point dtype" if spec.dtype.is_floating_point else str(spec.dtype)
        return f"has dtype {tensor.dtype}, expected {kind}"
    if tensor.is_floating_point() and tensor.dtype not in FLOAT_DTYPES:
        return f"has dtype {tensor.dtype}, which adapters are not saved in (use {', '.join(map(str, FLOAT_DTYPES))})"
    # Checked as the model will hold them: a float64 value beyond float32's range would load as infinity.
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor.to(spec.dtype)).all()):
        return f"holds NaN or infinite values (as {spec.dtype})"
    return None


def _names(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... {len(keys) - limit} more' if len(keys) > limit else ''}]"
