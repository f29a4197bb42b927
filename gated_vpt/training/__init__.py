"""Training machinery shared by the task scripts in ``examples/`` (classification, segmentation).

- ``args``: the scripts' command-line arguments (their names are the recipe keys) and ``--config`` recipes.
- ``data``: image data sets (Hub, image folders, the embedded digits), checks and the paper's transforms.
- ``benchmark_data``: the paper's data in the shared layouts (VTAB-1k split lists, VPT's FGVC json), the splits
  of each protocol stage, and ``gated-vpt data check``.
- ``paper_benchmarks``: the VTAB-1k and FGVC tasks and the paper's reported numbers, as data.
- ``protocol``, ``protocol_report``: ``gated-vpt protocol`` (learning-rate grid, seeds, resuming, GPUs, job
  lists) and its table in the paper's form.
- ``executors``: the protocol's runs as submitit jobs (``--cluster slurm|local``), their states, requeue on the
  scheduler's signal.
- ``protocol_cost``: the runs, images and GPU-hours of a protocol before it runs (``--dry_run``).
- ``optim``: SGD/AdamW with an optional gate learning rate; warmup + cosine or SETR's polynomial decay, per epoch
  or per update.
- ``checkpointing``: pickle-free, resumable checkpoints.
- ``loop``: the Accelerate training loop.
- ``run``: a script's run around the loop: the Accelerator, preparing, the starting state, finishing.
- ``classification``: the classifier model, its data loaders and top-1 evaluation.
- ``plots``: per-block gates and learning-curve PNGs.
- ``results``: a finished run's outputs (adapter and card, metrics.json, PNGs, Hub push).
- ``metrics``: ``evaluate`` metric modules that load offline.

Needs the ``train`` extra: ``pip install gated-vpt[train]``.
"""
