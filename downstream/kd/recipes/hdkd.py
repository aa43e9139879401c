"""Paper 001 (HDKD): MBCSA CNN teacher -> hybrid CNN + DFLT student, logit + feature distillation.

Paper settings (architecture defaults here, training and loss settings in the preset
``downstream/kd/configs/hdkd.yaml``): teacher [6, 6, 9] MBCSA blocks, student [2, 2, 3] + DFLT
(3 layers, patch 2, dim 256, 8 x 32 heads), channels [64, 96, 192] (see models/hdkd.py for why
not the table's [64, 128, 192]); ``l_cls = (1-a)*CE(cls) + a*t^2*KL(distill, teacher)`` with
a = 0.5, t = 1 (``loss.ce_weight=0.5``, ``loss.kd_weight=0.5``, ``loss.temperature=1``);
``l_feat = sum_j j * MSE(stage j)`` over the three shared stages (``loss.stage_exponent=1``);
total ``l_cls + 10 * l_feat`` (``loss.feature_weight=10``); inference averages the CLS and
distillation logits. Teacher: Adam lr 1e-3
(fixed) on the whole training split with augmentation. Students: AdamW, cosine 5e-5 -> 2e-5 with 5
warm-up epochs, wd 0.1, batch 32, 224 px, trained from scratch with and without distillation.
Not given in the paper, chosen here: epochs (teacher 50, students 100), the teacher's "basic"
augmentation (horizontal flip + rotation +-10 degrees; SMOTE is not applied to images), best
validation accuracy kept. Student inputs are not augmented.
``teacher.encoder=SPEC`` replaces the MBCSA teacher by any downstream encoder with a linear head; the
logit terms need its logits, the feature term (``loss.feature_weight > 0``) three stages shaped like
the student's (channels ``model.channels`` at strides 2, 4, 8), else the run stops with the shapes
the encoder has (``loss.feature_weight=0`` distils logits only).

One run trains the teacher, then the student with and without distillation on the whole training
split (the label subset in a sweep). The paper's data-size sweep (N images per class), its tables
and figure: :mod:`downstream.kd.papers.hdkd`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from downstream.data import ImageSet, Record
from downstream.data.inputs import Inputs
from downstream.fit import FitConfig, fit
from downstream.kd.config import FlipRotateConfig, RecipeConfig
from downstream.kd.data import PreparedData, augmentation
from downstream.kd.losses import HDKDLoss, HDKDLossConfig
from downstream.kd.models.encoder_teacher import EncoderTeacher
from downstream.kd.models.encoder_teacher import teacher_arch as encoder_arch
from downstream.kd.models.hdkd import HDKDStudent, HDKDTeacher
from downstream.kd.pipeline import (
    Run,
    StageResult,
    evaluate,
    seed_everything,
    stage,
    start,
    teacher_key,
    trained_seconds,
)
from downstream.kd.recipes.base import Entry, Recipe, RecipeResult, image_deployment
from downstream.kd.tasks import freeze
from downstream.tasks import Classification
from downstream.tasks.classification import correct
from sonodistill.config import ConfigError, to_dict


@dataclass
class HDKDModelConfig:
    """The MBCSA stages both models share and the student's DFLT transformer stage."""

    channels: list[int] = field(default_factory=lambda: [64, 96, 192])  # widths of the three MBCSA stages
    teacher_blocks: list[int] = field(default_factory=lambda: [6, 6, 9])  # MBCSA blocks per teacher stage
    student_blocks: list[int] = field(default_factory=lambda: [2, 2, 3])  # MBCSA blocks per student stage
    dim: int = 256  # DFLT embedding width
    depth: int = 3  # DFLT transformer layers
    heads: int = 8  # DFLT attention heads
    patch: int = 2  # DFLT patch size on the stage-3 map

    def __post_init__(self) -> None:
        for key in ("channels", "teacher_blocks", "student_blocks"):
            value = getattr(self, key)
            if len(value) != 3 or any(not isinstance(v, int) or v < 1 for v in value):
                raise ConfigError(f"model.{key}: expected 3 positive integers (one per MBCSA stage), got {value}")
        for key in ("dim", "depth", "heads", "patch"):
            if (value := getattr(self, key)) < 1:
                raise ConfigError(f"model.{key}: expected a positive integer, got {value}")
        if self.dim % self.heads:
            raise ConfigError(f"model.heads: {self.heads} does not divide model.dim {self.dim}")


