"""Semantic segmentation as model cards and the Hub show it: its entry in ``gated_vpt.tasks``, registered when
``gated_vpt.segmentation`` is imported (the card itself knows no segmentation)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from peft import PeftModel

from ..recipes import SEGMENTATION
from ..tasks import INSTALL, LOCAL_NOTE, Task, register_task
from .model import BACKBONE_CLASSES, DEFAULT_BACKBONE_CLASS, HEAD_MODULES, SegmentationHeadConfig


def _usage_section(
    adapter_id: str, base_model: Optional[str], settings: dict, local_base: bool, num_labels: Optional[int]
) -> str:
    model_type = (settings.get("backbone") or {}).get("model_type")
    backbone_class, arguments = BACKBONE_CLASSES.get(model_type, DEFAULT_BACKBONE_CLASS)
    base_id = base_model or "<the base model this adapter was trained on>"
    extra = "".join(f", {name}={value!r}" for name, value in arguments.items())
    return f"""## Usage

```python
import gated_vpt  # registers the gated_vpt method with peft
from gated_vpt.segmentation import load_segmentation_adapter
from transformers import {backbone_class}

adapter_id = "{adapter_id}"
backbone = {backbone_class}.from_pretrained("{base_id}"{extra}){LOCAL_NOTE if local_base else ""}
model = load_segmentation_adapter(backbone, adapter_id).eval()
# model(pixel_values).logits: (batch, classes, height, width) at the input size; sliding-window and
# multi-scale prediction: gated_vpt.segmentation.inference.predict
```

The head settings (classes and their names, ignore index, auxiliary blocks) are in `segmentation_head.json`.
From the command line ({INSTALL}):

```bash
gated-vpt info {adapter_id}
```"""


def _save_head_config(model: PeftModel, directory: Path) -> None:
    head_config = getattr(model.get_base_model(), "head_config", None)
    if isinstance(head_config, SegmentationHeadConfig):
        head_config.save(directory)


SEGMENTATION_TASK = register_task(Task(
    SEGMENTATION, "image-segmentation", "Semantic Segmentation", "the SETR-PUP decode and auxiliary heads",
    head_modules=HEAD_MODULES, usage=_usage_section, save_files=_save_head_config,
))
