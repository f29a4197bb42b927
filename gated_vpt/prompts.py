"""Prompt tokens: their initialisation and where they sit in the token sequence.

The sequence of a prompted block is ``[special tokens (CLS, ...), prompts, patches]``; prompts get no position
embedding and always sit right after all special tokens.
"""

from __future__ import annotations

import math

import torch


def prompt_init_bound(patch_size: tuple[int, int], num_channels: int, hidden_size: int) -> float:
    """VPT's xavier-uniform range for prompts: ``sqrt(6 / (channels * patch_h * patch_w + D))``."""
    return math.sqrt(6.0 / (num_channels * patch_size[0] * patch_size[1] + hidden_size))


def new_prompts(num_prompts: int, hidden_size: int, bound: float) -> torch.Tensor:
    return torch.empty(num_prompts, hidden_size).uniform_(-bound, bound)


def insert_prompts(hidden_states: torch.Tensor, prompts: torch.Tensor, num_special: int) -> torch.Tensor:
    """``[special, patches] -> [special, prompts, patches]``; ``prompts`` is (batch, P, D)."""
    return torch.cat((hidden_states[:, :num_special], prompts, hidden_states[:, num_special:]), dim=1)


def prompt_rows(hidden_states: torch.Tensor, num_special: int, num_prompts: int) -> torch.Tensor:
    return hidden_states[:, num_special : num_special + num_prompts]


def remove_prompts(hidden_states: torch.Tensor, num_special: int, num_prompts: int) -> torch.Tensor:
    """``[special, prompts, patches] -> [special, patches]``."""
    return torch.cat((hidden_states[:, :num_special], hidden_states[:, num_special + num_prompts :]), dim=1)
