"""Local silencing of library messages that this package triggers on purpose, and nothing else.

Each context manager restores the previous state on exit, so other code's warnings and log messages are unaffected:

- ``peft_wrapping()``: peft 0.21 reads transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps a
  model (``get_peft_model``, ``PeftModel.from_pretrained``), which warns ``FutureWarning`` on every call; the
  warning is about peft's code, not the user's. ``gated_vpt.registration`` applies it to every ``PeftModel``
  built for a gated_vpt config, so ``get_peft_model`` and ``PeftModel.from_pretrained`` do not warn.
- ``transformers_loading()``: ``from_pretrained`` of MAE weights into ``ViTForImageClassification`` logs a
  model-type warning, a progress bar and a load report listing the new classifier; the caller checks the loading
  info itself (see ``gated_vpt.training.classification.load_image_classifier``).

Example:

```py
>>> import warnings
>>> from peft import get_peft_model
>>> from transformers import ViTConfig, ViTModel
>>> from gated_vpt import GatedPromptConfig
>>> from gated_vpt.quiet import peft_wrapping
>>> base = ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2))
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")  # show every warning ...
...     with peft_wrapping():  # ... but peft's use of the deprecated property
...         model = get_peft_model(base, GatedPromptConfig())
>>> [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)]
[]
```
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

from transformers.utils import logging as hf_logging

DEPRECATED_CHECKPOINTING_PROPERTY = "`is_gradient_checkpointing` is deprecated"


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Hide transformers' ``is_gradient_checkpointing`` deprecation warning that peft's wrapping raises."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DEPRECATED_CHECKPOINTING_PROPERTY, category=FutureWarning)
        yield


@contextmanager
def transformers_loading() -> Iterator[None]:
    """transformers' logging at error level and its progress bars off, restored afterwards."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
