"""Paper 000: hybrid ViT-B/16 + ConvNeXt-Tiny teacher -> MobileNetV3 student, logit KD, CPU efficiency.

Paper settings (preset ``downstream/kd/configs/vit_mobilenet.yaml``): 224 px, ImageNet
normalisation, no augmentation (so the teacher's logits are computed once),
``alpha*CE + (1-alpha)*T^2*KL`` with T = 4, alpha = 0.5 (``loss.ce_weight=0.5``,
``loss.kd_weight=0.5``); AdamW lr 1e-4, wd 0.01, 15 epochs; an independent stratified test set
(263 of BUSI's 780 images -> ratio 0.34). Not stated in the paper, chosen here: the teacher is
trained with the student's optimiser settings; no model selection is mentioned, so the last epoch
is kept (``select: last``; a 10 % validation split is still held out to plot curves).
``teacher.encoder=SPEC`` replaces the hybrid teacher by any downstream encoder (e.g. the distilled
ResNet-50 export) with a linear head; the loss needs its logits only.
Report: its Table 1 (class-wise precision / recall / F1, teacher vs student), Table 2 (size MB,
CPU latency ms, FPS at batch size 1, improvement) and the from-scratch baseline of §IV.4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from downstream.data.inputs import Inputs
from downstream.edge.measure import fp32_mib, models_side_by_side
from downstream.fit import FitConfig
from downstream.kd.data import DataConfig
from downstream.kd.losses import LogitKDLoss, LogitLossConfig
from downstream.kd.models.backbones import create
from downstream.kd.models.encoder_teacher import EncoderTeacher
from downstream.kd.models.encoder_teacher import teacher_arch as encoder_arch
from downstream.kd.models.hybrid_teacher import HybridViTConvNeXt
from downstream.kd.pipeline import LogitKDSpec, logit_kd, start
from downstream.kd.recipes.base import CellSpec, Entry, roles
from downstream.kd.report import md_table, pct, plot_bars, plot_history, write_report
from sonodistill.atomic import write_json
from sonodistill.config import save_config, to_dict
from sonodistill.precision import MixedPrecision

NAME = "vit_mobilenet"
TEACHER_OUTPUTS = ("logits",)
PAPER = {
    "teacher": {"mb": 438.8, "latency_ms": 242.9, "fps": 4.1, "accuracy": 0.9506},
    "student": {"mb": 5.9, "latency_ms": 16.3, "fps": 61.5, "accuracy": 0.9506},
    "scratch_accuracy": 0.8846,
}


@dataclass
class TeacherConfig:
    vit: str = "vit_base_patch16_224"
    convnext: str = "convnext_tiny"
    head_hidden: int = 1024
    dropout: float = 0.4
    pretrained: bool = False  # timm weights from the local cache (the paper starts from ImageNet-21k)
    vit_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {depth: 2, embed_dim: 64, num_heads: 2}
    convnext_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""  # a trained teacher (model.safetensors of a previous run) instead of training one
    encoder: str = ""  # a downstream encoder spec (export folder, hf-hub:, timm:, dinov3:) instead of the hybrid
    train: FitConfig = field(default_factory=FitConfig)


@dataclass
class StudentConfig:
    model: str = "mobilenetv3_small_100"  # or mobilenetv3_large_100
    pretrained: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    train: FitConfig = field(default_factory=FitConfig)


@dataclass
class EfficiencyConfig:
    runs: int = 50  # timed batch-size-1 forward passes (median reported); 0 = not measured
    warmup: int = 10
    threads: int = 0  # torch CPU threads while timing (0 = leave as is)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LogitLossConfig = field(default_factory=LogitLossConfig)
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)
    seed: int = 42
    mixed_precision: MixedPrecision = "auto"  # auto: bf16 on GPUs, fp32 on CPU


def build_teacher(cfg: TeacherConfig, num_classes: int, img_size: int) -> torch.nn.Module:
    if cfg.encoder:
        return EncoderTeacher.build(cfg.encoder, num_classes)
    return HybridViTConvNeXt(
        num_classes,
        cfg.vit,
        cfg.convnext,
        cfg.head_hidden,
        cfg.dropout,
        img_size,
        cfg.pretrained,
        cfg.vit_kwargs,
        cfg.convnext_kwargs,
    )


def teacher_arch(cfg: TeacherConfig, num_classes: int, img_size: int) -> dict[str, Any]:
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


def build_student(cfg: StudentConfig, num_classes: int) -> torch.nn.Module:
    return create(cfg.model, pretrained=cfg.pretrained, key="student.model", num_classes=num_classes, **cfg.kwargs)


def efficiency(models: dict[str, torch.nn.Module], img_size: int, cfg: EfficiencyConfig) -> dict[str, dict[str, float]]:
    """Table 2 figures on this machine's CPU, batch size 1, fp32 eager PyTorch, timed side by side."""
    old = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        x = torch.randn(1, 3, img_size, img_size)
        models = {k: m.to("cpu").float().eval() for k, m in models.items()}
        timed = models_side_by_side(models, x, cfg.runs, cfg.warmup)
        return {k: {"mb": fp32_mib(m), **timed[k]} for k, m in models.items()}
    finally:
        torch.set_num_threads(old)


