"""SETR-PUP decoder heads (Zheng et al., CVPR 2021): progressive upsampling of ViT patch tokens to pixel logits.

A head takes one block's token sequence, keeps its patch rows, lays them out on the patch grid and runs a few
stages of ``conv 3x3 -> norm -> ReLU -> bilinear upsample`` until the input resolution is reached; a 1x1 conv
then gives one logit per class and pixel. The decode head uses ``log2(patch size)`` stages (x2 each: 4 for
patch 16), the auxiliary heads two stages (x4 each for patch 16), as in SETR-PUP.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

Norm = Literal["batch", "group"]


def patch_tokens(hidden_states: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """The patch rows of a block's output as a feature map ``(batch, hidden, grid_h, grid_w)``.

    In a prompted sequence ``[special tokens, prompts, patches]`` the patches are always the last
    ``grid_h * grid_w`` rows, whatever the number of special tokens and prompts.
    """
    grid_h, grid_w = grid_size
    num_patches = grid_h * grid_w
    if hidden_states.shape[1] < num_patches:
        raise ValueError(
            f"The block output has {hidden_states.shape[1]} tokens, fewer than the {grid_h}x{grid_w} patch grid "
            "derived from the input; the backbone's patch size and the decoder's do not match."
        )
    patches = hidden_states[:, -num_patches:]
    return patches.transpose(1, 2).reshape(hidden_states.shape[0], hidden_states.shape[2], grid_h, grid_w)


def num_upsampling_stages(patch_size: int) -> int:
    """Stages of x2 upsampling that bring a patch grid back to pixels: 4 for patch 16, 4 for patch 14, 3 for 8."""
    return max(1, math.ceil(math.log2(patch_size)))


def stage_sizes(grid_size: tuple[int, int], output_size: tuple[int, int], num_stages: int) -> list[tuple[int, int]]:
    """Output size of each stage: a geometric progression from the grid to ``output_size``, which the last stage
    reaches exactly (so patch sizes that are not powers of two, and inputs not divisible by the patch, work)."""
    sizes = []
    for stage in range(1, num_stages):
        fraction = stage / num_stages
        sizes.append(tuple(round(g * (o / g) ** fraction) for g, o in zip(grid_size, output_size)))
    sizes.append(tuple(output_size))
    return sizes


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"norm={kind!r} is not supported: use 'batch' (SETR's choice) or 'group' (for tiny batches).")


class UpsamplingStage(nn.Module):
    """``conv 3x3 -> norm -> ReLU -> bilinear resize``: one stage of progressive upsampling."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "batch") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = _norm(norm, out_channels)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        features = self.activation(self.norm(self.conv(features)))
        return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


class ProgressiveUpsamplingHead(nn.Module):
    """A SETR-PUP head: LayerNorm on the tokens, patch grid, ``num_stages`` upsampling stages, 1x1 classifier.

    Example:

    ```py
    >>> head = ProgressiveUpsamplingHead(hidden_size=768, num_labels=150, num_stages=4)
    >>> tokens = torch.randn(2, 1 + 100 + 14 * 14, 768)      # [CLS, 100 prompts, 14x14 patches] of a 224 px input
    >>> head(tokens, grid_size=(14, 14), output_size=(224, 224)).shape
    torch.Size([2, 150, 224, 224])
    ```
    """

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        num_stages: int,
        channels: int = 512,
        norm: Norm = "batch",
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"num_stages={num_stages} is invalid: a head needs at least one upsampling stage.")
        self.token_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.stages = nn.ModuleList(
            UpsamplingStage(hidden_size if i == 0 else channels, channels, norm) for i in range(num_stages)
        )
        self.classifier = nn.Conv2d(channels, num_labels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor, grid_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
        features = patch_tokens(self.token_norm(hidden_states), grid_size)
        for stage, size in zip(self.stages, stage_sizes(grid_size, output_size, len(self.stages))):
            features = stage(features, size)
        return self.classifier(features)


class AuxiliaryHeads(nn.Module):
    """SETR's auxiliary heads: one two-stage head per intermediate block, used for extra losses in training.

    Example:

    ```py
    >>> heads = AuxiliaryHeads(blocks=(5, 9), hidden_size=768, num_labels=150)
    >>> tokens = torch.randn(2, 1 + 100 + 14 * 14, 768)  # a block's [CLS, 100 prompts, 14x14 patches], 224 px input
    >>> logits = heads({5: tokens, 9: tokens}, grid_size=(14, 14), output_size=(224, 224))
    >>> {block: tuple(value.shape) for block, value in logits.items()}
    {5: (2, 150, 224, 224), 9: (2, 150, 224, 224)}
    ```
    """

    def __init__(
        self,
        blocks: Sequence[int],
        hidden_size: int,
        num_labels: int,
        num_stages: int = 2,
        channels: int = 512,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        self.blocks = tuple(int(b) for b in blocks)
        self.heads = nn.ModuleDict(
            {str(b): ProgressiveUpsamplingHead(hidden_size, num_labels, num_stages, channels, norm) for b in self.blocks}
        )

    def forward(
        self, block_outputs: dict[int, torch.Tensor], grid_size: tuple[int, int], output_size: tuple[int, int]
    ) -> dict[int, torch.Tensor]:
        return {b: self.heads[str(b)](block_outputs[b], grid_size, output_size) for b in self.blocks}
