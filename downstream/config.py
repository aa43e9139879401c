"""Typed configs of the downstream stage (YAML + ``key=value`` via :mod:`shards.config`).

:class:`Settings` are the knobs shared by every cell of a sweep (image size, split, reader,
augmentation, training schedule); :class:`RunConfig` adds what identifies one run (task, data,
encoder, mode, label fraction, seed, output folder). Schedules are per protocol, never per
encoder, so every initialisation trains identically.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Literal

from downstream.data.read import ReaderConfig
from downstream.data.transforms import AugmentConfig

Task = Literal["busi-seg", "busi-cls", "ddti-seg", "seg", "cls"]
Mode = Literal["linear", "finetune"]
TASK_KIND = {"busi-seg": "seg", "ddti-seg": "seg", "seg": "seg", "busi-cls": "cls", "cls": "cls"}
TASK_LAYOUT = {"busi-seg": "busi", "busi-cls": "busi", "ddti-seg": "paired"}


@dataclass
class SplitConfig:
    ratios: list[float] = field(default_factory=lambda: [0.7, 0.2, 0.1])  # train/val/test, or counts (445, 127, 65)
    seed: int = 0  # the split is fixed across run seeds; seeds vary label subsets and training
    file: str = ""  # splits.json to write/reuse; "" -> <out>/splits.json


@dataclass
class TrainConfig:
    """Gradient training (segmentation, classification fine-tuning) under accelerate."""

    epochs: int = 50
    batch_size: int = 16  # per process
    lr: float = 1e-4  # fine-tune: all parameters
    linear_lr: float = 1e-3  # linear probe: decoder / head only (encoder frozen)
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    dice_weight: float = 1.0  # segmentation loss = dice_weight * Dice + bce_weight * BCE
    bce_weight: float = 1.0
    precision: Literal["auto", "bf16", "fp16", "no"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    num_workers: int = 4
    channels_last: bool = True
    save_checkpoint: bool = True  # best.safetensors in the run folder
    eval_batch_size: int = 32


@dataclass
class ProbeConfig:
    """Classification linear probe on cached frozen features (standardised, then a linear layer)."""

    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    feature_batch_size: int = 64  # images per forward pass when extracting features


@dataclass
class Settings:
    image_size: int = 256
    split: SplitConfig = field(default_factory=SplitConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    cache_dir: str = ""  # frozen-feature cache; "" -> <out>/cache


@dataclass
class RunConfig(Settings):
    task: Task = "busi-seg"
    data: str = ""
    encoder: str = "rand"
    mode: Mode = "linear"
    fraction: float = 1.0
    seed: int = 0
    out: str = "runs/downstream"


def run_config(settings: Settings, **cell) -> RunConfig:
    """A RunConfig from shared settings plus the identity of one cell."""
    shared = {f.name: copy.deepcopy(getattr(settings, f.name)) for f in fields(Settings)}
    return RunConfig(**shared, **cell)
