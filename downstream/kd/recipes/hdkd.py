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
warm-up epochs, wd 0.1, batch 32, 224 px, trained from scratch for each data size: N images per
class (50, 100, 150) and all data, with and without distillation.
Not given in the paper, chosen here: epochs (teacher 50, students 100), the teacher's "basic"
augmentation (horizontal flip + rotation +-10 degrees; SMOTE is not applied to images), best
validation accuracy kept. Student inputs are not augmented.
``teacher.encoder=SPEC`` replaces the MBCSA teacher by any downstream encoder with a linear head; the
logit terms need its logits, the feature term (``loss.feature_weight > 0``) three stages shaped like
the student's (channels ``model.channels`` at strides 2, 4, 8), else the run stops with the shapes
the encoder has (``loss.feature_weight=0`` distils logits only).
Report: Table 2 (params / FLOPs), Tables 3-4 (accuracy per data size), Tables 6-7 (per-class
precision / recall / AUC of teacher, student and HDKD on all data) and Fig. 3 (``data_size.png``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from downstream.data import ImageSet
from downstream.data.inputs import Inputs
from downstream.edge.measure import gmacs, num_params
from downstream.fit import FitConfig, fit
from downstream.kd.data import DataConfig, augmentation, balanced_subset
from downstream.kd.losses import HDKDLoss, HDKDLossConfig
from downstream.kd.models.encoder_teacher import EncoderTeacher
from downstream.kd.models.encoder_teacher import teacher_arch as encoder_arch
from downstream.kd.models.hdkd import HDKDStudent, HDKDTeacher
from downstream.kd.pipeline import evaluate, seed_everything, stage, start, teacher_key
from downstream.kd.recipes.base import CellSpec, Entry, roles
from downstream.kd.report import md_table, pct, plot_history, plot_lines, write_report
from downstream.kd.tasks import freeze
from downstream.tasks import Classification
from downstream.tasks.classification import correct
from sonodistill.atomic import write_json
from sonodistill.config import save_config, to_dict
from sonodistill.precision import MixedPrecision

NAME = "hdkd"
TEACHER_OUTPUTS = ("logits", "stages")
PAPER = {
    "teacher": {"params_m": 3.95, "gflops": 5.88},
    "student": {"params_m": 3.72, "gflops": 2.08},
    "hdkd": {"params_m": 3.73, "gflops": 2.09},
    "ham10000": {
        "per_class": [50, 100, 150, 0],
        "student": [0.75, 0.7729, 0.7862, 0.8961],
        "hdkd": [0.7971, 0.814, 0.8285, 0.9215],
    },
    "brain_tumor": {
        "per_class": [50, 100, 150, 0],
        "student": [0.765, 0.82, 0.8528, 0.9977],
        "hdkd": [0.929, 0.9512, 0.9695, 0.9985],
    },
}


@dataclass
class ModelConfig:
    channels: list[int] = field(default_factory=lambda: [64, 96, 192])
    teacher_blocks: list[int] = field(default_factory=lambda: [6, 6, 9])
    student_blocks: list[int] = field(default_factory=lambda: [2, 2, 3])
    dim: int = 256
    depth: int = 3
    heads: int = 8
    patch: int = 2


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    vflip: float = 0.0
    degrees: float = 10.0


@dataclass
class TeacherConfig:
    checkpoint: str = ""
    encoder: str = ""  # a downstream encoder spec instead of the MBCSA teacher (see the module docstring)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: FitConfig = field(default_factory=FitConfig)


@dataclass
class StudentConfig:
    train: FitConfig = field(default_factory=FitConfig)


@dataclass
class SweepConfig:
    per_class: list[int] = field(default_factory=lambda: [50, 100, 150, 0])  # 0 = all training data
    seed: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: HDKDLossConfig = field(default_factory=HDKDLossConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 42
    mixed_precision: MixedPrecision = "auto"  # auto: bf16 on GPUs, fp32 on CPU


def build_teacher(m: ModelConfig, num_classes: int, t: TeacherConfig | None = None, features: bool = True):
    """The MBCSA teacher, or ``t.encoder`` with the stages the feature loss needs (``features``)."""
    if t is not None and t.encoder:
        return EncoderTeacher.build(t.encoder, num_classes, stage_channels=m.channels if features else ())
    return HDKDTeacher(num_classes, m.teacher_blocks, m.channels)


def build_student(m: ModelConfig, num_classes: int, img_size: int, distill: bool) -> HDKDStudent:
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


def run(cfg: Config, data: str, out: Path) -> dict[str, Any]:
    r = start(data, cfg.data, out, cfg.seed, cfg.mixed_precision, recipe=NAME)
    size = cfg.data.img_size
    if r.main:
        save_config(cfg, out / "config.yaml")
    classes = r.prep.classes
    n_cls = len(classes)
    dataset = lambda recs: ImageSet(recs, size, labels=True)  # noqa: E731
    val = dataset(r.prep.parts["val"]) if r.prep.parts["val"] else None
    plain = Inputs(channels_last=torch.cuda.is_available())
    arch = {"channels": cfg.model.channels, "num_classes": n_cls}

    def trainer(task, train_recs, ocfg: FitConfig, name: str):
        def go():
            return fit(
                task,
                r.loader(dataset(train_recs), ocfg.batch_size, True),
                r.loader(val, ocfg.batch_size, False) if val is not None else None,
                ocfg,
                r.acc,
                name=name,
                log_dir=out / "tb",
            )

        return go

    seed_everything(cfg.seed)
    teacher = build_teacher(cfg.model, n_cls, cfg.teacher, features=cfg.loss.feature_weight > 0)
    t_arch = (
        encoder_arch(cfg.teacher.encoder, n_cls)
        if cfg.teacher.encoder
        else {**arch, "model": "hdkd_teacher", "blocks": cfg.model.teacher_blocks}
    )
    histories = {}
    if cfg.teacher.checkpoint:
        from downstream.kd.checkpoint import load_model

        load_model(teacher, cfg.teacher.checkpoint, arch=t_arch, key="teacher.checkpoint")
    else:
        a = cfg.teacher.augment
        t_task = Classification(teacher, Inputs(augment=augmentation(a.hflip, a.vflip, a.degrees)), classes)
        res = stage(
            r,
            "teacher",
            teacher,
            t_arch,
            {"train": to_dict(cfg.teacher.train), "aug": to_dict(a), "seed": cfg.seed},
            trainer(t_task, r.prep.parts["train"], cfg.teacher.train, "teacher"),
        )
        histories["teacher"] = res.history
    teacher = freeze(teacher.to(r.acc.device))
    results: dict[str, Any] = {"teacher": None, "sweep": []}
    t_metrics, t_pred = evaluate(r, Classification(teacher, plain, classes), r.prep.parts["test"], dataset, "teacher")
    t_metrics["per_class_auc"] = _per_class_auc(t_pred["labels"], t_pred["probs"], classes)
    results["teacher"] = t_metrics

    hdkd_loss = HDKDLoss(cfg.loss)
    s_key = {"train": to_dict(cfg.student.train), "model": to_dict(cfg.model), "seed": cfg.seed}
    for n in cfg.sweep.per_class:
        recs = balanced_subset(r.prep.parts["train"], n, cfg.sweep.seed)
        tag = f"{n}_per_class" if n > 0 else "all"
        row: dict[str, Any] = {"per_class": n, "n_train": len(recs)}
        for variant, distill in (("student", False), ("hdkd", True)):
            seed_everything(cfg.seed + 1)
            model = build_student(cfg.model, n_cls, size, distill)
            task = (
                HDKDTask(model, plain, classes, teacher, hdkd_loss)
                if distill
                else Classification(model, plain, classes)
            )
            key = {
                **s_key,
                "n": n,
                "sweep_seed": cfg.sweep.seed,
                "loss": to_dict(cfg.loss) if distill else None,
                "teacher": teacher_key(cfg.teacher.checkpoint, t_arch, cfg.teacher) if distill else None,
            }
            s_arch = {**arch, "model": f"hdkd_student_{variant}", "img_size": size}
            res = stage(
                r, f"{variant}_{tag}", model, s_arch, key, trainer(task, recs, cfg.student.train, f"{variant}_{tag}")
            )
            histories[f"{variant}_{tag}"] = res.history
            met, pred = evaluate(
                r, Classification(model, plain, classes), r.prep.parts["test"], dataset, f"{variant}_{tag}", plot=n <= 0
            )
            met["per_class_auc"] = _per_class_auc(pred["labels"], pred["probs"], classes)
            met["best_epoch"] = res.best_epoch
            row[variant] = met
        results["sweep"].append(row)

    with torch.device("meta"):
        x = torch.zeros(1, 3, size, size)
        complexity = {}
        for key_, m in (
            ("teacher", build_teacher(cfg.model, n_cls)),
            ("student", build_student(cfg.model, n_cls, size, False)),
            ("hdkd", build_student(cfg.model, n_cls, size, True)),
        ):
            complexity[key_] = {"params": num_params(m), "gmacs": gmacs(m, x)}
    metrics = {
        "recipe": NAME,
        "data": data,
        "classes": classes,
        "splits": {k: len(v) for k, v in r.prep.parts.items()},
        "models": {
            "teacher": results["teacher"],
            **{f"{v}_{row['per_class']}": row[v] for row in results["sweep"] for v in ("student", "hdkd")},
        },
        "sweep": results["sweep"],
        "complexity": complexity,
        "img_size": size,
        "paper": PAPER,
        "history": histories,
        "config": to_dict(cfg),
    }
    if r.main:
        write_json(out / "metrics.json", metrics)
        plot_history(histories, out / "curves.png")
        labels = [str(row["per_class"]) if row["per_class"] > 0 else "all" for row in results["sweep"]]
        plot_lines(
            labels,
            {
                "Student w/o distillation": [row["student"]["accuracy"] for row in results["sweep"]],
                "HDKD": [row["hdkd"]["accuracy"] for row in results["sweep"]],
            },
            out / "data_size.png",
            xlabel="training images per class",
            ylabel="test accuracy",
            xlog=True,
            title="Distilled vs non-distilled student across data sizes",
        )
        report(metrics, out / "report.md")
    return metrics


def report(m: dict[str, Any], path: Path) -> None:
    sweep, cx, p = m["sweep"], m["complexity"], m["paper"]
    t2 = md_table(
        ["Model", "CLS token", "Distill token", "Loss function", "#Params", "GMACs", "Paper #Params / FLOPs"],
        [
            [
                "Teacher",
                "",
                "",
                "l_CE",
                f"{cx['teacher']['params'] / 1e6:.2f}M",
                f"{cx['teacher']['gmacs']:.3f}G",
                f"{p['teacher']['params_m']}M / {p['teacher']['gflops']}G",
            ],
            [
                "Student (w/o) distillation",
                "✓",
                "✗",
                "l_CE",
                f"{cx['student']['params'] / 1e6:.2f}M",
                f"{cx['student']['gmacs']:.3f}G",
                f"{p['student']['params_m']}M / {p['student']['gflops']}G",
            ],
            [
                "HDKD",
                "✓",
                "✓",
                "l_cls + λ·l_feat",
                f"{cx['hdkd']['params'] / 1e6:.2f}M",
                f"{cx['hdkd']['gmacs']:.3f}G",
                f"{p['hdkd']['params_m']}M / {p['hdkd']['gflops']}G",
            ],
        ],
    )
    heads = [
        f"{row['n_train']} images ({row['per_class']}/class)"
        if row["per_class"] > 0
        else f"All data ({row['n_train']})"
        for row in sweep
    ]
    t3 = md_table(
        [""] + heads,
        [
            ["Student w/o distillation"] + [pct(row["student"]["accuracy"]) for row in sweep],
            ["HDKD"] + [pct(row["hdkd"]["accuracy"]) for row in sweep],
        ],
    )
    full = next((row for row in sweep if row["per_class"] <= 0), sweep[-1])
    trio = (("Teacher", m["models"]["teacher"]), ("Student", full["student"]), ("HDKD", full["hdkd"]))
    rows = []
    for c in m["classes"]:
        rows.append(
            [c]
            + [pct(mm["per_class"][c]["precision"], 1) for _, mm in trio]
            + [pct(mm["per_class"][c]["recall"], 1) for _, mm in trio]
            + [pct(mm["per_class_auc"][c], 1) for _, mm in trio]
            + [full["hdkd"]["per_class"][c]["support"]]
        )
    rows.append(
        ["Avg."]
        + [pct(mm["macro_precision"], 1) for _, mm in trio]
        + [pct(mm["macro_recall"], 1) for _, mm in trio]
        + [pct(mm["auc"], 1) for _, mm in trio]
        + [full["hdkd"]["n_images"]]
    )
    t6 = md_table(
        [
            "Class",
            "Precision Teacher",
            "Student",
            "HDKD",
            "Recall Teacher",
            "Student",
            "HDKD",
            "AUC Teacher",
            "Student",
            "HDKD",
            "#",
        ],
        rows,
    )
    write_report(
        path,
        "HDKD: hybrid data-efficient knowledge distillation (paper 001)",
        [
            (
                "Data",
                f"classes: {', '.join(m['classes'])}; images train/val/test: "
                f"{m['splits']['train']}/{m['splits']['val']}/{m['splits']['test']}; teacher trained on the whole "
                f"training split, students on balanced subsets.",
            ),
            (
                "Table 2. HDKD vs the student without distillation",
                t2 + f"\n\nGMACs at {m['img_size']} px (torch flop counter / 2; the paper's FLOPs are MACs at "
                "224 px and also count normalisation and activations).",
            ),
            (
                "Tables 3-4. Test accuracy across data sizes",
                t3
                + "\n\nPaper (HAM-10000, 50/100/150/class, all): student "
                + ", ".join(pct(x) for x in p["ham10000"]["student"])
                + "; HDKD "
                + ", ".join(pct(x) for x in p["ham10000"]["hdkd"])
                + ". Figure: data_size.png.",
            ),
            ("Tables 6-7. Per-class precision, recall and AUC (all data)", t6),
        ],
    )


def summary_entries() -> list[Entry]:
    m = ModelConfig()
    return [
        Entry(
            NAME,
            "teacher: MBCSA CNN [6,6,9] (7 classes)",
            lambda: build_teacher(m, 7),
            paper_params_m=3.95,
            paper_gflops=5.88,
        ),
        Entry(
            NAME,
            "student w/o distillation [2,2,3]+DFLT (7 classes)",
            lambda: build_student(m, 7, 224, False),
            paper_params_m=3.72,
            paper_gflops=2.08,
        ),
        Entry(
            NAME,
            "HDKD student, CLS + distill tokens (7 classes)",
            lambda: build_student(m, 7, 224, True),
            paper_params_m=3.73,
            paper_gflops=2.09,
        ),
        Entry(
            NAME,
            "teacher with Table 1 channels [64,128,192] (7 classes)",
            lambda: build_teacher(ModelConfig(channels=[64, 128, 192]), 7),
            paper_params_m=3.95,
            paper_gflops=5.88,
        ),
    ]


def _deployed(cfg: Config, num_classes: int) -> tuple[torch.nn.Module, str]:
    return build_student(cfg.model, num_classes, cfg.data.img_size, True), "hdkd_all"


# one cell = HDKD on the cell's whole label subset (its own per-class sweep is the sweep's fractions)
CELL = CellSpec(
    kind="cls",
    extract=roles("hdkd_0", scratch="student_0"),
    deployed=_deployed,
    overrides=("sweep.per_class=[0]",),
)
