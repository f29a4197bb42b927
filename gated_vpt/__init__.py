"""gated-vpt: gated visual prompt tuning (Yoo et al., ICML 2023) as a peft method for transformers' ViT family.

Importing the package registers the method with peft, so ``peft.get_peft_model(model, GatedPromptConfig(...))``
and ``PeftModel.from_pretrained(base, adapter_dir)`` work.
"""

from .backbones import BACKBONES, supported_model_types
from .config import GatedPromptConfig
from .fast_path import fast_path, fast_path_enabled, set_fast_path
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
    "fast_path",
    "fast_path_enabled",
    "gate_report",
    "init_classifier_",
    "load_adapter",
    "set_fast_path",
    "supported_model_types",
]
__version__ = "0.1.0"
