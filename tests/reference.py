"""An independent plain-PyTorch computation of the forward pass in docs/HOW_IT_WORKS.md, to check gated_vpt against.

Nothing here goes through gated_vpt's code: the embeddings come from the frozen model's own embeddings module,
every encoder block is recomputed by hand from its weights (layer norms, q/k/v projections, attention logits
divided by ``sqrt(d_head) * tau``, softmax, output projection, MLP, residuals, Dinov2's layer scales, DINOv3's rotary
embeddings on the patch rows, with cos and sin from the model's own module), and so are the final norms and heads
(CLIP's pre-encoder LayerNorm, SigLIP's attention-pooling head, the classifiers); the prompts,
gates, temperatures and head pooling follow docs/HOW_IT_WORKS.md's equations and the README's per-backbone rules.
timm's VisionTransformer gets the same from its weights (``timm_reference_outputs``). The adapter's values are read
from a PeftModel by parameter name only (``read_adapter``).
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
_ADAPTER_KEY = re.compile(r"(?:^|\.)(?:layers?|blocks)\.(\d+)\.gvpt_(prompt|gate|temperature)\.(\w+)$")
CLASSIFIERS = ("classifier", "head")  # transformers' and timm's name for the task head


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
        elif key.endswith(tuple(f"{head}.modules_to_save.{name}.{kind}" for head in CLASSIFIERS for kind in ("weight", "bias"))):
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


NO_CLS = ("siglip_vision_model", "siglip", "ijepa")


def num_special_tokens(config) -> int:
    """CLS, plus DeiT's distillation token, plus Dinov2's registers; none for SigLIP and I-JEPA."""
    if config.model_type in NO_CLS:
        return 0
    return 1 + (config.model_type == "deit") + getattr(config, "num_register_tokens", 0)


def reference_forward(base: nn.Module, pixel_values: torch.Tensor, adapter: Optional[Adapter] = None) -> torch.Tensor:
    """Logits (models with a ``classifier``) or the last hidden state (bare models) of ``base`` with ``adapter``
    applied as docs/HOW_IT_WORKS.md defines it (eval mode: no prompt dropout). ``adapter=None``: the plain model."""
    outputs = reference_outputs(base, pixel_values, adapter)
    return outputs["logits"] if "logits" in outputs else outputs["last_hidden_state"]


def reference_outputs(base: nn.Module, pixel_values: torch.Tensor, adapter: Optional[Adapter] = None) -> dict:
    """``logits`` (models with a ``classifier``), or ``last_hidden_state`` and, where the model has one,
    ``pooler_output`` (bare models), as ``reference_forward`` defines them."""
    tower = _tower(base)
    config = getattr(base.config, "vision_config", None) or base.config
    blocks = _blocks(tower)
    num_blocks = len(blocks)
    special = num_special_tokens(base.config)
    if adapter is not None:
        _check_layout(adapter, num_blocks)

    z = _embed(tower, pixel_values)
    # DINOv3: rotary position embeddings (the model's own module gives cos and sin) on the patch rows, the last ones
    rotary = tower.rope_embeddings(pixel_values) if hasattr(tower, "rope_embeddings") else None
    if hasattr(tower, "pre_layrnorm"):  # CLIP: before the blocks, so prompts inserted at a block never pass it
        z = _layer_norm(tower.pre_layrnorm, z)
    z = _prompted_blocks(z, blocks, special, adapter, lambda block, z, tau: _block(block, z, tau, config, rotary))
    # where no head reads a CLS row (no CLS; CLIP's classifier averages rows 1:) the prompts stay in
    reads_cls_row = special > 0 and type(base).__name__ != "CLIPForImageClassification"
    z = _final_sequence(z, special, adapter, reads_cls_row)
    classifier = None
    if hasattr(base, "classifier"):
        classifier = adapter.classifier if adapter is not None and adapter.classifier else (base.classifier.weight, base.classifier.bias)
    return _head(base, tower, z, special, classifier, config)


def _prompted_blocks(
    z: torch.Tensor, blocks: list[nn.Module], special: int, adapter: Optional[Adapter], block_fn
) -> torch.Tensor:
    """The forward through the blocks (docs/HOW_IT_WORKS.md): prompts inserted (or replaced, deep) right after the ``special``
    tokens, each prompted block under its temperature (``block_fn(block, z, tau)``), its prompt rows gated."""
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
            stored = adapter.temperatures[index]
            # The released code clamps the stored value outside autograd and uses it as it is: the value is the
            # clamped one, the gradient flows to it even on a bound (torch >= 2.14's clamp has none there).
            tau = stored + (stored.detach().clamp(TEMPERATURE_MIN, TEMPERATURE_MAX) - stored.detach())
        p_in = z[:, special : special + adapter.num_prompts] if prompted else None
        out = block_fn(block, z, tau)
        if prompted and index in adapter.gates:
            g = torch.sigmoid(adapter.gates[index])
            p_out = out[:, special : special + adapter.num_prompts]
            out = torch.cat((out[:, :special], g * p_out + (1 - g) * p_in, out[:, special + adapter.num_prompts :]), dim=1)
        z = out
    return z


def _final_sequence(z: torch.Tensor, special: int, adapter: Optional[Adapter], reads_cls_row: bool) -> torch.Tensor:
    """The sequence the head sees (README): with CLS pooling the prompts leave; with mean pooling a head that reads the
    CLS row gets the mean of the non-special rows, prompts included, in that row, and any other head keeps them."""
    if adapter is not None and (adapter.pooling == "cls" or reads_cls_row):
        if adapter.pooling == "mean":
            z = torch.cat((z[:, special:].mean(dim=1, keepdim=True), z[:, 1:]), dim=1)
        z = torch.cat((z[:, :special], z[:, special + adapter.num_prompts :]), dim=1)
    return z


def timm_reference_outputs(model: nn.Module, pixel_values: torch.Tensor, adapter: Optional[Adapter] = None) -> dict:
    """``reference_outputs`` for timm's VisionTransformer, directly or in transformers' TimmWrapper classes:
    ``logits`` (what a timm model returns: class scores, or the pooled feature without a classifier;
    TimmWrapperForImageClassification's logits), or TimmWrapperModel's ``last_hidden_state`` and ``pooler_output``.

    The embeddings come from the model's own modules (patch embedding, prefix tokens and position embedding,
    ``norm_pre``); every block is recomputed from its weights: ``norm1``, the fused ``qkv`` projection split into
    queries, keys and values per head, the per-head ``q_norm``/``k_norm`` (qk_norm), logits over ``sqrt(d_head) * tau``,
    softmax, ``proj``, layer scale ``ls1`` (init_values), residual; ``norm2``, MLP, ``ls2``, residual. The head: the
    final ``norm``, then ``global_pool`` ('token': row 0; 'avg': the mean of the rows after the prefix tokens; 'map':
    the attention-pooling probe), then ``fc_norm``, then the classifier.
    """
    vit = getattr(model, "timm_model", model)
    special = vit.num_prefix_tokens
    blocks = list(vit.blocks)
    if adapter is not None:
        _check_layout(adapter, len(blocks))
    z = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(pixel_values))))
    z = _prompted_blocks(z, blocks, special, adapter, _timm_block)
    z = _final_sequence(z, special, adapter, reads_cls_row=vit.global_pool == "token")
    sequence = _maybe_layer_norm(vit.norm, z)
    if vit.global_pool == "token":
        pooled = sequence[:, 0]
    elif vit.global_pool == "avg":
        pooled = sequence[:, special:].mean(dim=1)
    else:
        assert vit.global_pool == "map", vit.global_pool
        pooled = _timm_attention_pool(vit.attn_pool, sequence[:, special:])
    pooled = _maybe_layer_norm(vit.fc_norm, pooled)
    if type(model).__name__ == "TimmWrapperModel":
        return {"last_hidden_state": sequence, "pooler_output": pooled}
    head = vit.head
    if isinstance(head, nn.Linear):
        weight, bias = adapter.classifier if adapter is not None and adapter.classifier else (head.weight, head.bias)
        pooled = pooled @ weight.T + bias
    return {"logits": pooled}


def _maybe_layer_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Identity):
        return x
    return _layer_norm(module, x)


def _timm_block(block: nn.Module, x: torch.Tensor, tau) -> torch.Tensor:
    """timm's Block with timm.layers.Attention, from its weights."""
    attn = block.attn
    assert all(isinstance(m, nn.Identity) for m in (attn.norm, block.mlp.norm)) and attn.gate is None
    assert type(block.mlp.act) is nn.GELU and block.mlp.act.approximate == "none", block.mlp.act
    batch, length, _ = x.shape
    qkv = _linear(attn.qkv, _layer_norm(block.norm1, x)).view(batch, length, 3, attn.num_heads, attn.head_dim)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    q, k = _maybe_layer_norm(attn.q_norm, q), _maybe_layer_norm(attn.k_norm, k)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (math.sqrt(attn.head_dim) * tau), dim=-1)
    attended = _linear(attn.proj, (weights @ v).transpose(1, 2).reshape(batch, length, -1))
    x = x + _timm_layer_scale(block.ls1, attended)
    mlp = _linear(block.mlp.fc2, _activation("gelu", _linear(block.mlp.fc1, _layer_norm(block.norm2, x))))
    return x + _timm_layer_scale(block.ls2, mlp)


