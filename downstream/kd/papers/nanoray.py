"""Paper 003's reproduction: the nanoray recipe, its Table 1 and Fig. 1 (Grad-CAM of the baseline vs
the distilled student on the same test images, ``gradcam.png``). The recipe itself:
:mod:`downstream.kd.recipes.nanoray`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from downstream.data import Record
from downstream.data.inputs import Inputs
from downstream.kd.data import PreparedData
from downstream.kd.gradcam import cams, panels
from downstream.kd.papers.base import Paper
from downstream.kd.recipes.nanoray import RECIPE, NanoRayConfig
from downstream.kd.report import md_table, pct, plot_history, write_report
from sonodistill.atomic import write_json
from sonodistill.config import ConfigError, to_dict
from sonodistill.logs import is_main_rank

PAPER = {
    "teacher": {"params": "86M", "accuracy": 0.8396, "f1": 0.8307},
    "scratch": {"params": "2.5M", "accuracy": 0.8329, "f1": 0.8236},
    "distilled": {"params": "2.5M", "accuracy": 0.8419, "f1": 0.8268},
}


@dataclass
class GradCamConfig:
    """Fig. 1: Grad-CAM of the scratch baseline and the distilled student."""

    images: int = 6  # test images in the panel (0: no panel)

    def __post_init__(self) -> None:
        if self.images < 0:
            raise ConfigError(f"gradcam.images: expected an integer >= 0 (0: no panel), got {self.images}")


@dataclass
class NanoRayPaperConfig(NanoRayConfig):
    """Paper 003's reproduction: the recipe plus its Grad-CAM figure."""

    gradcam: GradCamConfig = field(default_factory=GradCamConfig)


class NanoRayPaper(Paper):
    recipe = RECIPE
    config = NanoRayPaperConfig

    def reproduce(self, cfg: NanoRayPaperConfig, data: PreparedData, out: Path) -> dict[str, Any]:
        res = self.recipe.run(cfg, data, out)
        m = res.metrics
        metrics = {
            **{k: m[k] for k in ("recipe", "data", "classes", "splits", "models")},
            "paper": PAPER,
            "history": m["history"],
            "config": to_dict(cfg),
        }
        if is_main_rank():
            write_json(out / "metrics.json", metrics)
            plot_history({k: v for k, v in metrics["history"].items() if v}, out / "curves.png")
            figure = out / "gradcam.png"
            if cfg.gradcam.images > 0:
                inputs = Inputs(channels_last=torch.cuda.is_available())
                test = data.parts["test"]
                gradcam_panel(res, inputs, test, data.classes, cfg.image_size, cfg.gradcam.images, figure)
            else:
                figure.unlink(missing_ok=True)  # an earlier run's panel would show other models
            report(metrics, out / "report.md", figure.is_file())
        return metrics

    def single_run(self, cfg: NanoRayPaperConfig) -> NanoRayPaperConfig:
        return dataclasses.replace(cfg, gradcam=dataclasses.replace(cfg.gradcam, images=0))


REPRODUCTION = NanoRayPaper()


def in_turn(records: Sequence[Record], n: int) -> list[Record]:
    """The first ``n`` records taking the classes in turn, so that every class shows up; a class
    that runs out leaves its turn to the others."""
    by_class: dict[int, list[Record]] = {}
    for rec in records:
        by_class.setdefault(rec.label, []).append(rec)
    rounds = itertools.zip_longest(*[by_class[k] for k in sorted(by_class)])
    return [rec for group in rounds for rec in group if rec is not None][:n]


def gradcam_panel(res, inputs: Inputs, test_records, classes: list[str], size: int, n: int, path: Path) -> None:
    """Baseline vs distilled Grad-CAM on the first ``n`` test images, for the true class."""
    from downstream.data import ImageSet

    ds = ImageSet(in_turn(test_records, n), size, labels=True)
    items = [ds[i] for i in range(len(ds))]
    gray = torch.stack([it["image"] for it in items])
    labels = [int(it["label"]) for it in items]
    x = inputs(gray, train=False)
    maps = {}
    for name, title in (("scratch", "baseline (scratch)"), ("distilled", "distilled")):
        model = res.models[name].to("cpu").float()
        maps[title] = cams(model, x, labels)
    panels(gray[:, 0].numpy(), maps, path, titles=[f"input ({classes[y]})" for y in labels])


def report(m: dict[str, Any], path: Path, gradcam: bool = True) -> None:
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
            *([("Figure 1. Grad-CAM, baseline vs distilled", "![Grad-CAM](gradcam.png)")] if gradcam else []),
        ],
    )
