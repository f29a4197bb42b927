"""The fast path: gated_vpt computes a prompted block itself, from the backbone table's ``BlockLayout``.

Where a block's prompt outputs are thrown away (VPT-deep: every block, since the next one brings fresh prompts;
a CLS head: the last block), the prompt rows enter attention only as keys and values: their queries, attention
output and MLP are not computed, and gradients still reach the prompts through the keys and values. The
temperature divides the queries without keeping an extra activation (``gate.divide_query``), and the caller gates
the prompt rows in place, since it owns the block's output.

The plain path, the block's own forward with the temperature applied by a hook on its query projection, is the
reference the fast path is tested against. gated_vpt takes it when the fast path does not apply (an attention
kernel other than eager or sdpa, outputs recorded with ``output_hidden_states`` / ``output_attentions``, a block
the layout does not describe, accelerate's offload hooks), and everywhere after ``set_fast_path(False)``.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .backbones import BlockLayout
from .gate import divide_query
from .prompts import insert_prompts, remove_prompts

_ENABLED = [True]


def set_fast_path(enabled: bool) -> None:
    """Switch gated_vpt's fast path on (the default) or off for the whole process. Off, every prompted block runs
    through its own forward on the full prompted sequence: slower, the same numbers to float precision.

    Example:

    ```py
    >>> import gated_vpt
    >>> gated_vpt.set_fast_path(False)  # e.g. to compare against the plain path
    >>> gated_vpt.fast_path_enabled()
    False
    >>> gated_vpt.set_fast_path(True)
    ```
    """
    _ENABLED[0] = bool(enabled)


def fast_path_enabled() -> bool:
    return _ENABLED[0]


@contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """``with gated_vpt.fast_path(False): ...`` runs the body with the fast path switched as given, then restores it."""
    previous = _ENABLED[0]
    set_fast_path(enabled)
    try:
        yield
    finally:
        set_fast_path(previous)


@dataclass(frozen=True)
class Projection:
    """A linear map given by its weight and bias (None: no bias): a whole ``nn.Linear``, or the query, key or value
    part of a fused one. Applied without calling a module: hooks (gated_vpt's own temperature hook) belong to the
    plain path."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    module: nn.Linear  # whose parameters these are

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return F.linear(rows, self.weight, self.bias)

    @classmethod
    def split(cls, module: nn.Linear, count: int) -> list["Projection"]:
        """The ``count`` equal parts of ``module``'s output, in order (a fused q/k/v projection: 3)."""
        weights = module.weight.chunk(count)
        biases = module.bias.chunk(count) if module.bias is not None else (None,) * count
        return [cls(weight, bias, module) for weight, bias in zip(weights, biases)]


@dataclass(frozen=True)
class BlockParts:
    """The modules of one encoder block, found through its ``BlockLayout``."""

    norm_before: nn.Module
    norm_after: nn.Module
    attention: nn.Module
    query: Projection
    key: Projection
    value: Projection
    output: Projection
    head_norms: Optional[tuple[nn.Module, nn.Module]]
    mlp: nn.Module
    layer_scales: Optional[tuple[nn.Module, nn.Module]]
    scaling: float
    eager: Callable
    kernel: str

    @classmethod
    def of(cls, block: nn.Module, layout: BlockLayout) -> Optional["BlockParts"]:
        """The parts of ``block``, or None when it does not match ``layout`` (a missing module, a projection that
        is not a plain ``nn.Linear``, e.g. quantised or adapted by another method, or one of ``layout.absent``)."""
        try:
            attention = block.get_submodule(layout.attention)
            projections = [attention.get_submodule(name) for name in layout.projections]
            parts = dict(
                norm_before=block.get_submodule(layout.norm_before),
                norm_after=block.get_submodule(layout.norm_after),
                mlp=block.get_submodule(layout.mlp),
                layer_scales=tuple(block.get_submodule(name) for name in layout.layer_scales) if layout.layer_scales else None,
                head_norms=tuple(attention.get_submodule(n) for n in layout.head_norms) if layout.head_norms else None,
                scaling=getattr(attention, layout.scaling),
            )
        except AttributeError:
            return None
        if layout.kernel == "timm":
            eager = _timm_attention
        else:
            eager = getattr(sys.modules.get(type(attention).__module__), "eager_attention_forward", None)
        if eager is None or any(type(projection) is not nn.Linear for projection in projections):
            return None
        if any(_present(block, path) for path in layout.absent):
            return None
        if layout.fused_qkv:
            query, key, value = Projection.split(projections[0], 3)
        else:
            query, key, value = (Projection(p.weight, p.bias, p) for p in projections[:3])
        output = Projection(projections[3].weight, projections[3].bias, projections[3])
        return cls(attention=attention, query=query, key=key, value=value, output=output, eager=eager,
                   kernel=layout.kernel, **parts)

    def attention_function(self) -> Optional[Callable]:
        """The attention kernel this block is configured for, when it is one the fast path runs: transformers' eager
        or sdpa, as the attention's config says; timm's (``_timm_attention``), which follows its ``fused_attn``."""
        if self.kernel == "timm":
            return self.eager
        implementation = self.attention.config._attn_implementation
        if implementation == "eager":
            return self.eager
        return ALL_ATTENTION_FUNCTIONS["sdpa"] if implementation == "sdpa" else None

    def key_value_parameters(self) -> tuple[torch.Tensor, ...]:
        """What the keys and values of given rows depend on besides the rows: the first norm and the projections that
        compute them (a fused one as a whole)."""
        modules = (self.norm_before, self.key.module, self.value.module)
        return tuple(dict.fromkeys(p for module in modules for p in module.parameters(recurse=False)))

    def keys_values(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys (before any per-head key norm) and values of ``rows``."""
        normed = self.norm_before(rows)
        return self.key(normed), self.value(normed)


def forward_block(
    parts: BlockParts,
    hidden_states: torch.Tensor,
    num_special: int,
    num_prompts: int,
    prompts: Optional[torch.Tensor] = None,
    prompt_keys_values: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    keep_prompt_rows: bool = True,
    temperature: Optional[torch.Tensor] = None,
    rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """One block, as its own forward computes it (eval mode), on ``[special, prompts, patches]``.

    ``hidden_states`` holds the prompt rows right after the special tokens, unless ``prompts`` (batch, P, D) or their
    precomputed ``prompt_keys_values`` are given: then the prompts join this block as keys and values only.
    ``keep_prompt_rows=False`` returns ``[special, patches]`` without computing the prompt rows' queries, attention
    output or MLP. ``temperature`` divides the queries (a scalar or one per sample). ``rotary``: the block's rotary
    position embeddings ``(cos, sin)`` for the patch rows (``BlockLayout.rotary``).
    """
    if keep_prompt_rows and (prompts is not None or prompt_keys_values is not None):
        raise ValueError("forward_block: insert the prompts into hidden_states to keep their rows.")
    residual, attended = _attention_branch(
        parts, hidden_states, num_special, num_prompts, prompts, prompt_keys_values, keep_prompt_rows, temperature, rotary
    )
    hidden_states = attended + residual
    del residual, attended  # not needed by the MLP: free them before its (wider) activations exist
    mlp = parts.mlp(parts.norm_after(hidden_states))
    if parts.layer_scales:
        mlp = parts.layer_scales[1](mlp)
    return mlp + hidden_states


def _attention_branch(
    parts: BlockParts,
    hidden_states: torch.Tensor,
    num_special: int,
    num_prompts: int,
    prompts: Optional[torch.Tensor],
    prompt_keys_values: Optional[tuple[torch.Tensor, torch.Tensor]],
    keep_prompt_rows: bool,
    temperature: Optional[torch.Tensor],
    rotary: Optional[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows ``forward_block`` computes and the attention branch's output for them (before the residual add)."""
    batch = hidden_states.shape[0]
    residual = hidden_states
    normed = parts.norm_before(hidden_states)
    keys_in = None
    if prompts is None and prompt_keys_values is None:
        keys_in = normed
        if not keep_prompt_rows:
            normed = remove_prompts(normed, num_special, num_prompts)
            residual = remove_prompts(residual, num_special, num_prompts)
    elif prompt_keys_values is None:
        keys_in = insert_prompts(normed, parts.norm_before(prompts), num_special)

    head_dim = parts.attention.head_dim

    def heads(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view(batch, tensor.shape[1], -1, head_dim).transpose(1, 2)

    attend = parts.attention_function()
    query = heads(parts.query(normed))
    if parts.head_norms:
        # not called as a module: the temperature hook on it belongs to the plain path
        query = parts.head_norms[0].forward(query)
    if temperature is not None:
        query = divide_query(query, temperature, contiguous=attend is parts.eager)
    if keys_in is not None:
        key, value = parts.key(keys_in), parts.value(keys_in)
    else:
        prompt_key, prompt_value = (t.expand(batch, -1, -1) for t in prompt_keys_values)
        key = insert_prompts(parts.key(normed), prompt_key, num_special)
        value = insert_prompts(parts.value(normed), prompt_value, num_special)
    del normed, keys_in
    key = heads(key)
    if parts.head_norms:
        key = parts.head_norms[1](key)
    if rotary is not None:
        query, key = _rotate_patch_rows(query, *rotary), _rotate_patch_rows(key, *rotary)
    attended = attend(parts.attention, query, key, heads(value), None, dropout=0.0, scaling=parts.scaling)[0]
    del key, value
    attended = parts.output(attended.reshape(batch, query.shape[2], -1))
    if parts.layer_scales:
        attended = parts.layer_scales[0](attended)
    return residual, attended


def _rotate_patch_rows(rows: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embeddings on the last ``len(cos)`` rows of (batch, heads, rows, head_dim), the patches: each
    pair of half-vectors ``(a, b)`` becomes ``(a cos - b sin, b cos + a sin)``; the rows before them are unchanged."""
    count = cos.shape[-2]
    prefix, patches = rows[..., :-count, :], rows[..., -count:, :]
    first, second = patches.chunk(2, dim=-1)
    return torch.cat((prefix, patches * cos + torch.cat((-second, first), dim=-1) * sin), dim=-2)


def _timm_attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: None,
    dropout: float = 0.0, scaling: float = 1.0,
) -> tuple[torch.Tensor, None]:
    """timm's ``Attention`` kernels with transformers' signature: torch's sdpa where the module's ``fused_attn`` is on,
    else timm's own product (queries scaled first). Returns (batch, rows, heads, head_dim)."""
    if module.fused_attn:
        attended = F.scaled_dot_product_attention(query, key, value, scale=scaling)
    else:
        attended = ((query * scaling) @ key.transpose(-2, -1)).softmax(dim=-1) @ value
    return attended.transpose(1, 2), None


def _present(block: nn.Module, path: str) -> bool:
    """Whether ``block`` has a module at ``path`` that does something (not None, not an identity)."""
    try:
        return not isinstance(block.get_submodule(path), nn.Identity)
    except AttributeError:
        return False
