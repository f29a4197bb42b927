"""The core (``import gated_vpt``) needs only torch, transformers, peft, safetensors and huggingface_hub.

(peft itself imports accelerate, so accelerate is not checked.)
"""

UPPER = ["gated_vpt.training", "gated_vpt.segmentation", "gated_vpt.cli", "gated_vpt.card", "gated_vpt.hub",
         "gated_vpt.recipes", "gated_vpt.convert", "datasets", "evaluate", "matplotlib", "tensorboard"]


def test_importing_the_core_loads_no_upper_layer(fresh_process):
    assert "gated_vpt.loading" in fresh_process["modules_after_core_import"]
    assert [m for m in UPPER if m in fresh_process["modules_after_core_import"]] == []
