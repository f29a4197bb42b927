"""What a finished run leaves in its output directory: the adapter with its model card, ``metrics.json``, the gate
and learning-curve PNGs, and, when asked, the adapter pushed to the Hub. Shared by the task scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from peft import PeftModel

from gated_vpt.introspection import gate_report
from gated_vpt.card import write_model_card
from gated_vpt.loading import write_labels
from gated_vpt.recipes import CLASSIFICATION

from .checkpointing import follow_umask
from .plots import plot_gates, plot_learning_curve

# A run's scores are the float metrics named after the split they were measured on (test_accuracy, validation_miou).
SCORE_PREFIXES = ("test_", "validation_")
# Left instead of metrics.json by a run that cannot finish as configured (a non-finite loss): rerunning it would
# stop the same way, so the protocol runner counts it as settled, without a score.
STOPPED_FILE = "stopped.json"


def write_stopped(output_dir: Union[str, Path], reason: str) -> Path:
    """Record in ``output_dir/stopped.json`` why a run stopped for good (the file is removed to retry the run)."""
    path = Path(output_dir) / STOPPED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"reason": reason}, indent=1) + "\n")
    return path


def run_scores(metrics: dict) -> dict[str, float]:
    """The scores among a run's final metrics (parameter counts, timings and per-class lists left out)."""
    return {k: v for k, v in metrics.items() if k.startswith(SCORE_PREFIXES) and isinstance(v, float)}


def write_results(
    model: PeftModel,
    output_dir: Union[str, Path],
    metrics: dict,
    history: Sequence[dict],
    *,
    task: str,
    title: str = "",
    dataset: Optional[str] = None,
    save_adapter: Optional[Callable[[PeftModel, Path], object]] = None,
    hub_model_id: Optional[str] = None,
) -> Path:
    """Write ``output_dir/adapter`` (``save_adapter(model, directory)``, default ``model.save_pretrained``, the class
    names and the model card for ``task`` with the run's scores), ``metrics.json`` (``metrics``, the gates and the
    per-epoch ``history``), ``gates.png`` (when the adapter has gates or temperatures) and ``learning_curve.png``;
    print the scores, the gate table, where everything went and the commands to run next; push the adapter to
    ``hub_model_id`` when given (the token from ``HF_TOKEN`` or the stored login). Returns the adapter directory.

    Example:

    ```py
    >>> import gated_vpt
    >>> from peft import get_peft_model
    >>> from transformers import ViTConfig, ViTForImageClassification
    >>> base = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
    ...     num_attention_heads=2, intermediate_size=64, num_labels=3))
    >>> model = get_peft_model(base, gated_vpt.GatedPromptConfig())  # ... then train it
    >>> history = [{"epoch": 0, "train_loss": 1.1, "lr": 0.1}]  # the loop's state.history
    >>> write_results(model, "outputs/run", {"test_accuracy": 0.81}, history, task="image-classification", title="tiny")
    <BLANKLINE>
    | block | gate | temperature | selection ratio |
    |---:|---:|---:|---:|
    | 0 | 0.0067 | 1.0000 | 0.3311 |
    | 1 | 0.0067 | 1.0000 | 0.3333 |
    | 2 | 0.0067 | 1.0000 | 0.3356 |
    | 3 | - | 1.0000 | - |
    <BLANKLINE>
    Share of the inserted prompts reaching the last block unchanged: 0.9801
    <BLANKLINE>
    test_accuracy 0.8100
    Wrote outputs/run/adapter/ (adapter and model card), metrics.json, gates.png, learning_curve.png in outputs/run
    Next: gated-vpt info outputs/run
          gated-vpt predict outputs/run <image files or folders>
          gated-vpt push outputs/run <user>/<repo>
    PosixPath('outputs/run/adapter')
    ```
    """
    output = Path(output_dir)
    adapter_dir = output / "adapter"
    if save_adapter is None:
        model.save_pretrained(adapter_dir)
    else:
        save_adapter(model, adapter_dir)
    write_labels(adapter_dir, model)
    report = gate_report(model)
    gates_png = None
    if any(b.gate is not None or b.temperature is not None for b in report.blocks):
        gates_png = plot_gates(report, output / "gates.png", title=title, gate_init=_gate_init(model))
    plot_learning_curve(history, output / "learning_curve.png")
    (output / "metrics.json").write_text(
        json.dumps({**metrics, "gates": report.to_dict(), "history": list(history)}, indent=1) + "\n"
    )
    scores = run_scores(metrics)
    write_model_card(adapter_dir, model, metrics=scores, gates_image=gates_png, dataset=dataset, task=task)
    follow_umask(adapter_dir)
    print(f"\n{report.format_table()}\n")
    print(", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    written = [f"{adapter_dir}/ (adapter and model card)", "metrics.json", *(p.name for p in (gates_png,) if p),
               "learning_curve.png"]
    print(f"Wrote {', '.join(written)} in {output}")
    if hub_model_id:
        from gated_vpt.hub import push_adapter

        push_adapter(adapter_dir, hub_model_id)
        print(f"Pushed the adapter to {hub_model_id}")
    print(f"Next: gated-vpt info {output}")
    if task == CLASSIFICATION:
        print(f"      gated-vpt predict {output} <image files or folders>")
    if not hub_model_id:
        print(f"      gated-vpt push {output} <user>/<repo>")
    return adapter_dir


def _gate_init(model: PeftModel) -> Optional[float]:
    config = model.peft_config[model.active_adapter]
    return config.gate_init if config.gated else None
