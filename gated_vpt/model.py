"""The peft tuner: wraps every encoder block of a ViT-family model in a ``GatedPromptBlock``."""

from __future__ import annotations

import copy
import re
import warnings
from contextlib import contextmanager
from functools import partial
from typing import Iterator, Optional, Sequence

import torch
from peft.tuners.tuners_utils import BaseTuner, _get_submodules
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from .backbones import TIMM_MODEL_TYPE, Backbone, resolve_backbone
from .config import GatedPromptConfig
from .gate import clamp_temperatures_
from .heads import check_pooling
from .layer import NOT_MERGEABLE, GatedPromptBlock
from .layout import PEFT_PREFIX, Expected, check_tensors, expected_tensors, saved_key, saved_modules
from .loading import WEIGHTS_NAME, read_adapter_files, read_adapter_weights, resolve_adapter_dir
from .prompts import prompt_init_bound
from .settings import PREFIX

BASE = "__base__"  # peft's name for "no adapter" in adapter_names
ADAPTER_NAME = re.compile(r"[\w-]+")


class GatedPromptModel(BaseTuner):
    """Gated visual prompt tuning (Yoo et al., ICML 2023, https://arxiv.org/abs/2306.05067) for transformers'
    ViT family: learnable prompt tokens pass through the frozen encoder blocks, each block's change to them is
    gated by a learned sigmoid gate, and each block's attention has a learnable temperature.

    Created by ``peft.get_peft_model`` from a ``GatedPromptConfig``; not usually instantiated directly.

    Example:

    ```py
    >>> import gated_vpt
    >>> from peft import get_peft_model
    >>> from transformers import ViTConfig, ViTForImageClassification
    >>> base = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
    ...     num_attention_heads=2, intermediate_size=64, num_labels=3))
    >>> model = get_peft_model(base, gated_vpt.GatedPromptConfig(num_prompt_tokens=4))
    >>> type(model.base_model).__name__
    'GatedPromptModel'
    >>> model(torch.randn(2, 3, 32, 32)).logits.shape  # the prompts leave the sequence before the head
    torch.Size([2, 3])
    ```
    """

    prefix: str = PREFIX
    tuner_layer_cls = GatedPromptBlock
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: GatedPromptConfig, model_config: dict) -> GatedPromptConfig:
        self._backbone = prepare_config(peft_config, self.model)
        return peft_config

    def _create_and_replace(
        self,
        peft_config: GatedPromptConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: Optional[str] = None,
    ) -> None:
        if isinstance(target, GatedPromptBlock):
            target.update_layer(adapter_name, peft_config)
            return
        backbone = self._backbone
        block = GatedPromptBlock(
            target,
            query=target.get_submodule(backbone.spec.block.query),
            index=backbone.block_names.index(current_key),
            num_blocks=backbone.num_blocks,
            num_special_tokens=backbone.num_special_tokens,
            hidden_size=backbone.hidden_size,
            prompt_bound=prompt_init_bound(backbone.patch_size, backbone.num_channels, backbone.hidden_size),
            head=backbone.spec.head,
            layout=backbone.spec.block if backbone.spec.fast_path else None,
        )
        block.update_layer(adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            block.requires_grad_(False)
        self._replace_module(parent, target_name, block, target)

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs) -> None:
        check_adapter_name(adapter_name)
        source = self.peft_config[adapter_name].__dict__.pop("_source", None)
        # The model decides parts of the config (backbone record, head pooling, target blocks): fill in a copy, so
        # the caller's config can be used again, e.g. for a model of another size.
        config = self.peft_config[adapter_name] = copy.deepcopy(self.peft_config[adapter_name])
        loading = self.__dict__.setdefault("_gvpt_loading", {})
        if source is not None:
            # Loaded from files (PeftModel.from_pretrained / load_adapter): peft reads the weights only after
            # injecting, so read and check them now, while the model is untouched.
            check_saved_adapter(config, *source, model)
            first = not any(isinstance(m, GatedPromptBlock) for m in model.modules())
            loading[adapter_name] = {n: p.requires_grad for n, p in model.named_parameters()} if first else None
        super().inject_adapter(model, adapter_name, **kwargs)
        backbone = self._backbone
        if not hasattr(backbone.encoder, "_gvpt_clamp_hook"):
            # The backbone's entry runs once per forward pass, before any block, and is never recomputed by gradient
            # checkpointing: the released code's clamp of the stored temperatures, for any training loop.
            blocks = [m for m in backbone.encoder.modules() if isinstance(m, GatedPromptBlock)]
            backbone.encoder._gvpt_clamp_hook = backbone.entry.register_forward_pre_hook(
                partial(_clamp_block_temperatures, blocks)
            )
        if _shuffles_patches(backbone) and not hasattr(backbone.encoder, "_gvpt_noise_hook"):
            first_block = model.get_submodule(backbone.block_names[0])
            backbone.encoder._gvpt_noise_hook = backbone.encoder.embeddings.register_forward_pre_hook(
                partial(_fixed_patch_order, first_block), with_kwargs=True
            )

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: GatedPromptConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """peft's key mapping, then the check that the weights are exactly this adapter's (peft would load any
        other key into the model). When the check fails for an adapter being loaded from files, the adapter is
        taken out again, leaving the model as it was."""
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        tuner = getattr(model, "base_model", None)
        loading = tuner.__dict__.get("_gvpt_loading", {}) if isinstance(tuner, GatedPromptModel) else {}
        in_progress = adapter_name in loading
        requires_grad = loading.pop(adapter_name, None)
        try:
            check_tensors(_loaded_tensors(model, adapter_name), remapped, f"The weights of adapter {adapter_name!r}")
        except ValueError:
            if in_progress:
                tuner._roll_back(model, adapter_name, requires_grad)
            raise
        return remapped

    def _roll_back(self, peft_model: nn.Module, adapter_name: str, requires_grad: Optional[dict[str, bool]]) -> None:
        """Take out an adapter whose load failed: delete it, or unload everything when it was the only one and
        restore which parameters required gradients."""
        if len(self.peft_config) > 1:
            peft_model.delete_adapter(adapter_name)
            return
        model = self._unload_and_optionally_merge(merge=False)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires_grad.get(name, parameter.requires_grad) if requires_grad else parameter.requires_grad)

    def _check_merge_allowed(self) -> None:
        raise ValueError(NOT_MERGEABLE)

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: Optional[list[str]] = None,
    ) -> nn.Module:
        if merge:
            raise ValueError(NOT_MERGEABLE)
        for key in [key for key, module in self.model.named_modules() if isinstance(module, GatedPromptBlock)]:
            parent, target, target_name = _get_submodules(self.model, key)
            setattr(parent, target_name, target.unhook())
        encoder = getattr(self.model, "base_model", self.model)
        for attribute in ("_gvpt_noise_hook", "_gvpt_clamp_hook"):
            hook = getattr(encoder, attribute, None)
            if hook is not None:
                hook.remove()
                delattr(encoder, attribute)
        for key in [key for key, module in self.model.named_modules() if isinstance(module, AuxiliaryTrainingWrapper)]:
            parent, target, target_name = _get_submodules(self.model, key)
            setattr(parent, target_name, target.original_module)
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    def train(self, mode: bool = True) -> "GatedPromptModel":
        """Training mode reaches the prompt dropout and the saved modules (e.g. the classifier) only: the frozen
        backbone stays in eval mode, as in the paper."""
        super().train(mode)
        if mode:
            trainable = [m for m in self.model.modules() if isinstance(m, (GatedPromptBlock, AuxiliaryTrainingWrapper))]
            self.model.eval()
            for module in trainable:
                module.train(True)
        return self

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs) -> Iterator[None]:
        """``model(pixel_values, adapter_names=[...])``: sample ``i`` runs through adapter ``adapter_names[i]``, or
        through the plain backbone and original head where it is ``"__base__"`` (peft's convention)."""
        self._refuse_timm_intermediates(kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        pixel_values = kwargs.get("pixel_values", args[0] if args else None)
        batch_size = pixel_values.shape[0] if isinstance(pixel_values, torch.Tensor) else None
        names, index = self._per_sample_routing(adapter_names, batch_size)
        blocks = [m for m in self.model.modules() if isinstance(m, GatedPromptBlock)]
        for block in blocks:
            block.set_per_sample_adapters(names, index)
        # peft's saved modules (e.g. each adapter's classifier) route a mixed batch when given adapter_names.
        hooks = [
            module.register_forward_pre_hook(partial(_pass_adapter_names, list(adapter_names)), with_kwargs=True)
            for module in self.model.modules()
            if isinstance(module, AuxiliaryTrainingWrapper)
        ]
        try:
            yield
        finally:
            for block in blocks:
                block.set_per_sample_adapters(None, None)
            for hook in hooks:
                hook.remove()

    def _refuse_timm_intermediates(self, kwargs: dict) -> None:
        """transformers' TimmWrapper answers ``output_hidden_states`` through timm's ``forward_intermediates``, which
        reshapes every row after the prefix tokens into the patch grid: with prompts among them, wrong shapes."""
        config = getattr(self.model, "config", None)
        wanted = kwargs.get("output_hidden_states", getattr(config, "output_hidden_states", False))
        if not wanted or self._backbone.model_type != TIMM_MODEL_TYPE:
            return
        if any(m.prompts_active() for m in self.model.modules() if isinstance(m, GatedPromptBlock)):
            raise ValueError(
                "output_hidden_states is not supported for timm models with gated prompts: timm computes them with "
                "forward_intermediates, which reads every row after the prefix tokens as a patch. Call the model "
                "without output_hidden_states, or with the adapter disabled (model.disable_adapter())."
            )

    def _per_sample_routing(self, adapter_names: Sequence[str], batch_size: Optional[int]) -> tuple[list[str], torch.Tensor]:
        if isinstance(adapter_names, str) or (batch_size is not None and len(adapter_names) != batch_size):
            raise ValueError(
                f"adapter_names must name one adapter per sample: got {len(adapter_names)} names for a batch of "
                f"{batch_size}. Use {BASE!r} for samples that should run through the base model."
            )
        unknown = sorted(set(adapter_names) - set(self.peft_config) - {BASE})
        if unknown:
            raise ValueError(
                f"adapter_names contains unknown adapters {unknown}; loaded: {sorted(self.peft_config)} (and {BASE!r} "
                "for the base model)."
            )
        names = sorted(set(adapter_names) - {BASE})
        layout = {
            name: (c.num_prompt_tokens, c.prompt_start_block, c.prompt_mode, c.head_pooling)
            for name, c in ((n, self.peft_config[n]) for n in names)
        }
        if len(set(layout.values())) > 1:
            raise ValueError(
                "Adapters mixed in one batch must share num_prompt_tokens, prompt_start_block, prompt_mode and "
                f"head_pooling; got {layout}. Run the differing adapters in separate batches."
            )
        if any(getattr(m, "gradient_checkpointing", False) for m in self.model.modules()) and torch.is_grad_enabled():
            raise ValueError(
                "Per-sample adapters cannot be combined with gradient checkpointing while gradients are on; run the "
                "mixed batch under torch.no_grad() or disable gradient checkpointing."
            )
        position = {name: i for i, name in enumerate(names)}
        device = next(self.model.parameters()).device
        index = torch.tensor([position.get(name, -1) for name in adapter_names], device=device)
        return names, index

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        return saved_key(super()._remove_adapter_name_from_key(key, adapter_name))

    @staticmethod
    def _check_target_module_exists(peft_config: GatedPromptConfig, key: str) -> bool:
        return re.fullmatch(peft_config.target_modules, key) is not None


def check_adapter_name(name: object) -> None:
    """Refuse an adapter name that is not a plain word: it becomes part of module keys (split at dots) and, for
    every adapter but the first, the name of the folder ``save_pretrained`` writes it to."""
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
        raise ValueError(
            f"Adapter name {name!r} is invalid: use letters, digits, '_' and '-' only (e.g. 'default', 'cub-200'). "
            "Names with dots, path separators or '..', absolute paths and empty names are refused."
        )


def prepare_config(config: GatedPromptConfig, model: nn.Module) -> Backbone:
    """Check ``config`` against ``model`` and fill in what the model decides (backbone record, head pooling, target
    blocks, the classifier as saved module); the model is not changed. Returns the resolved backbone."""
    backbone = resolve_backbone(model)
    check_backbone(config, backbone)
    if config.prompt_start_block >= backbone.num_blocks:
        raise ValueError(
            f"GatedPromptConfig.prompt_start_block={config.prompt_start_block} is invalid for a backbone with "
            f"{backbone.num_blocks} blocks: use a block index from 0 to {backbone.num_blocks - 1}."
        )
    if _shuffles_patches(backbone):
        _require_no_masking(model)
    pooling = backbone.spec.pooling if config.head_pooling == "auto" else config.head_pooling
    check_pooling(pooling, backbone.spec.head, type(model).__name__)
    config.head_pooling = pooling
    config.backbone = backbone.signature()
    # Always derived from the model, so an adapter saved under another transformers layout still matches.
    config.target_modules = "|".join(re.escape(name) for name in backbone.block_names)
    if config.modules_to_save is None and backbone.classifier is not None:
        config.modules_to_save = [backbone.classifier]
    saved_modules(config, backbone, model)  # refuses entries that match nothing or reach into the blocks
    return backbone


def check_saved_adapter(config: GatedPromptConfig, location: dict, config_given: bool, model: nn.Module) -> None:
    """Refuse a saved adapter (``location``: its files, as ``GatedPromptConfig.note_source`` noted them) whose
    weights are not exactly what ``config`` implies for ``model``; nothing is changed. A config read from the files
    must also be a complete gated_vpt config; a ``config_given`` by the caller replaces the files' own."""
    directory = resolve_adapter_dir(**location)
    if config_given:
        tensors = read_adapter_weights(directory)
    else:
        _, tensors = read_adapter_files(directory)
        config.require_backbone_record(str(directory / "adapter_config.json"))
        if config.modules_to_save is None:
            config.modules_to_save = []  # saved configs record the modules they saved: none
    check_given_weights(config, tensors, model, str(directory / WEIGHTS_NAME))


def check_given_weights(config: GatedPromptConfig, tensors: dict[str, torch.Tensor], model: nn.Module, where: str) -> None:
    """Refuse ``tensors`` (keys as in adapter files) unless they are exactly what ``config`` implies for ``model``,
    before anything is changed; ``where`` names them in the message."""
    backbone = prepare_config(config, model)
    _check_head_size(config, backbone, model, tensors)
    check_tensors(expected_tensors(config, backbone, model), tensors, where)


def _check_head_size(config: GatedPromptConfig, backbone: Backbone, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse, naming the fix, an adapter whose linear head has another number of outputs than the model's: the
    base was built with another ``num_labels``, nothing is wrong with the file."""
    for key, module in saved_modules(config, backbone, model).items():
        weight, bias = (tensors.get(f"{PEFT_PREFIX}{key}.{name}") for name in ("weight", "bias"))
        if isinstance(module, nn.Linear) and weight is not None and weight.dim() == 2 and (
            weight.shape[0] != module.out_features and weight.shape[1] == module.in_features
            and (module.bias is None or (bias is not None and tuple(bias.shape) == (weight.shape[0],)))
        ):
            raise ValueError(
                f"The base has {module.out_features} labels, the adapter's head ({key}) {weight.shape[0]}: build the "
                f"base with num_labels={weight.shape[0]}, e.g. {type(model).__name__}.from_pretrained(<base>, "
                f"num_labels={weight.shape[0]}). Nothing was loaded."
            )


def _loaded_tensors(model: nn.Module, adapter_name: str) -> dict[str, Expected]:
    """The tensors of ``adapter_name`` in a model that holds it, by state-dict key: what a load may write."""
    state = model.state_dict()
    keys = []
    for path, module in model.named_modules():
        if isinstance(module, GatedPromptBlock):
            keys += [f"{path}.{attr}.{adapter_name}" for attr in module.adapter_layer_names if adapter_name in getattr(module, attr)]
        elif isinstance(module, AuxiliaryTrainingWrapper) and adapter_name in getattr(module, "_adapters", ()):
            keys += [f"{path}.{key}" for key in module.adapter_state_dict_load_map(adapter_name).values()]
    return {key: Expected(tuple(state[key].shape), state[key].dtype, f"the model's {key}") for key in keys if key in state}


def check_backbone(config: GatedPromptConfig, backbone: Backbone) -> None:
    """Refuse an adapter made for a backbone of another shape, before anything is changed."""
    if not config.backbone:
        return
    actual = backbone.signature()
    mismatched = [
        f"{field}: adapter {config.backbone.get(field)!r}, model {actual[field]!r}"
        for field in ("hidden_size", "num_hidden_layers", "num_special_tokens")
        if config.backbone.get(field) != actual[field]
    ]
    if mismatched:
        raise ValueError(
            "This gated_vpt adapter was made for another backbone (" + "; ".join(mismatched) + "). Load it onto the "
            f"base model it was trained on{_base_hint(config)}."
        )
    if config.backbone.get("model_type") != actual["model_type"]:
        warnings.warn(
            f"This gated_vpt adapter was made for a {config.backbone.get('model_type')!r} backbone and is being loaded "
            f"onto a {actual['model_type']!r} one of the same shape; check that this is the base you meant.",
            stacklevel=3,
        )


def _base_hint(config: GatedPromptConfig) -> str:
    return f" ({config.base_model_name_or_path})" if config.base_model_name_or_path else ""


def _shuffles_patches(backbone: Backbone) -> bool:
    """ViTMAE's own embeddings mask and shuffle patches; MAE weights loaded into ViT classes do not."""
    return hasattr(getattr(backbone.encoder, "embeddings", None), "random_masking")


def _require_no_masking(model: nn.Module) -> None:
    ratio = getattr(model.config, "mask_ratio", 0.0)
    if ratio != 0.0:
        raise ValueError(
            f"This {type(model).__name__} masks {ratio:.0%} of the patches at random (config.mask_ratio={ratio}), which "
            "prompt tuning must not do. Load it with mask_ratio=0.0, e.g. "
            "ViTMAEModel.from_pretrained(model_id, mask_ratio=0.0), or use ViTForImageClassification for MAE weights."
        )


def _clamp_block_temperatures(blocks: list[GatedPromptBlock], module: nn.Module, args: tuple) -> None:
    clamp_temperatures_(t for block in blocks for t in block.gvpt_temperature.values())


def _pass_adapter_names(adapter_names: list[str], module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    return args, {**kwargs, "adapter_names": adapter_names}


def _fixed_patch_order(block: GatedPromptBlock, module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple]:
    """ViTMAE's embeddings shuffle patches by argsort of random noise; ``arange`` noise keeps their order. With no
    adapter running (disabled, or none left) the embeddings see exactly what the base model's would."""
    if not block.prompts_active() or kwargs.get("noise") is not None or (len(args) > 1 and args[1] is not None):
        return None
    pixel_values = args[0] if args else kwargs["pixel_values"]
    patch_h, patch_w = module.patch_embeddings.patch_size
    num_patches = (pixel_values.shape[-2] // patch_h) * (pixel_values.shape[-1] // patch_w)
    noise = torch.arange(num_patches, device=pixel_values.device, dtype=torch.float32).expand(pixel_values.shape[0], -1)
    return args, {**kwargs, "noise": noise}