@dataclass
class HDKDTeacherConfig:
    """The teacher: the MBCSA CNN trained with the paper's basic augmentation (or any encoder)."""

    checkpoint: str = ""  # a trained teacher (model.safetensors of a previous run) instead of training one
    encoder: str = ""  # a downstream encoder spec instead of the MBCSA teacher (see the module docstring)
    augment: FlipRotateConfig = field(default_factory=lambda: FlipRotateConfig(hflip=0.5, degrees=10.0))
    train: FitConfig = field(default_factory=FitConfig)


@dataclass
class HDKDStudentConfig:
    """The students (with and without distillation): their training stage."""

    train: FitConfig = field(default_factory=FitConfig)


@dataclass
class HDKDConfig(RecipeConfig):
    """Paper 001's recipe: MBCSA teacher, MBCSA + DFLT student, logit and stage-feature distillation."""

    model: HDKDModelConfig = field(default_factory=HDKDModelConfig)
    teacher: HDKDTeacherConfig = field(default_factory=HDKDTeacherConfig)
    student: HDKDStudentConfig = field(default_factory=HDKDStudentConfig)
    loss: HDKDLossConfig = field(default_factory=HDKDLossConfig)

    def __post_init__(self) -> None:
        step = 8 * self.model.patch  # the stage-3 map (stride 8) is cut into patch x patch tokens
        if self.image_size % step:
            raise ConfigError(
                f"image_size: HDKD needs a multiple of {step} (stride 8 x model.patch {self.model.patch}), "
                f"got {self.image_size}"
            )


def build_teacher(m: HDKDModelConfig, num_classes: int, t: HDKDTeacherConfig | None = None, features: bool = True):
    """The MBCSA teacher, or ``t.encoder`` with the stages the feature loss needs (``features``)."""
    if t is not None and t.encoder:
        return EncoderTeacher.build(t.encoder, num_classes, stage_channels=m.channels if features else ())
    return HDKDTeacher(num_classes, m.teacher_blocks, m.channels)


def build_student(m: HDKDModelConfig, num_classes: int, img_size: int, distill: bool) -> HDKDStudent:
    return HDKDStudent(num_classes, distill, img_size, m.student_blocks, m.channels, m.dim, m.depth, m.heads, m.patch)


class HDKDTask(Classification):
    """HDKD training: both student heads, the teacher's logits and its three stage features.
    Evaluation is the plain classifier's (the model averages its two heads)."""

    def __init__(self, model: HDKDStudent, inputs: Inputs, classes, teacher: HDKDTeacher, loss: HDKDLoss):
        super().__init__(model, inputs, classes)
        self.teacher, self.loss = teacher, loss

    def __call__(self, batch):
        x = self.inputs(batch["image"], train=True)
        cls, dist, feats = self.model(x, train_outputs=True)
        with torch.no_grad():
            if self.loss.feature_weight > 0:
                t_logits, t_feats = self.teacher(x, return_features=True)
            else:  # logits-only distillation: the teacher need not have stages
                t_logits, t_feats = self.teacher(x), None
        parts = self.loss(cls, dist, batch["label"], t_logits.float(), feats, t_feats)
        output = (cls + dist) / 2
        return {**parts.tensors(), "output": output, "per_sample": {"accuracy": correct(output, batch["label"])}}


