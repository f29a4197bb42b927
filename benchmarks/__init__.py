"""Benchmarks of gated_vpt against LoRA, full fine-tuning and hand-written prompt tuning (run from the repo root:
``python -m benchmarks.bench_step``)."""
