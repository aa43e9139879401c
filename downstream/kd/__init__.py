"""Supervised knowledge-distillation recipes of papers 000, 001, 003 and 004 on our data, splits
and metrics: ``python -m downstream.kd train|summary`` (see :mod:`downstream.kd.__main__`)."""
