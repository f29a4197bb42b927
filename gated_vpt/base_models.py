"""Loading the base model an adapter goes on: the transformers class each checkpoint type needs, without
transformers' messages about what is intended here.

MAE checkpoints (``vit_mae``) have no classification class in transformers; their weights load into
``ViTForImageClassification``, which transformers reports with a model-type warning ("not supported and can yield
errors"), and a classifier that an adapter replaces is reported as newly initialised. Neither says anything
wrong, so ``load_base_model`` builds the class's config itself and reads the loading info instead: weights other
than the new classifier that are missing, unexpected or resized are still reported, as a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

from .quiet import transformers_loading

logger = logging.getLogger(__name__)

# transformers has no AutoModelForImageClassification entry for vit_mae (MAE weights load into ViT's head), nor for the
# bare CLIP and SigLIP vision towers, whose adapters are image feature extractors (pooler_output) for a head of one's own.
BASE_CLASSES = {
    "vit": "ViTForImageClassification",
    "vit_mae": "ViTForImageClassification",
    "clip_vision_model": "CLIPVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
    "dinov3_vit": "DINOv3ViTModel",
    "timm_vit": "TimmWrapperForImageClassification",  # timm's Hub repos load through transformers' wrapper
}
DEFAULT_BASE_CLASS = "AutoModelForImageClassification"
NEW_HEAD_PREFIX = ("classifier.", "timm_model.head.")  # transformers' new classifier, timm's in its wrapper


def load_base_model(
    model_name_or_path: Union[str, Path],
    num_labels: Optional[int] = None,
    *,
    id2label: Optional[dict[int, str]] = None,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    **kwargs,
):
    """A checkpoint (Hub id or local folder) in the class its model type needs (``BASE_CLASSES``; MAE weights in
    ``ViTForImageClassification``), with a classifier of ``num_labels`` outputs (or ``len(id2label)``, named by
    ``id2label``) that is new when the checkpoint's differs: the adapter or training supplies it. ``kwargs`` go to
    ``from_pretrained``.

    Example:

    ```py
    >>> import gated_vpt
    >>> from transformers import ViTMAEConfig, ViTMAEModel
    >>> ViTMAEModel(ViTMAEConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
    ...                          num_attention_heads=2, intermediate_size=64, mask_ratio=0.0)).save_pretrained("mae")
    >>> base = gated_vpt.load_base_model("mae", num_labels=10)  # no model-type warning, no load report
    >>> type(base).__name__, base.config.num_labels
    ('ViTForImageClassification', 10)
    ```
    """
    import transformers

    hub = {"revision": revision, "token": token}
    config = transformers.AutoConfig.from_pretrained(model_name_or_path, **hub)
    model_class = getattr(transformers, BASE_CLASSES.get(config.model_type, DEFAULT_BASE_CLASS))
    config_class = getattr(model_class, "config_class", None)
    if config_class is not None and not isinstance(config, config_class):
        config = config_class.from_dict(config.to_dict())  # keeps model_type (vit_mae: the MAE head's pooling)
    if id2label is not None:
        config.id2label = {int(i): str(name) for i, name in id2label.items()}
        config.label2id = {name: i for i, name in config.id2label.items()}
    elif num_labels is not None:
        config.num_labels = num_labels
    with transformers_loading():
        model, info = model_class.from_pretrained(
            model_name_or_path, config=config, ignore_mismatched_sizes=True, output_loading_info=True, **hub, **kwargs
        )
    surprises = {
        "missing": sorted(k for k in info["missing_keys"] if not k.startswith(NEW_HEAD_PREFIX)),
        "unexpected": sorted(info["unexpected_keys"]),
        "resized": sorted(str(k[0] if isinstance(k, tuple) else k) for k in info["mismatched_keys"]
                          if not str(k[0] if isinstance(k, tuple) else k).startswith(NEW_HEAD_PREFIX)),
    }
    for kind, keys in surprises.items():
        if keys:
            logger.warning(f"{model_name_or_path}: {len(keys)} {kind} weights when loading {model_class.__name__}: {keys[:5]}")
    return model
