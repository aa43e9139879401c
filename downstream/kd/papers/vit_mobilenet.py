"""Paper 000's reproduction: the vit_mobilenet recipe, its Table 2 CPU timing and its report.

Report: Table 1 (class-wise precision / recall / F1, teacher vs student), Table 2 (size MB, CPU
latency ms, FPS at batch size 1, improvement) and the from-scratch baseline of §IV.4;
``efficiency.png``. The recipe itself: :mod:`downstream.kd.recipes.vit_mobilenet`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from downstream.edge.measure import fp32_mib, models_side_by_side
from downstream.kd.data import PreparedData
from downstream.kd.papers.base import Paper
from downstream.kd.recipes.vit_mobilenet import RECIPE, VitMobilenetConfig
from downstream.kd.report import md_table, pct, plot_bars, plot_history, write_report
from sonodistill.atomic import write_json
from sonodistill.config import ConfigError, to_dict

PAPER = {
    "teacher": {"mb": 438.8, "latency_ms": 242.9, "fps": 4.1, "accuracy": 0.9506},
    "student": {"mb": 5.9, "latency_ms": 16.3, "fps": 61.5, "accuracy": 0.9506},
    "scratch_accuracy": 0.8846,
}


@dataclass
class EfficiencyConfig:
    """Table 2: teacher and student timed on this machine's CPU at batch size 1."""

    runs: int = 50  # timed batch-size-1 forward passes (median reported); 0 = not measured
    warmup: int = 10  # untimed passes first
    threads: int = 0  # torch CPU threads while timing (0 = leave as is)

    def __post_init__(self) -> None:
        for key in ("runs", "warmup", "threads"):
            if (value := getattr(self, key)) < 0:
                raise ConfigError(f"efficiency.{key}: expected an integer >= 0, got {value}")


@dataclass
class VitMobilenetPaperConfig(VitMobilenetConfig):
    """Paper 000's reproduction: the recipe plus its Table 2 CPU timing."""

    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)


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


class VitMobilenetPaper(Paper):
    recipe = RECIPE
    config = VitMobilenetPaperConfig

    def reproduce(self, cfg: VitMobilenetPaperConfig, data: PreparedData, out: Path) -> dict[str, Any]:
        res = self.recipe.run(cfg, data, out)
        state = PartialState()
        state.wait_for_everyone()  # time on an otherwise idle process group: other ranks wait, main measures
        models = {"teacher": res.models["teacher"], "student": res.models["distilled"]}
        main = state.is_main_process
        eff = efficiency(models, cfg.image_size, cfg.efficiency) if main and cfg.efficiency.runs > 0 else {}
        m = res.metrics
        metrics = {
            **{k: m[k] for k in ("recipe", "data", "classes", "splits", "models")},
            "efficiency": eff,
            "paper": PAPER,
            "history": m["history"],
            "config": to_dict(cfg),
        }
        if main:
            write_json(out / "metrics.json", metrics)
            plot_history({k: v for k, v in metrics["history"].items() if v}, out / "curves.png")
            if eff:
                plot_efficiency(eff, out / "efficiency.png")
            else:
                (out / "efficiency.png").unlink(missing_ok=True)  # an earlier run's timing of other models
            report(metrics, out / "report.md")
        return metrics

    def single_run(self, cfg: VitMobilenetPaperConfig) -> VitMobilenetPaperConfig:
        return dataclasses.replace(cfg, efficiency=dataclasses.replace(cfg.efficiency, runs=0))


REPRODUCTION = VitMobilenetPaper()


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
                "confusion.png (teacher, scratch, distilled); curves.png"
                + ("; efficiency.png." if m["efficiency"] else "."),
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
