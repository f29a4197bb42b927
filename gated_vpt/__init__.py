"""gated-vpt: gated visual prompt tuning (Yoo et al., ICML 2023) as a peft method for transformers' ViT family.

Importing the package registers the method with peft, so ``peft.get_peft_model(model, GatedPromptConfig(...))``
and ``PeftModel.from_pretrained(base, adapter_dir)`` work.
"""

import sys
from pathlib import Path

__version__ = "0.1.0"

# The gated-vpt command imports only what each subcommand needs (its --help answers in well under a second, before
# torch, transformers and peft would be loaded); everywhere else importing the package registers the method.
if Path((getattr(sys, "argv", None) or [""])[0]).name not in ("gated-vpt", "gated-vpt.exe"):
    from .backbones import BACKBONES, supported_model_types
    from .config import GatedPromptConfig
    from .heads import init_classifier_
    from .introspection import BlockReport, GateReport, gate_report
    from .layer import GatedPromptBlock
    from .loading import load_adapter
    from .model import GatedPromptModel
    from .registration import register

    register()

__all__ = [
    "BACKBONES",
    "BlockReport",
    "GateReport",
    "GatedPromptBlock",
    "GatedPromptConfig",
    "GatedPromptModel",
    "gate_report",
    "init_classifier_",
    "load_adapter",
    "supported_model_types",
]
