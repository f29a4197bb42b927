"""The tuner layer: one wrapper per encoder block that runs the block on the prompted sequence.

For each adapter, the block at ``prompt_start_block`` inserts the prompts, every prompted block runs under its
temperature and gates its prompt rows (all but the last), and the last block hands the sequence to the head as
``heads.head_input`` says (usually: prompts removed, so the final LayerNorm and head see the usual sequence). In deep
mode every prompted block inserts its own fresh prompts and removes them again, since the next block discards them.
Where ``fast_path`` applies, the block is computed from its ``BlockLayout`` and the prompt rows whose output is
discarded are not computed at all (see ``gated_vpt.fast_path``).
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.nn import functional as F

from .backbones import ROTARY, BlockLayout, HeadReads
from .config import GatedPromptConfig
from .fast_path import BlockParts, fast_path_enabled, forward_block
from .gate import TEMPERATURE_RANGE, divide_query, gate_prompts
from .heads import head_input
from .layout import GATE, PROMPT, TEMPERATURE, block_tensor_shapes
from .prompts import insert_prompts, new_prompts, prompt_rows, remove_prompts

NOT_MERGEABLE = (
    "Gated prompts cannot be merged into the backbone weights (they add tokens to the sequence), so merge_adapter, "
    "unmerge_adapter and merge_and_unload are not available. Use model.unload() to get the plain backbone back, or "
    "keep the PeftModel for inference."
)


class GatedPromptBlock(nn.Module, BaseTunerLayer):
    """Wraps encoder block ``index`` of ``num_blocks``; holds that block's prompts, gate logit and temperature.

    Example:

    ```py
    >>> from peft import get_peft_model
    >>> from transformers import ViTConfig, ViTForImageClassification
    >>> base = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
    ...     num_attention_heads=2, intermediate_size=64, num_labels=3))
    >>> model = get_peft_model(base, GatedPromptConfig(gate_init=5.0))
    >>> block = model.base_model.model.vit.layers[0]  # a GatedPromptBlock
    >>> block.gvpt_gate["default"].item()  # the gate logit, -gate_init at the start
    -5.0
    ```
    """

    adapter_layer_names = ("gvpt_prompt", "gvpt_gate", "gvpt_temperature")
    other_param_names = ("gvpt_config",)
    # peft's generic tooling reads these off tuner layers; a block has no single input/output width.
    in_features: Optional[int] = None
    out_features: Optional[int] = None

    def __init__(
        self,
        base_layer: nn.Module,
        query: nn.Module,
        index: int,
        num_blocks: int,
        num_special_tokens: int,
        hidden_size: int,
        prompt_bound: float,
        head: HeadReads,
        layout: Optional[BlockLayout] = None,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.index = index
        self.num_blocks = num_blocks
        self.num_special_tokens = num_special_tokens
        self.hidden_size = hidden_size
        self.prompt_bound = prompt_bound
        self.head = head
        self.gvpt_prompt = nn.ParameterDict()
        self.gvpt_gate = nn.ParameterDict()
        self.gvpt_temperature = nn.ParameterDict()
        self.gvpt_config: dict[str, GatedPromptConfig] = {}
        self._active_adapter: list[str] = []
        self.merged_adapters = []
        self._per_sample: Optional[tuple[list[str], torch.Tensor]] = None
        self._base_samples: Optional[torch.Tensor] = None  # rows of a mixed batch that peft's "__base__" names
        self._plain = False
        self._layout = layout
        # adapter name -> (_stamp of what the entry was computed from, (keys, values) of its prompts); eval mode only
        self._prompt_kv_cache: dict[str, tuple[tuple, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._query_hook = query.register_forward_hook(self._scale_query)
        self.register_state_dict_post_hook(_saved_temperatures_in_range)

    @property
    def is_last(self) -> bool:
        return self.index == self.num_blocks - 1

    def update_layer(self, adapter_name: str, config: GatedPromptConfig) -> None:
        """Create this block's parameters for ``adapter_name``."""
        self.gvpt_config[adapter_name] = config
        shapes = block_tensor_shapes(config, self.index, self.num_blocks, self.hidden_size)
        if PROMPT in shapes:
            self.gvpt_prompt[adapter_name] = nn.Parameter(
                new_prompts(config.num_prompt_tokens, self.hidden_size, self.prompt_bound)
            )
        if GATE in shapes:
            self.gvpt_gate[adapter_name] = nn.Parameter(torch.tensor(-float(config.gate_init)))
        if TEMPERATURE in shapes:
            self.gvpt_temperature[adapter_name] = nn.Parameter(torch.tensor(1.0))
        self._move_adapter_to_device_of_base_layer(adapter_name)

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module) -> tuple:
        """A block has no ``weight`` of its own; its parameters say where new adapter parameters belong."""
        reference = next(base_layer.parameters(), None)
        return (None, None) if reference is None else (reference.device, reference.dtype)

    def unhook(self) -> nn.Module:
        """Remove the query hook and return the wrapped block (for unloading)."""
        self._query_hook.remove()
        return self.base_layer

    def merge(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(NOT_MERGEABLE)

    def unmerge(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(NOT_MERGEABLE)

    def prompts_active(self) -> bool:
        """Whether an adapter of this model runs at all (not disabled, and an active one exists)."""
        return not self.disable_adapters and any(name in self.gvpt_config for name in self.active_adapters)

    def _adapter(self) -> Optional[str]:
        """The adapter this block runs, or None when adapters are disabled or none reaches this block."""
        if self._plain or self.disable_adapters or not self.active_adapters:
            return None
        if self._per_sample is not None:
            name = self._per_sample[0][0]
        elif len(self.active_adapters) > 1:
            raise ValueError(
                f"gated_vpt runs one adapter per sample, but {self.active_adapters} are active. Call "
                "model.set_adapter(name) with a single name, or pass adapter_names=[...] (one per sample) to forward."
            )
        else:
            name = self.active_adapters[0]
        config = self.gvpt_config.get(name)
        if config is None or self.index < config.prompt_start_block:
            return None
        return name

    def set_per_sample_adapters(self, names: Optional[list[str]], index: Optional[torch.Tensor]) -> None:
        """Route sample ``i`` of the next forward through adapter ``names[index[i]]``, or through the plain block
        where ``index[i]`` is -1 (peft's ``"__base__"``); None: back to the active adapter.

        Used by ``GatedPromptModel`` for ``model(pixel_values, adapter_names=[...])``.
        """
        self._per_sample, self._base_samples, self._plain = None, None, False
        if names is None:
            return
        base = index < 0
        if bool(base.all()):
            self._plain = True
            return
        self._per_sample = (names, index[~base])
        if bool(base.any()):
            self._base_samples = base

    def _per_adapter(self, params: nn.ParameterDict, name: str, missing: float) -> Optional[torch.Tensor]:
        """This block's scalar for every sample, shaped (batch, 1, 1), or a plain scalar for a single adapter.

        Adapters without the parameter get ``missing`` (gate logit +inf: gate 1, temperature 1), which leaves their
        samples exactly as an adapter without gates or temperatures would.
        """
        if self._per_sample is None:
            return params[name] if name in params else None
        names, index = self._per_sample
        if not any(name in params for name in names):
            return None
        values = torch.stack([params[n] if n in params else params[next(iter(params))].new_tensor(missing) for n in names])
        return values[index].view(-1, 1, 1)

    def _temperature(self, name: str, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """The temperature that divides the queries (one per sample in a mixed batch), or None."""
        temperature = self._per_adapter(self.gvpt_temperature, name, 1.0)
        return None if temperature is None else temperature.to(dtype)

    def _scale_query(self, module: nn.Module, args: Any, query: torch.Tensor) -> Optional[torch.Tensor]:
        name = self._adapter()
        temperature = None if name is None else self._temperature(name, query.dtype)
        return None if temperature is None else divide_query(query, temperature)

    def _prompts_for(self, name: str, batch_size: int) -> torch.Tensor:
        if self._per_sample is None:
            prompts = self.gvpt_prompt[name].unsqueeze(0).expand(batch_size, -1, -1)
            return F.dropout(prompts, self.gvpt_config[name].prompt_dropout, self.training)
        names, index = self._per_sample
        prompts = torch.stack([self.gvpt_prompt[n] for n in names])[index]
        if not self.training:
            return prompts
        # Each sample drops its prompts at its own adapter's rate (F.dropout takes one rate for the whole tensor).
        rates = prompts.new_tensor([self.gvpt_config[n].prompt_dropout for n in names])[index].view(-1, 1, 1)
        return prompts * (torch.rand_like(prompts) >= rates) / (1 - rates)

    def _forward_with_base_samples(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor], **kwargs: Any) -> torch.Tensor:
        """A mixed batch with ``"__base__"`` rows: those run through the plain block without prompts (their
        prompt rows are zero placeholders that never enter the computation), the others as usual."""
        base, routing = self._base_samples, self._per_sample
        config = self.gvpt_config[routing[0][0]]
        rows = {True: base.nonzero().squeeze(1), False: (~base).nonzero().squeeze(1)}
        self._base_samples = None
        try:
            prompted = self.forward(hidden_states[rows[False]], attention_mask, **kwargs)
            self._per_sample, self._plain = None, True
            plain = hidden_states[rows[True]]
            start, num_special, num_prompts = config.prompt_start_block, self.num_special_tokens, config.num_prompt_tokens
            shallow = config.prompt_mode == "shallow"  # only shallow prompts are carried from block to block
            if shallow and start < self.index:
                plain = remove_prompts(plain, num_special, num_prompts)
            plain = self.base_layer(plain, attention_mask, **kwargs)
            if shallow and start <= self.index and not self.is_last:
                plain = insert_prompts(plain, plain.new_zeros(plain.shape[0], num_prompts, plain.shape[-1]), num_special)
        finally:
            self._per_sample, self._base_samples, self._plain = routing, base, False
        if prompted.shape[1:] != plain.shape[1:]:
            raise ValueError(
                "'__base__' cannot share a batch with these adapters: this model's head reads the prompt rows too "
                "(head_pooling='mean'), so adapted and base samples end with sequences of different lengths. Run the "
                "base samples in a batch of their own (model.disable_adapter())."
            )
        order = torch.cat((rows[False], rows[True]))
        return torch.cat((prompted, plain))[torch.argsort(order)]

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs: Any) -> torch.Tensor:
        name = self._adapter()
        if name is None:
            return self.base_layer(hidden_states, attention_mask, **kwargs)
        if self._base_samples is not None:
            return self._forward_with_base_samples(hidden_states, attention_mask, **kwargs)
        if attention_mask is not None:
            raise ValueError(
                "gated_vpt does not support attention masks: the mask was built for the sequence without prompts. "
                "Call the model without `attention_mask` (ViT inputs are unpadded), and use eager or sdpa attention "
                "rather than flex attention."
            )
        config = self.gvpt_config[name]
        num_special, num_prompts = self.num_special_tokens, config.num_prompt_tokens
        carries = config.prompt_mode == "shallow" and not self.is_last  # the next block takes these prompt rows
        mean_head = self.is_last and config.head_pooling == "mean"  # the head averages them
        parts = self._fast_parts(kwargs)
        keep = carries or mean_head or parts is None  # compute the prompt rows' outputs
        fresh = name in self.gvpt_prompt
        prompts = prompt_kv = None
        if fresh and not keep and not self.training and not torch.is_grad_enabled():
            prompts, prompt_kv = None, self._cached_prompt_keys_values(parts, name, hidden_states)
        elif fresh:
            prompts = self._prompts_for(name, hidden_states.shape[0]).to(hidden_states.dtype)
            if keep:
                hidden_states, prompts = insert_prompts(hidden_states, prompts, num_special), None
        gate_logit = self._per_adapter(self.gvpt_gate, name, float("inf"))
        prompts_in = None if gate_logit is None else prompt_rows(hidden_states, num_special, num_prompts)
        if parts is None:
            output = self.base_layer(hidden_states, None, **kwargs)
        else:
            output = self._forward_fast(parts, name, hidden_states, prompts, prompt_kv, keep, kwargs.get(ROTARY))
            if not keep:
                return output
        if gate_logit is not None:
            output = gate_prompts(output, prompts_in, gate_logit.to(output.dtype), num_special, in_place=parts is not None)
        if self.is_last:
            return head_input(output, config.head_pooling, self.head, num_special, num_prompts)
        return output if carries else remove_prompts(output, num_special, num_prompts)

    def _fast_parts(self, kwargs: dict) -> Optional[BlockParts]:
        """The block's parts when the fast path applies to this call, else None (the plain path)."""
        if not fast_path_enabled() or self._layout is None:
            return None
        rotary = self._layout.rotary
        if rotary and kwargs.get(ROTARY) is None:
            return None
        if any(v is not None and v is not False for k, v in kwargs.items() if not (rotary and k == ROTARY)):
            return None
        block = self.base_layer
        if any(child.training for child in block.children()) or any(hasattr(m, "_hf_hook") for m in block.modules()):
            return None
        parts = BlockParts.of(block, self._layout)
        return parts if parts is not None and parts.attention_function() is not None else None

    def _forward_fast(
        self,
        parts: BlockParts,
        name: str,
        hidden_states: torch.Tensor,
        prompts: Optional[torch.Tensor],
        prompt_kv: Optional[tuple[torch.Tensor, torch.Tensor]],
        keep: bool,
        rotary: Optional[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        def run(hidden_states: torch.Tensor, prompts: Optional[torch.Tensor]) -> torch.Tensor:
            return forward_block(
                parts, hidden_states, self.num_special_tokens, self.gvpt_config[name].num_prompt_tokens, prompts=prompts,
                prompt_keys_values=prompt_kv, keep_prompt_rows=keep, temperature=self._temperature(name, hidden_states.dtype),
                rotary=rotary,
            )

        block = self.base_layer
        if getattr(block, "gradient_checkpointing", False) and block.training and torch.is_grad_enabled():
            # as the block's own forward would be; prompts are passed so that they get gradients
            return block._gradient_checkpointing_func(run, hidden_states, prompts)
        return run(hidden_states, prompts)

    def _cached_prompt_keys_values(self, parts: BlockParts, name: str, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of the fresh prompts, (1 or batch, P, D): in eval mode they do not depend on the image.
        Each adapter's entry is recomputed when any tensor it came from has changed (storage or in-place version) or
        the precision differs from the one it was computed in (``hidden_states``' dtype, the autocast state)."""
        names = [name] if self._per_sample is None else self._per_sample[0]
        precision = _precision(hidden_states)
        pairs = []
        for adapter in names:
            prompt = self.gvpt_prompt[adapter]
            sources = (prompt, *parts.key_value_parameters())
            cached = self._prompt_kv_cache.get(adapter)
            if cached is None or not _unchanged(cached[0], sources, precision):
                cached = (_stamp(sources, precision), parts.keys_values(prompt.to(hidden_states.dtype).unsqueeze(0)))
                self._prompt_kv_cache[adapter] = cached
            pairs.append(cached[1])
        if self._per_sample is None:
            return pairs[0]
        index = self._per_sample[1]
        return tuple(torch.cat(tensors)[index] for tensors in zip(*pairs))

    def train(self, mode: bool = True) -> "GatedPromptBlock":
        """Only the prompt dropout follows ``mode``; the frozen block's modules stay in eval mode (no dropout, no
        drop-path). The block's own flag does follow ``mode``: transformers checkpoints a block only in training."""
        self.training = mode
        self._prompt_kv_cache.clear()
        self.base_layer.eval()
        self.base_layer.training = mode
        return self

    def __getstate__(self) -> dict:
        """Pickled (and deep-copied) without the key/value cache: it refers to this block's tensors weakly."""
        return {**self.__dict__, "_prompt_kv_cache": {}}

    def __repr__(self) -> str:
        return "gated_vpt." + super().__repr__()


def _precision(hidden_states: torch.Tensor) -> tuple:
    """The precision a block computes ``hidden_states`` in: their dtype, and the autocast dtype (None when off) on their
    device, since autocast rounds the projections' outputs whatever the input dtype."""
    device = hidden_states.device.type
    autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    return hidden_states.dtype, autocast


def _stamp(tensors: tuple[torch.Tensor, ...], precision: tuple) -> tuple:
    """What identifies the current values of ``tensors`` computed in ``precision``: each tensor object (weakly), its
    storage and in-place version."""
    return precision, tuple((weakref.ref(t), t.data_ptr(), t._version) for t in tensors)


def _unchanged(stamp: tuple, tensors: tuple[torch.Tensor, ...], precision: tuple) -> bool:
    entries = stamp[1]
    return stamp[0] == precision and len(entries) == len(tensors) and all(
        ref() is t and pointer == t.data_ptr() and version == t._version for (ref, pointer, version), t in zip(entries, tensors)
    )


def _saved_temperatures_in_range(module: GatedPromptBlock, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """Saved temperatures are the values the next forward would use: an optimizer step after the last forward may
    have left a stored one past a bound, which the forward clamps (``GatedPromptModel``) before using it."""
    for name in module.gvpt_temperature:
        key = f"{prefix}gvpt_temperature.{name}"
        if key in state_dict:
            state_dict[key] = state_dict[key].clamp(*TEMPERATURE_RANGE)
