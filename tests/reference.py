"""An independent plain-PyTorch computation of METHOD.md's forward pass, to check gated_vpt against.

Nothing here goes through gated_vpt's code: the embeddings come from the frozen model's own embeddings module,
every encoder block is recomputed by hand from its weights (layer norms, q/k/v projections, attention logits
divided by ``sqrt(d_head) * tau``, softmax, output projection, MLP, residuals, Dinov2's layer scales), and the
prompts, gates, temperatures and heads follow METHOD.md's equations. The adapter's values are read from a
PeftModel by parameter name only (``read_adapter``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

TEMPERATURE_MIN, TEMPERATURE_MAX = 0.01, 10.0
_ADAPTER_KEY = re.compile(r"(?:^|\.)(?:layers|encoder\.layer)\.(\d+)\.gvpt_(prompt|gate|temperature)\.(\w+)$")


@dataclass
class Adapter:
    """One adapter's values, by block index, plus its method settings."""

    num_prompts: int
    mode: str = "shallow"
    start: int = 0
    gated: bool = True
    learnable_temperature: bool = True
    pooling: str = "cls"
    prompts: dict[int, torch.Tensor] = field(default_factory=dict)
    gates: dict[int, torch.Tensor] = field(default_factory=dict)
    temperatures: dict[int, torch.Tensor] = field(default_factory=dict)
    classifier: Optional[tuple[torch.Tensor, torch.Tensor]] = None


def read_adapter(peft_model: nn.Module, name: str = "default", **settings: object) -> Adapter:
    """Collect adapter ``name``'s prompts, gate logits, temperatures and saved classifier from a PeftModel by
    parameter name; ``settings`` are the method settings (mode, start, gated, learnable_temperature, pooling)."""
    tables = {"prompt": {}, "gate": {}, "temperature": {}}
    classifier = {}
    for key, value in peft_model.named_parameters():
        match = _ADAPTER_KEY.search(key)
        if match and match.group(3) == name:
            tables[match.group(2)][int(match.group(1))] = value.detach().clone()
        elif key.endswith((f"classifier.modules_to_save.{name}.weight", f"classifier.modules_to_save.{name}.bias")):
            classifier[key.rsplit(".", 1)[1]] = value.detach().clone()
    num_prompts = next(iter(tables["prompt"].values())).shape[0]
    return Adapter(
        num_prompts=num_prompts,
        prompts=tables["prompt"],
        gates=tables["gate"],
        temperatures=tables["temperature"],
        classifier=(classifier["weight"], classifier["bias"]) if classifier else None,
        **settings,
    )


def num_special_tokens(config) -> int:
    """CLS, plus DeiT's distillation token, plus Dinov2's registers."""
    return 1 + (config.model_type == "deit") + getattr(config, "num_register_tokens", 0)


def reference_forward(base: nn.Module, pixel_values: torch.Tensor, adapter: Optional[Adapter] = None) -> torch.Tensor:
    """Logits (models with a ``classifier``) or the final-LayerNorm sequence (bare models) of ``base`` with
    ``adapter`` applied as METHOD.md defines it (eval mode: no prompt dropout). ``adapter=None``: the plain model."""
    inner = getattr(base, "base_model", base)
    config = base.config
    blocks = _blocks(inner)
    num_blocks = len(blocks)
    special = num_special_tokens(config)
    if adapter is not None:
        _check_layout(adapter, num_blocks)

    z = _embed(inner, pixel_values)
    batch = z.shape[0]
    for index, block in enumerate(blocks):
        prompted = adapter is not None and index >= adapter.start
        if prompted and index in adapter.prompts:
            fresh = adapter.prompts[index].unsqueeze(0).expand(batch, -1, -1)
            if index == adapter.start:  # insert right after the special tokens, no position embedding
                z = torch.cat((z[:, :special], fresh, z[:, special:]), dim=1)
            else:  # deep: discard the carried prompts
                z = torch.cat((z[:, :special], fresh, z[:, special + adapter.num_prompts :]), dim=1)
        tau = 1.0
        if prompted and index in adapter.temperatures:
            tau = adapter.temperatures[index].clamp(TEMPERATURE_MIN, TEMPERATURE_MAX)
        p_in = z[:, special : special + adapter.num_prompts] if prompted else None
        out = _block(block, z, tau, config)
        if prompted and index in adapter.gates:
            g = torch.sigmoid(adapter.gates[index])
            p_out = out[:, special : special + adapter.num_prompts]
            out = torch.cat((out[:, :special], g * p_out + (1 - g) * p_in, out[:, special + adapter.num_prompts :]), dim=1)
        z = out

    if adapter is not None:
        if adapter.pooling == "mean":  # MAE head: mean of every non-CLS row, prompts included, then the norm
            z = torch.cat((z[:, 1:].mean(dim=1, keepdim=True), z[:, 1:]), dim=1)
        z = torch.cat((z[:, :special], z[:, special + adapter.num_prompts :]), dim=1)
    final_norm = inner.layernorm
    sequence = F.layer_norm(z, final_norm.normalized_shape, final_norm.weight, final_norm.bias, final_norm.eps)
    if not hasattr(base, "classifier"):
        return sequence
    weight, bias = adapter.classifier if adapter is not None and adapter.classifier else (base.classifier.weight, base.classifier.bias)
    return sequence[:, 0] @ weight.T + bias