def _timm_layer_scale(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x if isinstance(module, nn.Identity) else x * module.gamma


def _timm_attention_pool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's AttentionPoolLatent (global_pool='map'): learned latent queries attend over ``x``, then a residual MLP;
    its single latent's output."""
    assert pool.pos_embed is None and pool.latent_len == 1 and pool.pool == "token"
    batch, length, width = x.shape
    q = _linear(pool.q, pool.latent.expand(batch, -1, -1)).view(batch, 1, pool.num_heads, -1).transpose(1, 2)
    kv = _linear(pool.kv, x).view(batch, length, 2, pool.num_heads, -1)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    q, k = _maybe_layer_norm(pool.q_norm, q), _maybe_layer_norm(pool.k_norm, k)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    pooled = _linear(pool.proj, (weights @ v).transpose(1, 2).reshape(batch, 1, width))
    pooled = pooled + _linear(pool.mlp.fc2, _activation("gelu", _linear(pool.mlp.fc1, _layer_norm(pool.norm, pooled))))
    return pooled[:, 0]


def _head(base: nn.Module, tower: nn.Module, z: torch.Tensor, special: int, classifier, config) -> dict:
    """Each model's own final norm and head on the final sequence ``z``."""
    name = type(base).__name__
    if name.startswith("CLIP"):  # no norm on the sequence; pooler: post_layernorm on CLS; classifier: mean of rows 1:
        if classifier is not None:
            return {"logits": _linear_weights(classifier, z[:, 1:].mean(dim=1))}
        return {"last_hidden_state": z, "pooler_output": _layer_norm(tower.post_layernorm, z[:, 0])}
    final_norm = tower.post_layernorm if name.startswith("Siglip") else getattr(tower, "layernorm", None) or tower.norm
    sequence = _layer_norm(final_norm, z)
    if classifier is not None:  # SigLIP and I-JEPA average all (normed) rows, the ViT family reads row 0
        feature = sequence.mean(dim=1) if special == 0 else sequence[:, 0]
        return {"logits": _linear_weights(classifier, feature)}
    if name.startswith("Siglip"):
        return {"last_hidden_state": sequence, "pooler_output": _attention_pooling(tower.head, sequence, config)}
    if name.startswith("DINOv3"):
        return {"last_hidden_state": sequence, "pooler_output": sequence[:, 0]}
    return {"last_hidden_state": sequence}


def _attention_pooling(head: nn.Module, x: torch.Tensor, config) -> torch.Tensor:
    """SigLIP's head: a learned probe attends over ``x`` (torch's MultiheadAttention weights), then a residual MLP."""
    batch, length, width = x.shape
    num_heads = config.num_attention_heads
    w_q, w_k, w_v = head.attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = head.attention.in_proj_bias.chunk(3)
    q = (head.probe.expand(batch, 1, width) @ w_q.T + b_q).view(batch, 1, num_heads, -1).transpose(1, 2)
    k = (x @ w_k.T + b_k).view(batch, length, num_heads, -1).transpose(1, 2)
    v = (x @ w_v.T + b_v).view(batch, length, num_heads, -1).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    pooled = _linear(head.attention.out_proj, (weights @ v).transpose(1, 2).reshape(batch, 1, width))
    pooled = pooled + _mlp(head.mlp, _layer_norm(head.layernorm, pooled), config.hidden_act)
    return pooled[:, 0]


def _linear_weights(weight_and_bias: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    weight, bias = weight_and_bias
    return x @ weight.T + bias


def _check_layout(adapter: Adapter, num_blocks: int) -> None:
    """The parameters the method prescribes, block by block: prompts at the start block (deep: at every later block
    too), gates for blocks start..L-2, temperatures for blocks start..L-1."""
    prompted = range(adapter.start, num_blocks)
    expected_prompts = set(prompted) if adapter.mode == "deep" else {adapter.start}
    assert set(adapter.prompts) == expected_prompts, (sorted(adapter.prompts), sorted(expected_prompts))
    assert set(adapter.gates) == (set(prompted) - {num_blocks - 1} if adapter.gated else set()), sorted(adapter.gates)
    assert set(adapter.temperatures) == (set(prompted) if adapter.learnable_temperature else set()), sorted(adapter.temperatures)


def _tower(base: nn.Module) -> nn.Module:
    """The module holding the embeddings and the blocks."""
    if hasattr(base, "rope_embeddings"):  # DINOv3ViTModel: its base_model attribute is its block stack
        return base
    inner = getattr(base, "base_model", base)
    return getattr(inner, "vision_model", inner)


def _blocks(tower: nn.Module) -> list[nn.Module]:
    found = getattr(tower, "layers", None)
    if hasattr(tower, "rope_embeddings"):  # DINOv3
        found = tower.model.layer
    if found is None:
        found = getattr(tower.encoder, "layers", None) or tower.encoder.layer
    return list(found)


def _embed(tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    embeddings = tower.embeddings
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
    if name == "gelu":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if name == "quick_gelu":  # CLIP
        return x * torch.sigmoid(1.702 * x)
    assert name == "gelu_pytorch_tanh", f"the reference does not know the activation {name!r}"  # SigLIP
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _mlp(mlp: nn.Module, x: torch.Tensor, activation: str) -> torch.Tensor:
    if hasattr(mlp, "gate_proj"):  # DINOv3's gated MLP
        return _linear(mlp.down_proj, _activation(activation, _linear(mlp.gate_proj, x)) * _linear(mlp.up_proj, x))
    if hasattr(mlp, "up_proj"):  # DINOv3
        return _linear(mlp.down_proj, _activation(activation, _linear(mlp.up_proj, x)))
    return _linear(mlp.fc2, _activation(activation, _linear(mlp.fc1, x)))


def _rotate(t: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """RoPE on the last ``len(cos)`` rows (the patches): each half-pair (x1, x2) turns to (x1 cos - x2 sin, x2 cos + x1 sin)."""
    cos, sin = rotary
    prefix, patches = t[..., : -cos.shape[-2], :], t[..., -cos.shape[-2] :, :]
    first, second = patches.chunk(2, dim=-1)
    turned = patches * cos + torch.cat((-second, first), dim=-1) * sin
    return torch.cat((prefix, turned), dim=-2)


def _attention(attention: nn.Module, x: torch.Tensor, tau, num_heads: int, rotary=None) -> torch.Tensor:
    batch, length, _ = x.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, length, num_heads, -1).transpose(1, 2)

    q, k, v = heads(_linear(attention.q_proj, x)), heads(_linear(attention.k_proj, x)), heads(_linear(attention.v_proj, x))
    if rotary is not None:
        q, k = _rotate(q, rotary), _rotate(k, rotary)
    d_head = q.shape[-1]
    logits = q @ k.transpose(-1, -2) / (math.sqrt(d_head) * tau)
    weights = torch.softmax(logits, dim=-1)
    mixed = (weights @ v).transpose(1, 2).reshape(batch, length, -1)
    return _linear(getattr(attention, "o_proj", None) or attention.out_proj, mixed)


def _block(block: nn.Module, x: torch.Tensor, tau, config, rotary=None) -> torch.Tensor:
    heads, act = config.num_attention_heads, config.hidden_act
    if hasattr(block, "layer_scale1"):  # Dinov2 and DINOv3: norm1/norm2 and per-channel layer scales
        x = x + _attention(block.attention, _layer_norm(block.norm1, x), tau, heads, rotary) * block.layer_scale1.lambda1
        return x + _mlp(block.mlp, _layer_norm(block.norm2, x), act) * block.layer_scale2.lambda1
    if hasattr(block, "self_attn"):  # CLIP and SigLIP: layer_norm1/layer_norm2, self_attn with out_proj
        x = x + _attention(block.self_attn, _layer_norm(block.layer_norm1, x), tau, heads)
        return x + _mlp(block.mlp, _layer_norm(block.layer_norm2, x), act)
    x = x + _attention(block.attention, _layer_norm(block.layernorm_before, x), tau, heads)
    return x + _mlp(block.mlp, _layer_norm(block.layernorm_after, x), act)
