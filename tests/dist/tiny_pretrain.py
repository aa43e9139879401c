"""Tiny pretraining configs shared by the pretraining tests and their torchrun worker.

Based on pretrain/configs/tiny.yaml (so that file is exercised too), with a ~5M-parameter timm
ResNet student and a few steps so a run takes seconds on CPU.
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "pretrain" / "configs" / "tiny.yaml"


def tiny_overrides(shards, teacher, out_dir, **extra) -> list[str]:
    """``key=value`` overrides for a seconds-long CPU run; ``extra`` uses ``__`` for dots."""
    base = {
        "out": out_dir, "data.shards": shards, "num_workers": 1, "data.shuffle_buffer": 32,
        "teacher.name_or_path": teacher, "student.name": "resnet10t", "student.head_hidden": 64,
        "augment.preset": "us", "image_size": 64, "train.max_steps": 6, "train.batch_size": 4,
        "train.global_batch": 8, "train.warmup_steps": 2, "train.lr": 1e-3, "train.log_every": 2,
        "train.save_every": 3, "train.keep_last": 2,
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(shards, teacher, out_dir, **extra):
    from pretrain.config import PretrainConfig
    from sonodistill.config import load_config

    return load_config(PretrainConfig, TINY_YAML, tiny_overrides(shards, teacher, out_dir, **extra))
