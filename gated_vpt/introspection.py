"""What an adapter learned: per-block gates, temperatures and the paper's selection ratio."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .gate import TEMPERATURE_RANGE, selection_weights
from .loading import read_adapter_files

_CANONICAL_KEY = re.compile(r"encoder\.layer\.(\d+)\.gvpt_(gate|temperature)$")


@dataclass(frozen=True)
class BlockReport:
    """One encoder block: its gate ``g = sigmoid(gamma)`` (None where the block has no gate: the last block,
    blocks before the insertion block, or ungated variants), its effective temperature, and the share of the
    last block's prompt input that this block's output makes up (``weight``) and its normalised form
    (``selection_ratio``, the quantity the paper plots)."""

    block: int
    gate: Optional[float]
    gate_logit: Optional[float]
    temperature: Optional[float]
    weight: Optional[float]
    selection_ratio: Optional[float]


@dataclass(frozen=True)
class GateReport:
    """Per-block gates of one adapter.

    Example:

    ```py
    >>> from peft import get_peft_model
    >>> from transformers import ViTConfig, ViTForImageClassification
    >>> from gated_vpt import GatedPromptConfig
    >>> base = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
    ...     num_attention_heads=2, intermediate_size=64, num_labels=3))
    >>> report = gate_report(get_peft_model(base, GatedPromptConfig()))  # or gate_report("path/to/adapter")
    >>> print(report.format_table())  # before training: gates sigmoid(-5)
    | block | gate | temperature | selection ratio |
    |---:|---:|---:|---:|
    | 0 | 0.0067 | 1.0000 | 0.3311 |
    | 1 | 0.0067 | 1.0000 | 0.3333 |
    | 2 | 0.0067 | 1.0000 | 0.3356 |
    | 3 | - | 1.0000 | - |
    <BLANKLINE>
    Share of the inserted prompts reaching the last block unchanged: 0.9801
    >>> round(report.prompt_weight, 4)  # share of the inserted prompts left at the last block
    0.9801
    ```
    """

    blocks: tuple[BlockReport, ...]
    prompt_weight: Optional[float]

    def to_dict(self) -> dict:
        return {"blocks": [asdict(b) for b in self.blocks], "prompt_weight": self.prompt_weight}

    def format_table(self) -> str:
        def show(value: Optional[float]) -> str:
            return "-" if value is None else f"{value:.4f}"

        rows = ["| block | gate | temperature | selection ratio |", "|---:|---:|---:|---:|"]
        rows += [f"| {b.block} | {show(b.gate)} | {show(b.temperature)} | {show(b.selection_ratio)} |" for b in self.blocks]
        if self.prompt_weight is not None:
            rows.append(f"\nShare of the inserted prompts reaching the last block unchanged: {self.prompt_weight:.4f}")
        return "\n".join(rows)


def gate_report(source: Union[nn.Module, str, Path], adapter_name: str = "default") -> GateReport:
    """Report the gates of ``adapter_name`` in a model, or of a saved adapter directory."""
    if isinstance(source, nn.Module):
        num_blocks, gates, temperatures = _from_model(source, adapter_name)
    else:
        num_blocks, gates, temperatures = _from_directory(Path(source))
    return _build(num_blocks, gates, temperatures)


def _from_model(model: nn.Module, adapter_name: str) -> tuple[int, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    from .layer import GatedPromptBlock  # peft and transformers: a saved adapter is reported without them

    blocks = [m for m in model.modules() if isinstance(m, GatedPromptBlock)]
    if not blocks:
        raise ValueError("This model has no gated_vpt adapter; create one with get_peft_model(model, GatedPromptConfig()).")
    if not any(adapter_name in b.gvpt_config for b in blocks):
        raise ValueError(f"No gated_vpt adapter named {adapter_name!r}; available: {blocks[0]._all_available_adapter_names()}.")
    gates = {b.index: b.gvpt_gate[adapter_name] for b in blocks if adapter_name in b.gvpt_gate}
    temperatures = {b.index: b.gvpt_temperature[adapter_name] for b in blocks if adapter_name in b.gvpt_temperature}
    return blocks[0].num_blocks, gates, temperatures


def _from_directory(path: Path) -> tuple[int, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    config, state_dict = read_adapter_files(path)
    found: dict[str, dict[int, torch.Tensor]] = {"gate": {}, "temperature": {}}
    for key, value in state_dict.items():
        match = _CANONICAL_KEY.search(key)
        if match:
            found[match.group(2)][int(match.group(1))] = value
    return config["backbone"]["num_hidden_layers"], found["gate"], found["temperature"]


def _build(num_blocks: int, gates: dict[int, torch.Tensor], temperatures: dict[int, torch.Tensor]) -> GateReport:
    with torch.no_grad():
        gated = sorted(gates)
        values = torch.sigmoid(torch.stack([gates[i].float() for i in gated])) if gated else None
        weights, residual = selection_weights(values) if gated else (None, None)
        total = None if weights is None else weights.sum()
        blocks = []
        for index in range(num_blocks):
            position = gated.index(index) if index in gates else None
            blocks.append(
                BlockReport(
                    block=index,
                    gate=None if position is None else values[position].item(),
                    gate_logit=None if position is None else gates[index].item(),
                    temperature=temperatures[index].float().clamp(*TEMPERATURE_RANGE).item() if index in temperatures else None,
                    weight=None if position is None else weights[position].item(),
                    selection_ratio=None if position is None else (weights[position] / total).item(),
                )
            )
    return GateReport(blocks=tuple(blocks), prompt_weight=None if residual is None else residual.item())
