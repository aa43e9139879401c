"""Paper 001's reproduction: the hdkd recipe across data sizes, its tables and Fig. 3.

One teacher on the whole training split, then for every data size of ``sweep.per_class`` (N
balanced images per class; 0 = all) the student with and without distillation (paper 001, §4.4).
Report: Table 2 (params / FLOPs), Tables 3-4 (accuracy per data size), Tables 6-7 (per-class
precision / recall / AUC of teacher, student and HDKD on all data) and Fig. 3 (``data_size.png``).
The recipe itself: :mod:`downstream.kd.recipes.hdkd`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from downstream.edge.measure import gmacs, num_params
from downstream.kd.data import PreparedData, balanced_subset
from downstream.kd.papers.base import Paper
from downstream.kd.recipes.hdkd import (
    RECIPE,
    HDKDConfig,
    HDKDModelConfig,
    HDKDRun,
    build_student,
    train_students,
    train_teacher,
)
from downstream.kd.report import md_table, pct, plot_history, plot_lines, write_report
from sonodistill.atomic import write_json
from sonodistill.config import ConfigError, to_dict
from sonodistill.logs import is_main_rank

log = logging.getLogger(__name__)

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
class DataSizeSweepConfig:
    """The paper's data-size sweep: the student pair trained on N balanced images per class."""

    per_class: list[int] = field(default_factory=lambda: [50, 100, 150, 0])  # images per class; 0 = all training data
    seed: int = 0  # which N images of each class

    def __post_init__(self) -> None:
        n = self.per_class
        if not n or any(not isinstance(v, int) or v < 0 for v in n) or len(set(n)) != len(n):
            raise ConfigError(f"sweep.per_class: expected distinct integers >= 0 (0 = all training data), got {n}")


@dataclass
class HDKDPaperConfig(HDKDConfig):
    """Paper 001's reproduction: the recipe plus its data-size sweep."""

    sweep: DataSizeSweepConfig = field(default_factory=DataSizeSweepConfig)


def complexity(
    m: HDKDModelConfig, num_classes: int, size: int, teacher: torch.nn.Module
) -> dict[str, dict[str, float]]:
    """Table 2: parameters and GMACs of the trained teacher (the MBCSA CNN or ``teacher.encoder``'s
    model, as trained), student and HDKD (built on the meta device)."""
    x = torch.zeros(1, 3, size, size, device=next(teacher.parameters()).device)
    out = {"teacher": {"params": num_params(teacher), "gmacs": gmacs(teacher, x)}}
    with torch.device("meta"):
        x = torch.zeros(1, 3, size, size)
        for key, model in (
            ("student", build_student(m, num_classes, size, False)),
            ("hdkd", build_student(m, num_classes, size, True)),
        ):
            out[key] = {"params": num_params(model), "gmacs": gmacs(model, x)}
    return out


class HDKDPaper(Paper):
    recipe = RECIPE
    config = HDKDPaperConfig

    def reproduce(self, cfg: HDKDPaperConfig, data: PreparedData, out: Path) -> dict[str, Any]:
        h = HDKDRun.start(cfg, data, out)
        teacher = train_teacher(h)
        largest = max(Counter(int(r.label) for r in data.parts["train"]).values())
        for n in cfg.sweep.per_class:
            if n >= largest:
                log.warning(
                    f"sweep.per_class {n}: no class has more than {largest} training images, so this size "
                    "trains on the whole training split"
                )
        sweep = []
        for n in cfg.sweep.per_class:
            records = balanced_subset(data.parts["train"], n, cfg.sweep.seed)
            pair = train_students(h, records, n, cfg.sweep.seed, plot=n <= 0)
            sweep.append({"per_class": n, "n_train": len(records), **{v: met for v, (_, met) in pair.items()}})
        size = cfg.image_size
        metrics = {
            "recipe": self.recipe.name,
            "data": data.source,
            "classes": data.classes,
            "splits": {k: len(v) for k, v in data.parts.items()},
            "models": {
                "teacher": teacher,
                **{f"{v}_{row['per_class']}": row[v] for row in sweep for v in ("student", "hdkd")},
            },
            "sweep": sweep,
            "complexity": complexity(cfg.model, len(data.classes), size, h.teacher),
            "image_size": size,
            "paper": PAPER,
            "history": {k: s.history for k, s in h.stages.items()},
            "config": to_dict(cfg),
        }
        if is_main_rank():
            write_outputs(metrics, out)
        return metrics

    def single_run(self, cfg: HDKDPaperConfig) -> HDKDPaperConfig:
        return dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, per_class=[0]))


