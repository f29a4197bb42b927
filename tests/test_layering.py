"""The core (``import gated_vpt``) needs only torch, transformers, peft, safetensors and huggingface_hub.

(peft itself imports accelerate, so accelerate is not checked.)
"""

import subprocess
import sys

UPPER = ["gated_vpt.training", "gated_vpt.segmentation", "gated_vpt.cli", "gated_vpt.card", "gated_vpt.hub",
         "gated_vpt.recipes", "gated_vpt.convert", "datasets", "evaluate", "matplotlib", "tensorboard"]


def test_importing_the_core_loads_no_upper_layer():
    code = (
        "import sys, gated_vpt, gated_vpt.introspection, gated_vpt.loading\n"
        f"print([m for m in {UPPER!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
