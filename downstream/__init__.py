"""Downstream evaluation of encoders (paper 002 §4-5): ``python -m downstream.run`` (one task,
linear probe or fine-tuning), ``python -m downstream.sweep`` (the grid and the paper's tables),
``python -m downstream.embed`` (t-SNE by source dataset). Data readers, splits, metrics and
report helpers here are shared with the supervised KD recipes in :mod:`downstream.kd`."""