def run(cfg: Config, data: str, out: Path) -> dict[str, Any]:
    r = start(data, cfg.data, out, cfg.seed, cfg.mixed_precision, recipe=NAME)
    size = cfg.data.img_size
    if r.main:
        save_config(cfg, out / "config.yaml")
    spec = LogitKDSpec(
        build_teacher=lambda c: build_teacher(cfg.teacher, c, size),
        teacher_arch=teacher_arch(cfg.teacher, len(r.prep.classes), size),
        teacher_checkpoint=cfg.teacher.checkpoint,
        teacher_train=cfg.teacher.train,
        build_student=lambda c: build_student(cfg.student, c),
        student_arch={"model": cfg.student.model, "num_classes": len(r.prep.classes), "kwargs": cfg.student.kwargs},
        student_train=cfg.student.train,
        loss=LogitKDLoss.from_config(cfg.loss),
        inputs=Inputs(channels_last=torch.cuda.is_available()),
    )
    res = logit_kd(r, spec, size)
    r.acc.wait_for_everyone()  # time on an otherwise idle process group: other ranks wait, main measures
    eff = (
        efficiency({"teacher": res.models["teacher"], "student": res.models["distilled"]}, size, cfg.efficiency)
        if r.main and cfg.efficiency.runs > 0
        else {}
    )
    metrics = {
        "recipe": NAME,
        "data": data,
        "classes": r.prep.classes,
        "splits": {k: len(v) for k, v in r.prep.parts.items()},
        "models": res.metrics,
        "efficiency": eff,
        "paper": PAPER,
        "history": {k: v.history for k, v in res.stages.items()},
        "config": to_dict(cfg),
    }
    if r.main:
        write_json(out / "metrics.json", metrics)
        plot_history({k: v.history for k, v in res.stages.items() if v.history}, out / "curves.png")
        if eff:
            plot_efficiency(eff, out / "efficiency.png")
        report(metrics, out / "report.md")
    return metrics


def plot_efficiency(eff: dict[str, dict[str, float]], path: Path) -> None:
    t, s = eff["teacher"], eff["student"]
    plot_bars(
        ["teacher", "student"],
        {
            "size (MB)": [t["mb"], s["mb"]],
            "latency (ms)": [t["median_ms"], s["median_ms"]],
            "FPS": [t["fps"], s["fps"]],
        },
        path,
        ylabel="",
        log=True,
        title="CPU, batch size 1",
    )


