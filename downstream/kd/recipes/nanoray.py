"""Paper 003 (NanoRay V2): ViT-B/16 teacher -> MobileNetV3-Small, ``alpha*T^2*KL + (1-alpha)*CE``.

Paper settings (preset ``downstream/kd/configs/nanoray.yaml``): alpha = 0.25 on the soft loss
(``loss.kd_weight=0.25``, ``loss.ce_weight=0.75``), T = 4, 224 px, 80/10/10 split (patient-disjoint
when the data has patient ids). The paper gives no optimiser settings; we use AdamW lr 1e-4,
wd 0.01, 15 epochs, best validation accuracy, for teacher and students alike, ImageNet
normalisation and no augmentation (teacher logits computed once). ``teacher.encoder=SPEC`` replaces
the ViT by any downstream encoder (e.g. the distilled ResNet-50 export) with a linear head; the loss
needs its logits only.
Report: its Table 1 (params, accuracy, F1 for teacher / baseline / distilled) and Fig. 1, Grad-CAM
of the baseline vs the distilled student on the same test images (``gradcam.png``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from downstream.data.inputs import Inputs
from downstream.fit import FitConfig
from downstream.kd.data import DataConfig
from downstream.kd.gradcam import cams, panels
from downstream.kd.losses import LogitKDLoss, LogitLossConfig
from downstream.kd.models.backbones import create
from downstream.kd.models.encoder_teacher import EncoderTeacher
from downstream.kd.models.encoder_teacher import teacher_arch as encoder_arch
from downstream.kd.pipeline import LogitKDSpec, logit_kd, start
from downstream.kd.recipes.base import CellSpec, Entry, roles
from downstream.kd.report import md_table, pct, plot_history, write_report
from sonodistill.atomic import write_json
from sonodistill.config import save_config, to_dict
from sonodistill.precision import MixedPrecision

NAME = "nanoray"
TEACHER_OUTPUTS = ("logits",)
PAPER = {
    "teacher": {"params": "86M", "accuracy": 0.8396, "f1": 0.8307},
    "scratch": {"params": "2.5M", "accuracy": 0.8329, "f1": 0.8236},
    "distilled": {"params": "2.5M", "accuracy": 0.8419, "f1": 0.8268},
}


@dataclass
class TeacherConfig:
    model: str = "vit_base_patch16_224"
    pretrained: bool = False  # ImageNet weights from the local timm/HF cache
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {depth: 2, embed_dim: 64, num_heads: 2}
    checkpoint: str = ""
    encoder: str = ""  # a downstream encoder spec (export folder, hf-hub:, timm:, dinov3:) instead of the ViT
    train: FitConfig = field(default_factory=FitConfig)


@dataclass
class StudentConfig:
    model: str = "mobilenetv3_small_100"
    pretrained: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    train: FitConfig = field(default_factory=FitConfig)


@dataclass
class GradCamConfig:
    images: int = 6  # test images in the panel (0: no panel)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LogitLossConfig = field(default_factory=LogitLossConfig)
    gradcam: GradCamConfig = field(default_factory=GradCamConfig)
    seed: int = 42
    mixed_precision: MixedPrecision = "auto"  # auto: bf16 on GPUs, fp32 on CPU


def build_teacher(cfg: TeacherConfig, num_classes: int, img_size: int) -> torch.nn.Module:
    if cfg.encoder:
        return EncoderTeacher.build(cfg.encoder, num_classes)
    return create(
        cfg.model,
        pretrained=cfg.pretrained,
        key="teacher.model",
        num_classes=num_classes,
        img_size=img_size,
        **cfg.kwargs,
    )


def build_student(cfg: StudentConfig, num_classes: int) -> torch.nn.Module:
    return create(cfg.model, pretrained=cfg.pretrained, key="student.model", num_classes=num_classes, **cfg.kwargs)


def run(cfg: Config, data: str, out: Path) -> dict[str, Any]:
    r = start(data, cfg.data, out, cfg.seed, cfg.mixed_precision, recipe=NAME)
    size = cfg.data.img_size
    if r.main:
        save_config(cfg, out / "config.yaml")
    n_cls = len(r.prep.classes)
    spec = LogitKDSpec(
        build_teacher=lambda c: build_teacher(cfg.teacher, c, size),
        teacher_arch=encoder_arch(cfg.teacher.encoder, n_cls)
        if cfg.teacher.encoder
        else {"model": cfg.teacher.model, "num_classes": n_cls, "img_size": size, "kwargs": cfg.teacher.kwargs},
        teacher_checkpoint=cfg.teacher.checkpoint,
        teacher_train=cfg.teacher.train,
        build_student=lambda c: build_student(cfg.student, c),
        student_arch={"model": cfg.student.model, "num_classes": n_cls, "kwargs": cfg.student.kwargs},
        student_train=cfg.student.train,
        loss=LogitKDLoss.from_config(cfg.loss),
        inputs=Inputs(channels_last=torch.cuda.is_available()),
    )
    res = logit_kd(r, spec, size)
    metrics = {
        "recipe": NAME,
        "data": data,
        "classes": r.prep.classes,
        "splits": {k: len(v) for k, v in r.prep.parts.items()},
        "models": res.metrics,
        "paper": PAPER,
        "history": {k: v.history for k, v in res.stages.items()},
        "config": to_dict(cfg),
    }
    if r.main:
        write_json(out / "metrics.json", metrics)
        plot_history({k: v.history for k, v in res.stages.items() if v.history}, out / "curves.png")
        if cfg.gradcam.images > 0:
            gradcam_panel(res, r.prep.parts["test"], r.prep.classes, size, cfg.gradcam.images, out / "gradcam.png")
        report(metrics, out / "report.md")
    return metrics


def gradcam_panel(res, test_records, classes: list[str], size: int, n: int, path: Path) -> None:
    """Baseline vs distilled Grad-CAM on the first ``n`` test images, for the true class."""
    from downstream.data import ImageSet

    by_class: dict[int, list] = {}
    for rec in test_records:
        by_class.setdefault(rec.label, []).append(rec)
    picked = [rec for group in zip(*[by_class[k] for k in sorted(by_class)]) for rec in group][:n] or list(
        test_records[:n]
    )
    ds = ImageSet(picked, size, labels=True)  # classes in turn, so every class shows up
    items = [ds[i] for i in range(len(ds))]
    gray = torch.stack([it["image"] for it in items])
    labels = [int(it["label"]) for it in items]
    x = res.inputs(gray, train=False)
    maps = {}
    for name, title in (("scratch", "baseline (scratch)"), ("distilled", "distilled")):
        model = res.models[name].to("cpu").float()
        maps[title] = cams(model, x, labels)
    panels(gray[:, 0].numpy(), maps, path, titles=[f"input ({classes[y]})" for y in labels])


def report(m: dict[str, Any], path: Path) -> None:
    rows = []
    for key, label in (
        ("teacher", "ViT Teacher"),
        ("scratch", "MobileNet (Base)"),
        ("distilled", "NanoRay V2 (Distilled)"),
    ):
        mm, pp = m["models"][key], m["paper"][key]
        rows.append(
            [
                label,
                f"{mm['params'] / 1e6:.2f}M",
                pct(mm["accuracy"]),
                f"{mm['macro_f1']:.4f}",
                f"{pp['params']} / {pct(pp['accuracy'])} / {pp['f1']:.4f}",
            ]
        )
    table = md_table(["Model", "Params", "Accuracy", "F1-Score (macro)", "Paper (params / acc / F1)"], rows)
    write_report(
        path,
        "NanoRay V2 cross-architecture distillation (paper 003)",
        [
            (
                "Data",
                f"classes: {', '.join(m['classes'])}; images train/val/test: "
                f"{m['splits']['train']}/{m['splits']['val']}/{m['splits']['test']}.",
            ),
            (
                "Table 1. Performance comparison on the test set",
                table + "\n\nParams counted with this head "
                "(the paper's 2.5M / 86M include ImageNet's 1000-class head). Per-class metrics and confusion "
                "matrices: metrics.json, confusion.png (one panel per model); training curves: curves.png.",
            ),
            ("Figure 1. Grad-CAM, baseline vs distilled", "![Grad-CAM](gradcam.png)"),
        ],
    )


def summary_entries() -> list[Entry]:
    return [
        Entry(
            NAME,
            "teacher: ViT-B/16 (1000 classes)",
            lambda: build_teacher(TeacherConfig(), 1000, 224),
            paper_params_m=86.0,
        ),
        Entry(
            NAME,
            "student: MobileNetV3-Small (1000 classes)",
            lambda: build_student(StudentConfig(), 1000),
            paper_params_m=2.5,
        ),
        Entry(NAME, "student: MobileNetV3-Small (2 classes)", lambda: build_student(StudentConfig(), 2)),
    ]


def _deployed(cfg: Config, num_classes: int) -> tuple[torch.nn.Module, str]:
    return build_student(cfg.student, num_classes), "distilled"


CELL = CellSpec(kind="cls", extract=roles("distilled"), deployed=_deployed, overrides=("gradcam.images=0",))
