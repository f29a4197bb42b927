"""What imports load: the core (``import gated_vpt``) needs only torch, transformers, peft, safetensors and
huggingface_hub (peft itself imports accelerate, so accelerate is not checked); the training machinery leaves its
data, metric and plot libraries until they are used.
"""

UPPER = ["gated_vpt.training", "gated_vpt.segmentation", "gated_vpt.cli", "gated_vpt.card", "gated_vpt.hub",
         "gated_vpt.recipes", "gated_vpt.convert", "datasets", "evaluate", "matplotlib", "tensorboard"]


def test_importing_the_core_loads_no_upper_layer(fresh_process):
    assert "gated_vpt.loading" in fresh_process["modules_after_core_import"]
    assert [m for m in UPPER if m in fresh_process["modules_after_core_import"]] == []


def test_the_training_machinery_imports_data_metric_and_plot_libraries_only_when_used(fresh_process):
    # A training script answers --help and refuses a missing backbone before datasets, evaluate and matplotlib
    # (about a second together) are imported; they load when the data, the metric or a figure is needed.
    loaded = {name.split(".")[0] for name in fresh_process["modules_after_training_import"]}
    assert "accelerate" in loaded and not {"datasets", "evaluate", "matplotlib"} & loaded