def _per_class_auc(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    from sklearn.metrics import roc_auc_score

    out = {}
    for k, c in enumerate(classes):
        y = labels == k
        out[c] = float(roc_auc_score(y, probs[:, k])) if 0 < y.sum() < len(y) else None
    return out


@dataclass
class HDKDRun:
    """The stages of one HDKD run: one teacher, then student pairs on any training subsets."""

    r: Run
    cfg: HDKDConfig
    plain: Inputs  # the students' and the evaluation's input: ImageNet normalisation, no augmentation
    val: ImageSet | None
    teacher: torch.nn.Module | None = None
    t_arch: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageResult] = field(default_factory=dict)

    @classmethod
    def start(cls, cfg: HDKDConfig, data: PreparedData, out: Path) -> HDKDRun:
        r = start(cfg, data, out)
        val = ImageSet(data.parts["val"], cfg.image_size, labels=True) if data.parts["val"] else None
        return cls(r, cfg, Inputs(channels_last=torch.cuda.is_available()), val)

    def dataset(self, records: Sequence[Record]) -> ImageSet:
        return ImageSet(records, self.r.image_size, labels=True)

    def arch(self) -> dict[str, Any]:
        return {"channels": self.cfg.model.channels, "num_classes": len(self.r.prep.classes)}

    def fit(self, task, records: Sequence[Record], ocfg: FitConfig, name: str):
        def go():
            r = self.r
            return fit(
                task,
                r.loader(self.dataset(records), ocfg.batch_size, True),
                r.loader(self.val, ocfg.batch_size, False) if self.val is not None else None,
                ocfg,
                r.acc,
                name=name,
                log_dir=r.out / "tb",
            )

        return go

    def evaluate(self, model: torch.nn.Module, name: str, plot: bool = True) -> dict[str, Any]:
        """Test metrics with each class's AUC."""
        classes = self.r.prep.classes
        task = Classification(model, self.plain, classes)
        met, pred = evaluate(self.r, task, self.r.prep.parts["test"], self.dataset, name, plot=plot)
        met["per_class_auc"] = _per_class_auc(pred["labels"], pred["probs"], classes)
        return met


def train_teacher(h: HDKDRun) -> dict[str, Any]:
    """Train (or load) the teacher on the whole training split, freeze it; its test metrics."""
    cfg, r = h.cfg, h.r
    seed_everything(cfg.seed)
    teacher = build_teacher(cfg.model, len(r.prep.classes), cfg.teacher, features=cfg.loss.feature_weight > 0)
    h.t_arch = (
        encoder_arch(cfg.teacher.encoder, len(r.prep.classes))
        if cfg.teacher.encoder
        else {**h.arch(), "model": "hdkd_teacher", "blocks": cfg.model.teacher_blocks}
    )
    if cfg.teacher.checkpoint:
        from downstream.kd.checkpoint import check_unseen, load_model

        load_model(teacher, cfg.teacher.checkpoint, arch=h.t_arch, key="teacher.checkpoint")
        check_unseen(cfg.teacher.checkpoint, r.prep.parts["test"])
    else:
        a = cfg.teacher.augment
        t_task = Classification(teacher, Inputs(augment=augmentation(a)), r.prep.classes)
        key = {
            "train": to_dict(cfg.teacher.train),
            "aug": to_dict(a),
            "seed": cfg.seed,
            "config": to_dict(cfg.teacher),
            "model": to_dict(cfg.model),
            "features": cfg.loss.feature_weight > 0,
        }
        h.stages["teacher"] = stage(
            r, "teacher", teacher, h.t_arch, key, h.fit(t_task, r.prep.parts["train"], cfg.teacher.train, "teacher")
        )
    h.teacher = freeze(teacher.to(r.acc.device))
    return h.evaluate(h.teacher, "teacher")