def report(m: dict[str, Any], path: Path) -> None:
    classes = m["classes"]
    t, s = m["models"]["teacher"], m["models"]["distilled"]
    rows = []
    for c in classes:
        for who, mm in (("Teacher", t), ("Student", s)):
            pc = mm["per_class"][c]
            rows.append(
                [
                    c.capitalize() if who == "Teacher" else "",
                    who,
                    f"{pc['precision']:.2f}",
                    f"{pc['recall']:.2f}",
                    f"{pc['f1']:.2f}",
                ]
            )
    for who, mm in (("Teacher", t), ("Student", s)):
        rows.append(
            [
                "Overall (macro)" if who == "Teacher" else "",
                who,
                f"{mm['macro_precision']:.2f}",
                f"{mm['macro_recall']:.2f}",
                f"{mm['macro_f1']:.2f}",
            ]
        )
    table1 = md_table(["Class", "Model", "Precision", "Recall", "F1-Score"], rows)
    p = m["paper"]
    table2 = (
        efficiency_table(m["efficiency"], t, s, p)
        if m["efficiency"]
        else ("Not measured (efficiency.runs=0; in a sweep the edge column times the student).")
    )
    sc = m["models"]["scratch"]
    impact = md_table(
        ["Model", "Params", "Accuracy", "Macro-F1", "AUC"],
        [
            [
                n,
                f"{mm['params'] / 1e6:.2f}M",
                pct(mm["accuracy"]),
                f"{mm['macro_f1']:.3f}",
                "n/a" if mm["auc"] is None else f"{mm['auc']:.3f}",
            ]
            for n, mm in (
                ("Teacher (hybrid ViT-ConvNeXt)", t),
                ("MobileNet-V3 from scratch", sc),
                ("MobileNet-V3 distilled", s),
            )
        ],
    )
    write_report(
        path,
        "ViT -> MobileNet-V3 knowledge distillation (paper 000)",
        [
            (
                "Data",
                f"classes: {', '.join(classes)}; images train/val/test: "
                f"{m['splits']['train']}/{m['splits']['val']}/{m['splits']['test']} (test set held out, stratified).",
            ),
            ("Table 1. Class-wise diagnostic performance (teacher vs student)", table1),
            (
                "Table 2. Efficiency comparison on CPU hardware",
                table2 + "\n\nBatch size 1, fp32 eager PyTorch on this "
                "machine's CPU, median of the timed runs; MB = MiB of the fp32 state dict. Confusion matrices: "
                "confusion.png (teacher, scratch, distilled); curves.png; efficiency.png.",
            ),
            (
                "Impact of distillation (§IV.4)",
                impact + f"\n\nPaper: from scratch {pct(p['scratch_accuracy'])}, "
                f"distilled {pct(p['student']['accuracy'])}.",
            ),
        ],
    )


def efficiency_table(eff: dict, t: dict, s: dict, p: dict) -> str:
    """Paper 000's Table 2: size, latency, FPS and accuracy of teacher and student."""
    et, es = eff["teacher"], eff["student"]
    return md_table(
        ["Metric", "Teacher (Hybrid ViT)", "Student (MobileNet-V3)", "Improvement", "Paper (teacher / student)"],
        [
            [
                "Model Size",
                f"{et['mb']:.1f} MB",
                f"{es['mb']:.1f} MB",
                f"{100 * (1 - es['mb'] / et['mb']):.1f}% ({et['mb'] / es['mb']:.1f}x)",
                f"{p['teacher']['mb']} / {p['student']['mb']} MB",
            ],
            [
                "Inference Time",
                f"{et['median_ms']:.1f} ms",
                f"{es['median_ms']:.1f} ms",
                f"{100 * (1 - es['median_ms'] / et['median_ms']):.1f} %",
                f"{p['teacher']['latency_ms']} / {p['student']['latency_ms']} ms",
            ],
            [
                "Frame Rate",
                f"{et['fps']:.1f} FPS",
                f"{es['fps']:.1f} FPS",
                f"{es['fps'] / et['fps']:.1f}x",
                f"{p['teacher']['fps']} / {p['student']['fps']} FPS",
            ],
            [
                "Accuracy",
                pct(t["accuracy"]),
                pct(s["accuracy"]),
                f"{100 * (s['accuracy'] - t['accuracy']):+.2f} pts",
                f"{pct(p['teacher']['accuracy'])} / {pct(p['student']['accuracy'])}",
            ],
        ],
    )


def summary_entries() -> list[Entry]:
    t = TeacherConfig()
    return [
        Entry(
            NAME, "teacher: hybrid ViT-B/16 + ConvNeXt-T (3 classes)", lambda: build_teacher(t, 3, 224), paper_mb=438.8
        ),
        Entry(NAME, "student: MobileNetV3-Small (3 classes)", lambda: build_student(StudentConfig(), 3), paper_mb=5.9),
        Entry(
            NAME,
            "student: MobileNetV3-Large (3 classes)",
            lambda: build_student(StudentConfig(model="mobilenetv3_large_100"), 3),
        ),
    ]


def _deployed(cfg: Config, num_classes: int) -> tuple[torch.nn.Module, str]:
    return build_student(cfg.student, num_classes), "distilled"


# a sweep cell reports the distilled student; the sweep's edge column times it instead of Table 2
CELL = CellSpec(kind="cls", extract=roles("distilled"), deployed=_deployed, overrides=("efficiency.runs=0",))