def _check_layout(adapter: Adapter, num_blocks: int) -> None:
    """The parameters METHOD.md prescribes, block by block: prompts at the start block (deep: at every later block
    too), gates for blocks start..L-2, temperatures for blocks start..L-1."""
    prompted = range(adapter.start, num_blocks)
    expected_prompts = set(prompted) if adapter.mode == "deep" else {adapter.start}
    assert set(adapter.prompts) == expected_prompts, (sorted(adapter.prompts), sorted(expected_prompts))
    assert set(adapter.gates) == (set(prompted) - {num_blocks - 1} if adapter.gated else set()), sorted(adapter.gates)
    assert set(adapter.temperatures) == (set(prompted) if adapter.learnable_temperature else set()), sorted(adapter.temperatures)


def _blocks(inner: nn.Module) -> list[nn.Module]:
    found = getattr(inner, "layers", None)
    if found is None:
        found = inner.encoder.layer
    return list(found)


def _embed(inner: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    embeddings = inner.embeddings
    if hasattr(embeddings, "random_masking"):  # ViTMAE: keep every patch in its order
        num_patches = embeddings.patch_embeddings.num_patches
        noise = torch.arange(num_patches, dtype=torch.float32).expand(pixel_values.shape[0], -1)
        return embeddings(pixel_values, noise=noise)[0]
    return embeddings(pixel_values)


def _layer_norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


def _linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ module.weight.T + (module.bias if module.bias is not None else 0)


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    assert name == "gelu", f"the reference knows only exact gelu, not {name!r}"
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _attention(attention: nn.Module, x: torch.Tensor, tau, num_heads: int) -> torch.Tensor:
    batch, length, _ = x.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, length, num_heads, -1).transpose(1, 2)

    q, k, v = heads(_linear(attention.q_proj, x)), heads(_linear(attention.k_proj, x)), heads(_linear(attention.v_proj, x))
    d_head = q.shape[-1]
    logits = q @ k.transpose(-1, -2) / (math.sqrt(d_head) * tau)
    weights = torch.softmax(logits, dim=-1)
    mixed = (weights @ v).transpose(1, 2).reshape(batch, length, -1)
    return _linear(attention.o_proj, mixed)


def _block(block: nn.Module, x: torch.Tensor, tau, config) -> torch.Tensor:
    heads = config.num_attention_heads
    if hasattr(block, "layer_scale1"):  # Dinov2: norm1/norm2 and per-channel layer scales
        x = x + _attention(block.attention, _layer_norm(block.norm1, x), tau, heads) * block.layer_scale1.lambda1
        h = _linear(block.mlp.fc2, _activation(config.hidden_act, _linear(block.mlp.fc1, _layer_norm(block.norm2, x))))
        return x + h * block.layer_scale2.lambda1
    x = x + _attention(block.attention, _layer_norm(block.layernorm_before, x), tau, heads)
    h = _linear(block.mlp.fc2, _activation(config.hidden_act, _linear(block.mlp.fc1, _layer_norm(block.layernorm_after, x))))
    return x + h