def write_outputs(metrics: dict[str, Any], out: Path) -> None:
    """``metrics.json``, ``curves.png``, Fig. 3 (``data_size.png``) and ``report.md``."""
    sweep = metrics["sweep"]
    write_json(out / "metrics.json", metrics)
    plot_history(metrics["history"], out / "curves.png")
    plot_lines(
        [str(row["per_class"]) if row["per_class"] > 0 else "all" for row in sweep],
        {
            "Student w/o distillation": [row["student"]["accuracy"] for row in sweep],
            "HDKD": [row["hdkd"]["accuracy"] for row in sweep],
        },
        out / "data_size.png",
        xlabel="training images per class",
        ylabel="test accuracy",
        xlog=True,
        title="Distilled vs non-distilled student across data sizes",
    )
    report(metrics, out / "report.md")


REPRODUCTION = HDKDPaper()


def table2(cx: dict[str, dict[str, float]], p: dict[str, Any]) -> str:
    """Table 2: parameters and GMACs of teacher, student and HDKD against the paper's."""
    rows = []
    for key, label, tokens, loss in (
        ("teacher", "Teacher", ("", ""), "l_CE"),
        ("student", "Student (w/o) distillation", ("✓", "✗"), "l_CE"),
        ("hdkd", "HDKD", ("✓", "✓"), "l_cls + λ·l_feat"),
    ):
        ours = [f"{cx[key]['params'] / 1e6:.2f}M", f"{cx[key]['gmacs']:.3f}G"]
        rows.append([label, *tokens, loss, *ours, f"{p[key]['params_m']}M / {p[key]['gflops']}G"])
    head = ["Model", "CLS token", "Distill token", "Loss function", "#Params", "GMACs", "Paper #Params / FLOPs"]
    return md_table(head, rows)


def table3(sweep: list[dict[str, Any]]) -> str:
    """Tables 3-4: test accuracy of both students per data size."""
    heads = [
        f"{row['n_train']} images ({row['per_class']}/class)"
        if row["per_class"] > 0
        else f"All data ({row['n_train']})"
        for row in sweep
    ]
    return md_table(
        [""] + heads,
        [
            ["Student w/o distillation"] + [pct(row["student"]["accuracy"]) for row in sweep],
            ["HDKD"] + [pct(row["hdkd"]["accuracy"]) for row in sweep],
        ],
    )


def table6(m: dict[str, Any]) -> str:
    """Tables 6-7: per-class precision, recall and AUC of teacher, student and HDKD on all data."""
    sweep = m["sweep"]
    full = next((row for row in sweep if row["per_class"] <= 0), sweep[-1])
    trio = (m["models"]["teacher"], full["student"], full["hdkd"])
    rows = []
    for c in m["classes"]:
        rows.append(
            [c]
            + [pct(mm["per_class"][c]["precision"], 1) for mm in trio]
            + [pct(mm["per_class"][c]["recall"], 1) for mm in trio]
            + [pct(mm["per_class_auc"][c], 1) for mm in trio]
            + [full["hdkd"]["per_class"][c]["support"]]
        )
    rows.append(
        ["Avg."]
        + [pct(mm["macro_precision"], 1) for mm in trio]
        + [pct(mm["macro_recall"], 1) for mm in trio]
        + [pct(mm["auc"], 1) for mm in trio]
        + [full["hdkd"]["n_images"]]
    )
    head = ["Class", "Precision Teacher", "Student", "HDKD", "Recall Teacher", "Student", "HDKD"]
    return md_table([*head, "AUC Teacher", "Student", "HDKD", "#"], rows)


def report(m: dict[str, Any], path: Path) -> None:
    p = m["paper"]
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
                table2(m["complexity"], p)
                + f"\n\nGMACs at {m['image_size']} px (torch flop counter / 2; the paper's FLOPs are MACs at "
                "224 px and also count normalisation and activations).",
            ),
            (
                "Tables 3-4. Test accuracy across data sizes",
                table3(m["sweep"])
                + "\n\nPaper (HAM-10000, 50/100/150/class, all): student "
                + ", ".join(pct(x) for x in p["ham10000"]["student"])
                + "; HDKD "
                + ", ".join(pct(x) for x in p["ham10000"]["hdkd"])
                + ". Figure: data_size.png.",
            ),
            ("Tables 6-7. Per-class precision, recall and AUC (all data)", table6(m)),
        ],
    )
