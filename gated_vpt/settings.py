"""The settings of a gated prompt adapter and their rules, without peft.

``GatedPromptConfig`` is these settings plus peft's adapter fields, and validates them at construction. A saved
``adapter_config.json`` is checked against the same rules (``GatedPromptSettings.from_saved``) before anything is
loaded, without importing peft, so reading an adapter (``gated-vpt info``) starts quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal, Optional

# The names peft knows the method (its PeftType) and its parameters (the prefix of their names) by.
METHOD_NAME = "gated_vpt"
PREFIX = "gvpt_"

PromptMode = Literal["shallow", "deep"]
HeadPooling = Literal["auto", "cls", "mean"]
# Attention costs grow with (patches + prompts)^2: ViT-B/16 at 224 px has 196 patches, the paper uses at most 100
# prompts, and 1024 already makes a block about 40 times as costly; more is a mistake or a hostile file.
MAX_PROMPT_TOKENS = 1024
BACKBONE_RECORD = {"model_type": str, "hidden_size": int, "num_hidden_layers": int, "num_special_tokens": int}
# Bounds on a backbone record, far above any ViT (ViT-22B: 48 blocks of width 6144): a saved adapter's shapes are
# derived from the record before any model is at hand, so a hostile record must not make that work unbounded.
MAX_BACKBONE_RECORD = {"hidden_size": 65536, "num_hidden_layers": 1024, "num_special_tokens": 1024}


@dataclass
class GatedPromptSettings:
    """What a gated prompt adapter is: the method's settings (see ``GatedPromptConfig`` for their meaning) and
    the record of its backbone. Invalid values raise ``ValueError`` naming the setting and what to use.

    Example:

    ```py
    >>> settings = GatedPromptSettings(prompt_mode="deep")
    >>> settings.gated, settings.learnable_temperature  # the paper's VPT-deep: no gates, no temperature
    (False, False)
    >>> GatedPromptSettings(num_prompt_tokens=0)
    Traceback (most recent call last):
    ...
    ValueError: GatedPromptConfig.num_prompt_tokens=0 is invalid: use a positive integer (the paper uses 1 to 100).
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
    # peft's fields that gated_vpt reads (on GatedPromptConfig they are PeftConfig's own).
    base_model_name_or_path: Optional[str] = None
    revision: Optional[str] = None
    task_type: Optional[str] = None

    def __post_init__(self) -> None:
        if self.gated is None:
            self.gated = self.prompt_mode == "shallow"
        if self.learnable_temperature is None:
            self.learnable_temperature = self.prompt_mode == "shallow"
        self._validate()

    @classmethod
    def from_saved(cls, raw: object, where: str = "adapter_config.json") -> "GatedPromptSettings":
        """The settings of a saved ``adapter_config.json`` (parsed JSON), validated as at construction and with the
        record of the backbone it was made for; ``ValueError`` names what is wrong. Keys of peft's own (its version,
        ``inference_mode``, ...) and keys of newer releases are ignored, as peft does."""
        if not isinstance(raw, dict):
            raise ValueError(f"{where} holds a JSON {type(raw).__name__}, not an object of adapter settings; it is not an adapter config.")
        if raw.get("peft_type") != METHOD_NAME.upper():
            raise ValueError(
                f"{where} describes a {raw.get('peft_type')!r} adapter, not a gated_vpt one; load it with "
                "peft.PeftModel.from_pretrained instead."
            )
        settings = cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})
        settings.require_backbone_record(where)
        return settings

    def require_backbone_record(self, where: str) -> None:
        """A saved adapter must say which backbone it was made for: without it, its shapes cannot be checked."""
        if self.backbone is None:
            raise ValueError(
                f"{where} has no 'backbone' record (hidden size, number of blocks, special tokens), which every "
                "gated_vpt adapter saves; without it the weights cannot be checked, so the adapter is not loaded. "
                "Re-save it with gated_vpt."
            )

    def _validate(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"GatedPromptConfig.{name}={getattr(self, name)!r} is invalid: {allowed}.")

        if not is_integer(self.num_prompt_tokens) or self.num_prompt_tokens < 1:
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
        if not is_number(self.gate_init) or not 0 < self.gate_init <= 50:
            fail("gate_init", "use a positive number, the gate logits start at -gate_init (the paper uses 1 to 20)")
        if not is_number(self.prompt_dropout) or not 0 <= self.prompt_dropout < 1:
            fail("prompt_dropout", "use a probability in [0, 1)")
        if not is_integer(self.prompt_start_block) or self.prompt_start_block < 0:
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
        beyond = [f"{k} at most {bound}" for k, bound in MAX_BACKBONE_RECORD.items() if self.backbone and self.backbone[k] > bound]
        if beyond:
            fail("backbone", "no ViT-family backbone is that large: " + ", ".join(beyond))
        if self.backbone and self.prompt_start_block >= self.backbone["num_hidden_layers"]:
            fail("prompt_start_block", f"the backbone has {self.backbone['num_hidden_layers']} blocks: use a block index below that")
        for name in ("base_model_name_or_path", "revision"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                fail(name, "use a string or leave it unset")
        if self.task_type is not None:
            fail("task_type", "leave it unset: gated_vpt adapters are not tied to a peft task type (the head goes in modules_to_save)")


def is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
