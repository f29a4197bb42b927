"""Configuration of gated visual prompt tuning (Yoo et al., ICML 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig

from .registration import METHOD_NAME, _extend_peft_type

PromptMode = Literal["shallow", "deep"]
HeadPooling = Literal["auto", "cls", "mean"]
# Attention costs grow with (patches + prompts)^2: ViT-B/16 at 224 px has 196 patches, the paper uses at most 100
# prompts, and 1024 already makes a block about 40 times as costly; more is a mistake or a hostile file.
MAX_PROMPT_TOKENS = 1024
BACKBONE_RECORD = {"model_type": str, "hidden_size": int, "num_hidden_layers": int, "num_special_tokens": int}


@dataclass
class GatedPromptConfig(PeftConfig):
    """Configuration of a gated prompt adapter for a transformers ViT-family backbone.

    The defaults are the paper's method: shallow prompts, one learned gate per block (logits start at
    ``-gate_init``) and one learnable attention temperature per block. The baselines are other settings of the
    same class: VPT-shallow is ``gated=False, learnable_temperature=False`` and VPT-deep is
    ``prompt_mode="deep"`` (no gates, no temperature, as in the paper).

    Example:

    ```py
    >>> import gated_vpt
    >>> from peft import get_peft_model
    >>> from transformers import ViTConfig, ViTForImageClassification
    >>> base = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
    ...     num_attention_heads=2, intermediate_size=64, num_labels=3))
    >>> model = get_peft_model(base, gated_vpt.GatedPromptConfig(num_prompt_tokens=4, gate_init=5.0))
    >>> model.print_trainable_parameters()  # 4 x 32 prompt values, 3 gate logits, 4 temperatures, the classifier (99)
    trainable params: 234 || all params: 41,325 || trainable%: 0.5662
    ```
    """

    num_prompt_tokens: int = field(default=5, metadata={"help": "Number of learnable prompt tokens P (per block in deep mode)."})
    prompt_mode: PromptMode = field(
        default="shallow",
        metadata={"help": "'shallow': one prompt set enters at `prompt_start_block` and is carried through the blocks; "
                  "'deep': a fresh prompt set replaces the carried prompts before every block from the start block on."},
    )
    gated: Optional[bool] = field(
        default=None,
        metadata={"help": "Learn one sigmoid gate per block (all but the last) that mixes each block's prompt output "
                  "with its prompt input. Default: True for shallow prompts, False for deep prompts."},
    )
    gate_init: float = field(
        default=5.0, metadata={"help": "Positive number; gate logits start at -gate_init (5 -> gates 0.0067). Paper: 1 to 20."}
    )
    learnable_temperature: Optional[bool] = field(
        default=None,
        metadata={"help": "Learn one attention temperature per block (init 1, clamped to [0.01, 10]) that divides the "
                  "attention logits. Default: True for shallow prompts, False for deep prompts."},
    )
    prompt_dropout: float = field(default=0.1, metadata={"help": "Dropout on the prompt embeddings only, in [0, 1)."})
    prompt_start_block: int = field(
        default=0,
        metadata={"help": "First block that sees prompts (paper Fig. 1); blocks before it run on the usual sequence."},
    )
    head_pooling: HeadPooling = field(
        default="auto",
        metadata={"help": "'cls': the prompts are removed after the last block and the model's readout sees the usual "
                  "sequence (the CLS token after the final LayerNorm: MoCo v3, supervised ViT, CLIP; SigLIP's "
                  "attention-pooling probe). 'mean': the head's feature is the mean of the non-special tokens, prompts "
                  "included: written into the CLS row where the head reads it (the paper's MAE head), kept in the "
                  "sequence where the head averages the tokens itself. 'auto': the paper's head per backbone (README)."},
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Filled in from the backbone table (the encoder blocks); not meant to be set by hand."},
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Modules trained and saved with the adapter besides the prompts, e.g. ['classifier']. "
                  "Default: the model's `classifier` when it has one."},
    )
    backbone: Optional[dict] = field(
        default=None,
        metadata={"help": "Shape of the backbone the adapter was made for (filled in when the adapter is created); "
                  "loading onto a different backbone is refused before any weight changes."},
    )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs) -> "GatedPromptConfig":
        """peft's loader, which also notes where the adapter lives: peft reads the weights only after it has
        changed the model, so ``GatedPromptModel`` reads and checks them from this source first."""
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        download = {key: kwargs.get(key) for key in ("revision", "token", "cache_dir")}
        config._source = dict(path_or_repo_id=pretrained_model_name_or_path, subfolder=subfolder, **download)
        return config

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = _extend_peft_type(METHOD_NAME)
        if self.gated is None:
            self.gated = self.prompt_mode == "shallow"
        if self.learnable_temperature is None:
            self.learnable_temperature = self.prompt_mode == "shallow"
        self._validate()

    def _validate(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"GatedPromptConfig.{name}={getattr(self, name)!r} is invalid: {allowed}.")

        if isinstance(self.num_prompt_tokens, bool) or not isinstance(self.num_prompt_tokens, int) or self.num_prompt_tokens < 1:
            fail("num_prompt_tokens", "use a positive integer (the paper uses 1 to 100)")
        if self.num_prompt_tokens > MAX_PROMPT_TOKENS:
            fail(
                "num_prompt_tokens",
                f"use at most {MAX_PROMPT_TOKENS} (the paper uses 1 to 100); attention cost grows with the square of "
                "patches plus prompts, so more prompts would make every forward pass impractically slow",
            )
        if self.prompt_mode not in ("shallow", "deep"):
            fail("prompt_mode", "use 'shallow' or 'deep'")
        for name in ("gated", "learnable_temperature"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "use True, False or leave it unset")
        if isinstance(self.gate_init, bool) or not isinstance(self.gate_init, (int, float)) or not 0 < self.gate_init <= 50:
            fail("gate_init", "use a positive number, the gate logits start at -gate_init (the paper uses 1 to 20)")
        if isinstance(self.prompt_dropout, bool) or not isinstance(self.prompt_dropout, (int, float)) or not 0 <= self.prompt_dropout < 1:
            fail("prompt_dropout", "use a probability in [0, 1)")
        if isinstance(self.prompt_start_block, bool) or not isinstance(self.prompt_start_block, int) or self.prompt_start_block < 0:
            fail("prompt_start_block", "use a block index >= 0")
        if self.head_pooling not in ("auto", "cls", "mean"):
            fail("head_pooling", "use 'auto', 'cls' or 'mean'")
        if self.prompt_mode == "deep" and self.gated:
            raise ValueError(
                "GatedPromptConfig(prompt_mode='deep', gated=True) is invalid: deep prompts are replaced before every "
                "block, so a gate would never reach the output. Use gated=False with prompt_mode='deep', or "
                "prompt_mode='shallow' for gated prompts."
            )
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        if self.modules_to_save is not None and (
            not isinstance(self.modules_to_save, list) or not all(isinstance(m, str) and m for m in self.modules_to_save)
        ):
            fail("modules_to_save", "use a list of module names (e.g. ['classifier']), [] or leave it unset")
        if self.backbone is not None and not (
            isinstance(self.backbone, dict)
            and all(isinstance(self.backbone.get(k), t) and not isinstance(self.backbone.get(k), bool) for k, t in BACKBONE_RECORD.items())
            and all(self.backbone[k] > 0 for k in ("hidden_size", "num_hidden_layers")) and self.backbone["num_special_tokens"] >= 0
        ):
            fail("backbone", "it is filled in when the adapter is created: a JSON object with " + ", ".join(BACKBONE_RECORD))
        for name in ("base_model_name_or_path", "revision"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                fail(name, "use a string or leave it unset")
        if self.task_type is not None:
            fail("task_type", "leave it unset: gated_vpt adapters are not tied to a peft task type (the head goes in modules_to_save)")
