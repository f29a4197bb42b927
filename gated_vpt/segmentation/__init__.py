"""Semantic segmentation with gated prompts: SETR-PUP heads on a prompted ViT-family backbone (paper, ADE20K).

The model side needs only the core's dependencies; data loading (``gated_vpt.segmentation.data``) needs the
``train`` extras and is imported on demand.
"""

from .model import (
    HEAD_CONFIG_NAME,
    SegmentationHeadConfig,
    SegmentationModel,
    get_segmentation_peft_model,
    load_pretrained_backbone,
    load_segmentation_adapter,
    save_segmentation_adapter,
)
from .setr import AuxiliaryHeads, ProgressiveUpsamplingHead
from . import task  # noqa: F401  (registers segmentation in gated_vpt.tasks, where the model card reads it)

__all__ = [
    "HEAD_CONFIG_NAME",
    "AuxiliaryHeads",
    "ProgressiveUpsamplingHead",
    "SegmentationHeadConfig",
    "SegmentationModel",
    "get_segmentation_peft_model",
    "load_pretrained_backbone",
    "load_segmentation_adapter",
    "save_segmentation_adapter",
]
