"""Typed configs of the downstream stage (YAML + ``key=value`` via :mod:`sonodistill.config`).

:class:`Settings` are the knobs shared by every cell of a sweep (image size, split, reader,
augmentation, training schedule); :class:`RunConfig` adds what identifies one run (task, data,
encoder, mode, label fraction, seed, output folder). Schedules are per protocol, never per
encoder, so every initialisation trains identically.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

from downstream.data.read import ReaderConfig, read_catalog
from downstream.data.record import Catalog
from downstream.data.transforms import GeometricAugmentConfig
from downstream.edge.profile import EdgeConfig
from downstream.fit import FitConfig
from downstream.splits import SplitConfig
from sonodistill.config import ConfigError
from sonodistill.errors import UserError
from sonodistill.precision import MixedPrecision

Task = Literal["busi-seg", "busi-cls", "ddti-seg", "seg", "cls"]
Mode = Literal["linear", "finetune"]
TASK_KIND = {"busi-seg": "seg", "ddti-seg": "seg", "seg": "seg", "busi-cls": "cls", "cls": "cls"}
TASK_LAYOUT = {"busi-seg": "busi", "busi-cls": "busi", "ddti-seg": "paired"}


@dataclass
class DownstreamTrainConfig(FitConfig):
    """Gradient training (segmentation, classification fine-tuning) in :func:`downstream.fit.fit`:
    the shared optimiser/schedule keys (AdamW, warm-up + cosine per step) plus the protocol's own."""

    lr: float = 1e-4  # fine-tune: all parameters
    weight_decay: float = 1e-4  # never on norms and biases
    warmup_epochs: float = 1.0
    linear_lr: float = 1e-3  # linear probe: decoder / head only (encoder frozen)
    dice_weight: float = 1.0  # segmentation loss = dice_weight * Dice + bce_weight * BCE
    bce_weight: float = 1.0  # segmentation loss weight of binary cross-entropy
    channels_last: bool = True  # channels-last memory format on GPUs (ignored on CPU)
    save_checkpoint: bool = True  # best.safetensors in the run folder
    eval_batch_size: int = 32  # images per batch when predicting val / test


@dataclass
class ProbeConfig:
    """Classification linear probe on cached frozen features (standardised, then a linear layer)."""

    epochs: int = 200  # passes over the cached training features
    lr: float = 1e-3  # learning rate of the linear layer (Adam)
    weight_decay: float = 1e-4  # L2 penalty of the linear layer
    batch_size: int = 64  # features per optimiser step
    feature_batch_size: int = 64  # images per forward pass when extracting features

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "feature_batch_size"):
            if (value := getattr(self, key)) < 1:
                raise ConfigError(f"probe.{key}: expected at least 1, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"probe.lr: expected a learning rate above 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"probe.weight_decay: expected a value >= 0, got {self.weight_decay}")


SPEED_ONLY = ("num_workers",)  # settings of how fast a run goes, never of what it computes


@dataclass
class Settings:
    """The settings every cell of a sweep shares. The knobs every stage shares (``image_size``,
    ``num_workers``, ``mixed_precision``; a run's ``seed``) sit at the top level, under the same names
    in every stage's config."""

    RENAMED: ClassVar[dict[str, str]] = {
        "train.num_workers": "num_workers",
        "train.mixed_precision": "mixed_precision",
        "train.precision": "mixed_precision",
    }

    image_size: int = 256  # side of the square images every model sees, pixels
    num_workers: int = 4  # image-decoding worker processes (capped at the cores this process may use)
    mixed_precision: MixedPrecision = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    split: SplitConfig = field(default_factory=SplitConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    augment: GeometricAugmentConfig = field(default_factory=GeometricAugmentConfig)
    train: DownstreamTrainConfig = field(default_factory=DownstreamTrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)  # params, GMACs, CPU latency, ONNX / INT8 of each model
    cache_dir: str = ""  # frozen-feature and latency cache; "": features in <out>/cache, latencies in memory
    strict_decontamination: bool = False  # refuse a run whose encoder was not checked against the test split


@dataclass
class RunConfig(Settings):
    task: Task = "busi-seg"  # busi-seg | busi-cls | ddti-seg | seg | cls (generic, any layout)
    data: str = ""  # dataset folder, hf:ID, a saved dataset or ub:DIR
    encoder: str = "rand"  # rand | rand:NAME | timm:NAME | export folder | hf-hub:ID | dinov3:PATH_OR_ID
    mode: Mode = "linear"  # linear (encoder frozen) | finetune (all parameters)
    fraction: float = 1.0  # label fraction of the training split (nested across fractions per seed)
    seed: int = 0  # label subset, initialisation and data order
    out: str = "runs/downstream"  # metrics.json, config.yaml, curves and checkpoints go here


def task_reader(task: Task, reader: ReaderConfig) -> ReaderConfig:
    """``reader`` with the layout a named task implies (busi-*, ddti-seg) where it is ``auto``."""
    if task in TASK_LAYOUT and reader.layout == "auto":
        return dataclasses.replace(reader, layout=TASK_LAYOUT[task])
    return reader


def read_task_data(task: Task, data: str, reader: ReaderConfig, check: bool = True) -> Catalog:
    """A task's dataset, read with the task's layout unless ``reader.layout`` names another."""
    if not data:
        raise UserError("data: give the dataset location (--data DIR or data=DIR)")
    return read_catalog(data, TASK_KIND[task], task_reader(task, reader), check)


def run_config(settings: Settings, **cell) -> RunConfig:
    """A RunConfig from shared settings plus the identity of one cell."""
    shared = {f.name: copy.deepcopy(getattr(settings, f.name)) for f in fields(Settings)}
    return RunConfig(**shared, **cell)
