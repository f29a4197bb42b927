"""Prototypes of proposed changes to the core, applied to one model at run time to measure their effect.

They never change files in ``gated_vpt/``; a benchmark applies one with ``--prototype NAME`` and its report says
so. Each is the smallest stand-in for a change proposed in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from gated_vpt.layer import GatedPromptBlock


class _ScaledLinear(torch.autograd.Function):
    """``F.linear(x, weight * scale, bias * scale)`` for a scalar ``scale`` with a gradient.

    The scale is applied to the (hidden x hidden) weight instead of the (batch x tokens x hidden) output, and its
    gradient is one dot product of the output gradient with the saved output (which the attention kernel saves
    anyway, so no extra memory): ``d scale = <g, out> / scale``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor):
        out = F.linear(x, weight * scale, None if bias is None else bias * scale)
        ctx.save_for_backward(x if weight.requires_grad else None, weight, out, scale)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, out, scale = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad @ (weight * scale) if ctx.needs_input_grad[0] else None
        grad_weight = scale * grad.flatten(0, -2).T @ x.flatten(0, -2) if ctx.needs_input_grad[1] else None
        grad_bias = scale * grad.flatten(0, -2).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_scale = torch.dot(grad.reshape(-1), out.reshape(-1)) / scale if ctx.needs_input_grad[3] else None
        return grad_x, grad_weight, grad_bias, grad_scale


def temperature_in_weight(model: nn.Module) -> None:
    """Apply the temperature to the query projection's weight instead of its output.

    Stand-in for the core change: replace ``GatedPromptBlock``'s forward hook on the query (``query / tau``, an
    element-wise pass over every query in forward and about four in backward) by ``_ScaledLinear`` with scale
    ``1 / tau``. Per-sample adapters (a temperature per sample) keep the hook's path.
    """
    for block in (m for m in model.modules() if isinstance(m, GatedPromptBlock)):
        query = block.base_layer.attention.q_proj
        block._query_hook.remove()

        def forward(x, block=block, query=query):
            name = block._adapter()
            if name is None or block._per_sample is not None or name not in block.gvpt_temperature:
                out = F.linear(x, query.weight, query.bias)
                scaled = block._scale_query(query, (x,), out)
                return out if scaled is None else scaled
            scale = 1 / block.gvpt_temperature[name]  # clamped in place before the forward (GatedPromptModel)
            return _ScaledLinear.apply(x, query.weight, query.bias, scale)

        query.forward = forward


class _GatePromptRows(torch.autograd.Function):
    """``gate_prompts`` without copying the sequence: the block output's prompt rows are mixed in place.

    Forward touches only the prompt rows (``out - (1 - g) * (out - p_in)``); backward makes one copy of the
    incoming gradient (prompt rows scaled by ``g``), instead of the concatenation and the three full-size slice
    gradients (zero-filled, then summed) that autograd builds for ``torch.cat`` of slices.
    """

    @staticmethod
    def forward(ctx, output: torch.Tensor, prompts_in: torch.Tensor, gate_logit: torch.Tensor, start: int):
        end = start + prompts_in.shape[1]
        gate = torch.sigmoid(gate_logit)
        delta = output[:, start:end] - prompts_in
        output[:, start:end].sub_(delta * (1 - gate))
        ctx.mark_dirty(output)
        ctx.save_for_backward(delta, gate)
        ctx.rows = (start, end)
        return output

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        delta, gate = ctx.saved_tensors
        start, end = ctx.rows
        rows = grad[:, start:end]
        grad_output = grad.clone()
        grad_output[:, start:end].mul_(gate)
        grad_prompts = rows * (1 - gate)
        grad_logit = (rows * delta).sum_to_size(gate.shape) * gate * (1 - gate)
        return grad_output, grad_prompts, grad_logit, None


_GATE_IN_PLACE_NOW = [False]


def gate_in_place(model: nn.Module) -> None:
    """Gate the prompt rows in place (``_GatePromptRows``) instead of ``torch.cat`` of three slices.

    Stand-in for the core change in ``gate.gate_prompts``. ``gated_vpt.layer`` calls that function by name, so it is
    replaced (once) by a dispatcher that takes the in-place path only while a block of a model given here runs.
    """
    import gated_vpt.layer

    if not hasattr(gated_vpt.layer.gate_prompts, "original"):
        original = gated_vpt.layer.gate_prompts

        def dispatch(block_output, prompts_in, gate_logit, num_special):
            if _GATE_IN_PLACE_NOW[0]:
                return _GatePromptRows.apply(block_output, prompts_in, gate_logit, num_special)
            return original(block_output, prompts_in, gate_logit, num_special)

        dispatch.original = original
        gated_vpt.layer.gate_prompts = dispatch
    for block in (m for m in model.modules() if isinstance(m, GatedPromptBlock)):
        block.register_forward_pre_hook(lambda module, args: _GATE_IN_PLACE_NOW.__setitem__(0, True))
        block.register_forward_hook(lambda module, args, output: _GATE_IN_PLACE_NOW.__setitem__(0, False))


PROTOTYPES: dict[str, Callable[[nn.Module], None]] = {
    "temperature-in-weight": temperature_in_weight,
    "gate-in-place": gate_in_place,
}