def train_students(
    h: HDKDRun, records: Sequence[Record], n: int, sweep_seed: int, plot: bool = True
) -> dict[str, tuple[HDKDStudent, dict[str, Any]]]:
    """The student without (``student``) and with (``hdkd``) distillation on ``records`` (``n`` per
    class of the data-size sweep; 0 = all): each model and its test metrics."""
    cfg, r = h.cfg, h.r
    tag = f"{n}_per_class" if n > 0 else "all"
    s_key = {
        "train": to_dict(cfg.student.train),
        "model": to_dict(cfg.model),
        "seed": cfg.seed,
        "config": to_dict(cfg.student),
    }
    loss = HDKDLoss(cfg.loss)
    out = {}
    for variant, distill in (("student", False), ("hdkd", True)):
        seed_everything(cfg.seed + 1)
        model = build_student(cfg.model, len(r.prep.classes), r.image_size, distill)
        task = (
            HDKDTask(model, h.plain, r.prep.classes, h.teacher, loss)
            if distill
            else Classification(model, h.plain, r.prep.classes)
        )
        key = {
            **s_key,
            "n": n,
            "sweep_seed": sweep_seed,
            "loss": to_dict(cfg.loss) if distill else None,
            "teacher": teacher_key(cfg.teacher.checkpoint, h.stages.get("teacher")) if distill else None,
        }
        s_arch = {**h.arch(), "model": f"hdkd_student_{variant}", "img_size": r.image_size}
        name = f"{variant}_{tag}"
        h.stages[name] = stage(r, name, model, s_arch, key, h.fit(task, records, cfg.student.train, name))
        met = h.evaluate(model, name, plot=plot)
        met["best_epoch"] = h.stages[name].best_epoch
        out[variant] = (model, met)
    return out


class HDKD(Recipe):
    name = "hdkd"
    config = HDKDConfig
    kind = "cls"
    teacher_outputs = ("logits", "stages")

    def run(self, cfg: HDKDConfig, data: PreparedData, out: Path) -> RecipeResult:
        h = HDKDRun.start(cfg, data, out)
        teacher = train_teacher(h)
        pair = train_students(h, data.parts["train"], n=0, sweep_seed=0)  # n = 0: every training image
        (scratch, scratch_m), (student, student_m) = pair["student"], pair["hdkd"]
        metrics = {
            "recipe": self.name,
            "data": data.source,
            "classes": data.classes,
            "splits": {k: len(v) for k, v in data.parts.items()},
            "models": {"teacher": teacher, "student": scratch_m, "hdkd": student_m},
            "history": {k: s.history for k, s in h.stages.items()},
            "config": to_dict(cfg),
        }
        return RecipeResult(
            metrics,
            student_m,
            image_deployment(student, cfg.image_size, "cls"),
            teacher=teacher,
            scratch=scratch_m,
            models={"teacher": h.teacher, "student": scratch, "hdkd": student},
            train_seconds=trained_seconds(h.stages.values()),
        )

    def summary_entries(self) -> list[Entry]:
        m = HDKDModelConfig()
        return [
            Entry(
                self.name,
                "teacher: MBCSA CNN [6,6,9] (7 classes)",
                lambda: build_teacher(m, 7),
                paper_params_m=3.95,
                paper_gflops=5.88,
            ),
            Entry(
                self.name,
                "student w/o distillation [2,2,3]+DFLT (7 classes)",
                lambda: build_student(m, 7, 224, False),
                paper_params_m=3.72,
                paper_gflops=2.08,
            ),
            Entry(
                self.name,
                "HDKD student, CLS + distill tokens (7 classes)",
                lambda: build_student(m, 7, 224, True),
                paper_params_m=3.73,
                paper_gflops=2.09,
            ),
            Entry(
                self.name,
                "teacher with Table 1 channels [64,128,192] (7 classes)",
                lambda: build_teacher(HDKDModelConfig(channels=[64, 128, 192]), 7),
                paper_params_m=3.95,
                paper_gflops=5.88,
            ),
        ]


RECIPE = HDKD()
