"""Typed configuration of a pretraining run (YAML + ``key=value`` overrides via ``sonodistill.config``).

``pretrain/configs/dinov3_vitb16_resnet50.yaml`` holds paper 002's recipe and
``pretrain/configs/tiny.yaml`` a CPU-sized run. Every run writes its resolved config to
``<out>/config.yaml``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from pretrain.augment import PretrainAugmentConfig
from pretrain.loss import MixupConfig
from sonodistill.config import ConfigError
from sonodistill.dinov3 import DEFAULT_TEACHER
from sonodistill.optim import OptimConfig
from sonodistill.precision import MixedPrecision


@dataclasses.dataclass
class PretrainDataConfig:
    """Where the shards are and how they stream (``shards.stream.ShardLoader``)."""

    shards: str = ""  # dir or folder URL (https/s3/gs) with manifest.json, a manifest, or a brace pattern
    mode: Literal["loop", "resampled"] = "loop"  # loop: every sample once per epoch across ranks
    # resampled mode: proportional | uniform | tau=T | {source: weight} (shards.balance)
    source_weights: str | dict[str, float] = "proportional"  # resampled mode: how often each source is drawn
    shuffle_buffer: int = 1000  # samples per loader slot (one worker of one rank) mixed before a batch is cut
    record_keys: bool = False  # audit: write the sample keys each rank trained on to <out>/keys/
    gpu_decode: bool = False  # JPEG shards: decode on the training GPU (nvJPEG) instead of in the workers
    encoding: Literal["any", "png", "jpeg", "raw"] = "any"  # the shards' encoding this run expects
    max_skipped_share: float = 0.01  # stop when unreadable shards cost more of an epoch's samples than this
    stall_timeout_s: float = 120.0  # stop when shards keep failing and nothing was read for this long
    allow_upsample: bool = False  # train at an image_size above the shards' size (every image upsampled)


@dataclasses.dataclass
class PretrainTeacherConfig:
    """The frozen DINOv3 teacher and which of its tokens are the targets."""

    name_or_path: str = DEFAULT_TEACHER  # Hub id or local save_pretrained folder of a DINOv3 ViT
    layers: list[int] = dataclasses.field(default_factory=lambda: [-2, -1])  # block indices, -1 = last
    norm: bool = True  # final LayerNorm on every layer (DINOv3 get_intermediate_layers(norm=True))
    aggregate: Literal["concat", "mean"] = "concat"  # how the chosen layers are combined into one target per token


@dataclasses.dataclass
class PretrainStudentConfig:
    """timm backbone + token-wise projection head."""

    name: str = "resnet50"  # timm CNN backbone (any with feature_info)
    head_hidden: int = 4096  # hidden width of the token-wise 2-layer MLP projection head
    out_dim: int = 0  # 0: follow the teacher's embedding dim (any other value must equal it)
    sync_bn: bool = False  # SyncBatchNorm across GPUs (small per-GPU batches); ignored on CPU
    channels_last: bool = True  # GPU only
    compile: bool = False  # torch.compile the student (GPU recommended)


@dataclasses.dataclass
class PretrainTrainConfig(OptimConfig):
    """Optimisation (the shared :class:`~sonodistill.optim.OptimConfig` keys, paper 002's values),
    precision, logging and checkpointing. One step = one optimiser step."""

    lr: float = 1e-4  # peak learning rate (AdamW)
    min_lr: float = 1e-6  # end of the cosine
    weight_decay: float = 0.05  # not applied to norms and biases
    warmup_epochs: float = 10.0  # warmup_steps > 0 wins
    max_steps: int = 0  # 0: derived from epochs x manifest num_samples / global batch
    epochs: float = 1000.0  # passes over the corpus (turned into steps with the manifest)
    batch_size: int = 64  # per process (device)
    global_batch: int = 512  # reached by gradient accumulation; 0 = batch_size x processes
    grad_clip: float = 3.0  # max global grad norm; 0 = off
    log_every: int = 20  # loss/throughput sync, progress, TensorBoard, NaN and stop-signal checks
    save_every: int = 1000  # optimiser steps between checkpoints
    keep_last: int = 3  # checkpoints kept (older ones deleted by the run that wrote them)


@dataclasses.dataclass
class PretrainConfig:
    """A pretraining run. The knobs every stage shares (``image_size``, ``num_workers``, ``seed``,
    ``mixed_precision``) sit at the top level, under the same names in every stage's config."""

    RENAMED: ClassVar[dict[str, str]] = {
        "out_dir": "out",
        "augment.size": "image_size",
        "data.num_workers": "num_workers",
        "train.seed": "seed",
        "train.mixed_precision": "mixed_precision",
    }

    out: str = "runs/pretrain"  # checkpoints, metrics.jsonl, TensorBoard logs and config.yaml go here
    resume: str = "auto"  # auto (newest checkpoint in out if any), a checkpoint dir, or none
    image_size: int = 256  # side of the square views both networks see (the augmentation's output), pixels
    num_workers: int = 4  # shard-decoding worker processes per rank (capped at the cores this rank may use)
    seed: int = 0  # student initialisation; augmentations and the shard order derive from it per rank
    mixed_precision: MixedPrecision = "auto"  # auto: bf16 on GPUs that support it, fp32 on CPU
    data: PretrainDataConfig = dataclasses.field(default_factory=PretrainDataConfig)
    teacher: PretrainTeacherConfig = dataclasses.field(default_factory=PretrainTeacherConfig)
    student: PretrainStudentConfig = dataclasses.field(default_factory=PretrainStudentConfig)
    augment: PretrainAugmentConfig = dataclasses.field(default_factory=PretrainAugmentConfig)
    mixup: MixupConfig = dataclasses.field(default_factory=MixupConfig)
    train: PretrainTrainConfig = dataclasses.field(default_factory=PretrainTrainConfig)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ConfigError(f"image_size: expected an integer >= 8, got {self.image_size}")
