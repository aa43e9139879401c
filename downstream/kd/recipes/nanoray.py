"""Paper 003 (NanoRay V2): ViT-B/16 teacher -> MobileNetV3-Small, ``alpha*T^2*KL + (1-alpha)*CE``.

Paper settings (preset ``downstream/kd/configs/nanoray.yaml``): alpha = 0.25 on the soft loss
(``loss.kd_weight=0.25``, ``loss.ce_weight=0.75``), T = 4, 224 px, 80/10/10 split (patient-disjoint
when the data has patient ids). The paper gives no optimiser settings; we use AdamW lr 1e-4,
wd 0.01, 15 epochs, best validation accuracy, for teacher and students alike, ImageNet
normalisation and no augmentation (teacher logits computed once). ``teacher.encoder=SPEC`` replaces
the ViT by any downstream encoder (e.g. the distilled ResNet-50 export) with a linear head; the loss
needs its logits only.
The paper's Table 1 and Grad-CAM figure: :mod:`downstream.kd.papers.nanoray`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from downstream.fit import FitConfig
from downstream.kd.config import LogitKDConfig, TimmStudentConfig
from downstream.kd.data import PreparedData
from downstream.kd.models.backbones import check_model, create, timm_student
from downstream.kd.models.encoder_teacher import EncoderTeacher
from downstream.kd.models.encoder_teacher import teacher_arch as encoder_arch
from downstream.kd.pipeline import timm_student_run
from downstream.kd.recipes.base import Entry, Recipe, RecipeResult


@dataclass
class ViTTeacherConfig:
    """The teacher: a timm ViT classifier (or any downstream encoder with a linear head)."""

    model: str = "vit_base_patch16_224"  # timm model name
    pretrained: bool = False  # ImageNet weights from the local timm/HF cache
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {depth: 2, embed_dim: 64, num_heads: 2}
    checkpoint: str = ""  # a trained teacher (model.safetensors of a previous run) instead of training one
    encoder: str = ""  # a downstream encoder spec (export folder, hf-hub:, timm:, dinov3:) instead of the ViT
    train: FitConfig = field(default_factory=FitConfig)

    def check(self, key: str) -> None:
        if not self.encoder:  # an encoder spec is the recipe's check
            check_model(self.model, False, f"{key}.model")

    def check_weights(self, key: str) -> None:
        """Its pretrained weights in reach, unless a checkpoint's or an encoder's replace them."""
        if self.pretrained and not self.checkpoint and not self.encoder:
            check_model(self.model, True, f"{key}.model")


@dataclass
class NanoRayConfig(LogitKDConfig):
    """Paper 003's recipe: ViT-B/16 teacher, MobileNetV3-Small student, logit KD."""

    teacher: ViTTeacherConfig = field(default_factory=ViTTeacherConfig)


def build_teacher(cfg: ViTTeacherConfig, num_classes: int, img_size: int) -> torch.nn.Module:
    if cfg.encoder:
        return EncoderTeacher.build(cfg.encoder, num_classes)
    return create(
        cfg.model,
        pretrained=cfg.pretrained and not cfg.checkpoint,  # a checkpoint's weights replace timm's
        key="teacher.model",
        num_classes=num_classes,
        img_size=img_size,
        **cfg.kwargs,
    )


class NanoRay(Recipe):
    name = "nanoray"
    config = NanoRayConfig
    kind = "cls"
    teacher_outputs = ("logits",)

    def run(self, cfg: NanoRayConfig, data: PreparedData, out: Path) -> RecipeResult:
        size, n_cls, t = cfg.image_size, len(data.classes), cfg.teacher
        arch = (
            encoder_arch(t.encoder, n_cls)
            if t.encoder
            else {"model": t.model, "num_classes": n_cls, "img_size": size, "kwargs": t.kwargs}
        )
        return timm_student_run(self.name, cfg, data, out, lambda c: build_teacher(t, c, size), arch)

    def summary_entries(self) -> list[Entry]:
        return [
            Entry(
                self.name,
                "teacher: ViT-B/16 (1000 classes)",
                lambda: build_teacher(ViTTeacherConfig(), 1000, 224),
                paper_params_m=86.0,
            ),
            Entry(
                self.name,
                "student: MobileNetV3-Small (1000 classes)",
                lambda: timm_student(TimmStudentConfig(), 1000),
                paper_params_m=2.5,
            ),
            Entry(self.name, "student: MobileNetV3-Small (2 classes)", lambda: timm_student(TimmStudentConfig(), 2)),
        ]


RECIPE = NanoRay()
