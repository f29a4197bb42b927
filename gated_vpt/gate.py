"""The gate and the attention temperature: the two per-block scalars of gated prompt tuning.

The gate is stored as its logit ``gamma`` (``g = sigmoid(gamma)``, starting at ``-gate_init``) and mixes a block's
prompt output with the prompts that entered that block. The temperature ``tau`` is stored as itself and divides
the attention logits; it is folded into the query so any attention kernel (eager, sdpa, flex) can run it. As in the
paper's released code, the stored temperature is clamped in place to ``TEMPERATURE_RANGE`` before every forward
pass (``clamp_temperatures_``, outside autograd), and the forward uses the stored value as it is: a temperature that
an optimizer step pushed past a bound sits exactly on it at the next forward and leaves it the first step the
gradient turns.
"""

from __future__ import annotations

from typing import Iterable

import torch

TEMPERATURE_RANGE = (0.01, 10.0)


def gate_prompts(
    block_output: torch.Tensor, prompts_in: torch.Tensor, gate_logit: torch.Tensor, num_special: int, in_place: bool = False
) -> torch.Tensor:
    """Return ``block_output`` with its prompt rows replaced by ``g * out + (1 - g) * prompts_in``.

    CLS, other special tokens and patches keep the block's output unchanged. ``gate_logit`` is a scalar or
    broadcasts against (batch, 1, 1). ``in_place=True`` writes into ``block_output`` (which no one else may hold);
    otherwise it is copied once. Either way the backward pass keeps only the prompt rows' change (batch, P, D), not
    the block output.
    """
    return _GatePromptRows.apply(block_output, prompts_in, gate_logit, num_special, in_place)


class _GatePromptRows(torch.autograd.Function):
    """The gate on the prompt rows only: no concatenation of the sequence, and a backward pass that makes one copy
    of the incoming gradient (prompt rows scaled by ``g``) instead of autograd's zero-filled slice gradients."""

    @staticmethod
    def forward(ctx, output, prompts_in, gate_logit, start, in_place):
        end = start + prompts_in.shape[1]
        gate = torch.sigmoid(gate_logit)
        rows = output[:, start:end]
        delta = rows - prompts_in
        mixed = torch.lerp(prompts_in, rows, gate)
        if not in_place:
            output = output.clone()
        output[:, start:end] = mixed
        if in_place:
            ctx.mark_dirty(output)
        ctx.save_for_backward(delta, gate)
        ctx.rows = (start, end)
        return output

    @staticmethod
    def backward(ctx, grad):
        delta, gate = ctx.saved_tensors
        start, end = ctx.rows
        rows = grad[:, start:end]
        grad_output = grad.clone()
        grad_output[:, start:end].mul_(gate)
        grad_prompts = rows * (1 - gate) if ctx.needs_input_grad[1] else None
        grad_logit = None
        if ctx.needs_input_grad[2]:
            grad_logit = (rows * delta).sum_to_size(gate.shape) * gate * (1 - gate)
        return grad_output, grad_prompts, grad_logit, None, None


def divide_query(query: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``query / temperature``, contiguous in ``query``'s dimension order, keeping only the result for the backward
    pass, which the attention kernel keeps anyway: no extra activation per block (autograd's division would keep the
    undivided query as well).

    ``temperature`` is a scalar or holds one value per sample (any shape with the batch first and ones after).
    """
    if temperature.dim():
        temperature = temperature.reshape(temperature.shape[0], *(1,) * (query.dim() - 1))
    return _DivideQuery.apply(query, temperature)


class _DivideQuery(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, temperature):
        out = torch.div(query, temperature, out=torch.empty(query.shape, dtype=query.dtype, device=query.device))
        ctx.save_for_backward(out, temperature)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, temperature = ctx.saved_tensors
        grad_query = grad / temperature if ctx.needs_input_grad[0] else None
        grad_temperature = None
        if ctx.needs_input_grad[1]:
            # d(q / t)/dt = -q / t**2 = -out / t
            grad_temperature = -(grad * out).sum_to_size(temperature.shape) / temperature
        return grad_query, grad_temperature


def clamp_temperatures_(temperatures: Iterable[torch.Tensor]) -> None:
    """Clamp stored temperatures in place to ``TEMPERATURE_RANGE``, outside autograd.

    ``GatedPromptModel`` calls this at the start of every forward pass of the backbone, before any block runs, so
    it holds for any training loop. It writes through ``.data``, which leaves the parameters' autograd version
    counters alone: a graph that saved a temperature (two forwards before one backward, gradient checkpointing's
    recomputation) stays valid, and an in-range value is not changed at all.
    """
    for temperature in temperatures:
        temperature.data.clamp_(*TEMPERATURE_RANGE)


def selection_weights(gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unroll the gates of blocks ``k..L-2``: the weight ``g~_l = g_l * prod_{j>l} (1 - g_j)`` that each block's
    prompt output carries into the last block, and the weight ``prod_l (1 - g_l)`` left on the inserted prompts.
    The weights and the residual sum to one.
    """
    keep = 1 - gates
    later = torch.cat((torch.flip(torch.cumprod(torch.flip(keep, (0,)), 0), (0,))[1:], keep.new_ones(1)))
    return gates * later, torch.prod(keep)
