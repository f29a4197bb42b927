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


def gate_prompts(block_output: torch.Tensor, prompts_in: torch.Tensor, gate_logit: torch.Tensor, num_special: int) -> torch.Tensor:
    """Return ``block_output`` with its prompt rows replaced by ``g * out + (1 - g) * prompts_in``.

    CLS, other special tokens and patches keep the block's output unchanged. ``gate_logit`` is a scalar or
    broadcasts against (batch, 1, 1).
    """
    end = num_special + prompts_in.shape[1]
    gate = torch.sigmoid(gate_logit)
    mixed = torch.lerp(prompts_in, block_output[:, num_special:end], gate)
    return torch.cat((block_output[:, :num_special], mixed, block_output[:, end:]), dim=1)


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
