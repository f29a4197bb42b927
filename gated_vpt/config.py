"""Configuration of gated visual prompt tuning (Yoo et al., ICML 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from .peft_type import extend_peft_type
from .settings import METHOD_NAME, GatedPromptSettings


@dataclass
class GatedPromptConfig(PeftConfig, GatedPromptSettings):
    """Configuration of a gated prompt adapter for a transformers ViT-family backbone: the method's settings
    (``gated_vpt.settings``, where their rules are) plus peft's adapter fields.

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

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Filled in from the backbone table (the encoder blocks); not meant to be set by hand."},
    )

    def note_source(self, path_or_repo_id: str, subfolder: Optional[str] = None, *, config_given: bool, **kwargs) -> None:
        """Note the adapter files this config is about to be loaded with (peft's config loader does, see
        ``gated_vpt.registration``): peft and transformers read the weights only after they have changed the model,
        so ``GatedPromptModel`` reads and checks them from this source first. ``config_given``:
        the config was passed to ``PeftModel.from_pretrained(..., config=...)``, so the files' own config is not
        used."""
        download = {key: kwargs.get(key) for key in ("revision", "token", "cache_dir")}
        self._source = (dict(path_or_repo_id=path_or_repo_id, subfolder=subfolder, **download), config_given)

    def __post_init__(self) -> None:
        super().__post_init__()  # PeftConfig's
        self.peft_type = extend_peft_type(METHOD_NAME)
        GatedPromptSettings.__post_init__(self)
