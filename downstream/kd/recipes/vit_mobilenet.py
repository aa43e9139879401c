"""Paper 000: hybrid ViT-B/16 + ConvNeXt-Tiny teacher -> MobileNetV3 student, logit KD.

Paper settings (preset ``downstream/kd/configs/vit_mobilenet.yaml``): 224 px, ImageNet
normalisation, no augmentation (so the teacher's logits are computed once),
``alpha*CE + (1-alpha)*T^2*KL`` with T = 4, alpha = 0.5 (``loss.ce_weight=0.5``,
``loss.kd_weight=0.5``); AdamW lr 1e-4, wd 0.01, 15 epochs; an independent stratified test set
(263 of BUSI's 780 images: split counts 439 / 78 / 263). Not stated in the paper, chosen here: the teacher is
trained with the student's optimiser settings; no model selection is mentioned, so the last epoch
is kept (``select: last``; a 10 % validation split is still held out to plot curves).
``teacher.encoder=SPEC`` replaces the hybrid teacher by any downstream encoder (e.g. the distilled
ResNet-50 export) with a linear head; the loss needs its logits only.
The paper's tables and its CPU timing: :mod:`downstream.kd.papers.vit_mobilenet`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from downstream.fit import FitConfig
from downstream.kd.config import LogitKDConfig, TimmStudentConfig
from downstream.kd.data import PreparedData
from downstream.kd.models.backbones import check_model, timm_student
from downstream.kd.models.encoder_teacher import EncoderTeacher
from downstream.kd.models.encoder_teacher import teacher_arch as encoder_arch
from downstream.kd.models.hybrid_teacher import HybridViTConvNeXt
from downstream.kd.pipeline import timm_student_run
from downstream.kd.recipes.base import Entry, Recipe, RecipeResult
from sonodistill.errors import UserError


@dataclass
class HybridTeacherConfig:
    """The teacher: ViT CLS feature ++ ConvNeXt pooled feature -> MLP head (or any encoder)."""

    vit: str = "vit_base_patch16_224"  # timm ViT whose CLS feature the head reads
    convnext: str = "convnext_tiny"  # timm ConvNeXt whose pooled feature the head reads
    head_hidden: int = 1024  # MLP head width (not given in the paper; 1024 matches its 438.8 MB)
    dropout: float = 0.4  # dropout in the MLP head
    pretrained: bool = False  # timm weights from the local cache (the paper starts from ImageNet-21k)
    vit_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {depth: 2, embed_dim: 64, num_heads: 2}
    convnext_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {depths: [1, 1, 1, 1], dims: [...]}
    checkpoint: str = ""  # a trained teacher (model.safetensors of a previous run) instead of training one
    encoder: str = ""  # a downstream encoder spec (export folder, hf-hub:, timm:, dinov3:) instead of the hybrid
    train: FitConfig = field(default_factory=FitConfig)

    def check(self, key: str) -> None:
        if self.encoder:  # the recipe's check loads nothing and checks the spec
            return
        if self.head_hidden < 1:
            raise UserError(f"{key}.head_hidden: expected a width of at least 1, got {self.head_hidden}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"{key}.dropout: expected a probability from 0 to below 1, got {self.dropout}")
        check_model(self.vit, False, f"{key}.vit")
        check_model(self.convnext, False, f"{key}.convnext")

    def check_weights(self, key: str) -> None:
        """Its pretrained weights in reach, unless a checkpoint's or an encoder's replace them."""
        if self.pretrained and not self.checkpoint and not self.encoder:
            check_model(self.vit, True, f"{key}.vit")
            check_model(self.convnext, True, f"{key}.convnext")


@dataclass
class VitMobilenetConfig(LogitKDConfig):
    """Paper 000's recipe: hybrid ViT + ConvNeXt teacher, MobileNetV3 student, logit KD."""

    teacher: HybridTeacherConfig = field(default_factory=HybridTeacherConfig)


def build_teacher(cfg: HybridTeacherConfig, num_classes: int, img_size: int) -> torch.nn.Module:
    if cfg.encoder:
        return EncoderTeacher.build(cfg.encoder, num_classes)
    return HybridViTConvNeXt(
        num_classes,
        cfg.vit,
        cfg.convnext,
        cfg.head_hidden,
        cfg.dropout,
        img_size,
        cfg.pretrained and not cfg.checkpoint,  # a checkpoint's weights replace timm's
        cfg.vit_kwargs,
        cfg.convnext_kwargs,
    )


def teacher_arch(cfg: HybridTeacherConfig, num_classes: int, img_size: int) -> dict[str, Any]:
    if cfg.encoder:
        return encoder_arch(cfg.encoder, num_classes)
    return {
        "model": "hybrid_vit_convnext",
        "vit": cfg.vit,
        "convnext": cfg.convnext,
        "head_hidden": cfg.head_hidden,
        "num_classes": num_classes,
        "img_size": img_size,
        "vit_kwargs": cfg.vit_kwargs,
        "convnext_kwargs": cfg.convnext_kwargs,
    }


class VitMobilenet(Recipe):
    name = "vit_mobilenet"
    config = VitMobilenetConfig
    kind = "cls"
    teacher_outputs = ("logits",)

    def run(self, cfg: VitMobilenetConfig, data: PreparedData, out: Path) -> RecipeResult:
        size = cfg.image_size
        arch = teacher_arch(cfg.teacher, len(data.classes), size)
        return timm_student_run(self.name, cfg, data, out, lambda c: build_teacher(cfg.teacher, c, size), arch)

    def summary_entries(self) -> list[Entry]:
        t = HybridTeacherConfig()
        return [
            Entry(
                self.name,
                "teacher: hybrid ViT-B/16 + ConvNeXt-T (3 classes)",
                lambda: build_teacher(t, 3, 224),
                paper_mb=438.8,
            ),
            Entry(
                self.name,
                "student: MobileNetV3-Small (3 classes)",
                lambda: timm_student(TimmStudentConfig(), 3),
                paper_mb=5.9,
            ),
            Entry(
                self.name,
                "student: MobileNetV3-Large (3 classes)",
                lambda: timm_student(TimmStudentConfig(model="mobilenetv3_large_100"), 3),
            ),
        ]


RECIPE = VitMobilenet()
