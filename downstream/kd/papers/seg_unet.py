"""The seg_unet reproduction: one run of the recipe and its report (teacher / scratch / distilled test
Dice and IoU, parameters, GMACs). The recipe itself: :mod:`downstream.kd.recipes.seg_unet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from downstream.kd.data import PreparedData
from downstream.kd.papers.base import Paper
from downstream.kd.recipes.seg_unet import RECIPE, SegUNetConfig
from downstream.kd.report import md_table, plot_history, write_report
from sonodistill.atomic import write_json
from sonodistill.logs import is_main_rank


class SegUNetPaper(Paper):
    recipe = RECIPE
    config = SegUNetConfig

    def reproduce(self, cfg: SegUNetConfig, data: PreparedData, out: Path) -> dict[str, Any]:
        metrics = self.recipe.run(cfg, data, out).metrics
        if is_main_rank():
            write_json(out / "metrics.json", metrics)
            plot_history({k: v for k, v in metrics["history"].items() if v}, out / "curves.png", "dice")
            report(metrics, out / "report.md")
        return metrics


REPRODUCTION = SegUNetPaper()


def report(m: dict[str, Any], path: Path) -> None:
    c = m["config"]
    rows = [
        [
            label,
            f"{mm['dice']:.4f}",
            f"{mm['iou']:.4f}",
            f"{mm['teacher_dice']:.4f}" if "teacher_dice" in mm else "",
            f"{mm['params'] / 1e6:.2f}M",
            f"{mm['gmacs']:.3f}",
        ]
        for label, mm in (
            (f"Teacher U-Net ({c['teacher']['encoder']})", m["models"]["teacher"]),
            (f"Student ({c['student']['encoder']}) from scratch", m["models"]["scratch"]),
            (f"Student ({c['student']['encoder']}) distilled", m["models"]["distilled"]),
        )
    ]
    loss = c["loss"]
    write_report(
        path,
        "Segmentation KD: U-Net teacher -> small U-Net student (Liu et al., CVPR 2019)",
        [
            (
                "Data",
                f"images train/val/test: {m['splits']['train']}/{m['splits']['val']}/{m['splits']['test']}; "
                f"{m['image_size']} px.",
            ),
            (
                "Test metrics",
                md_table(["Model", "Dice", "IoU", "Dice with the teacher", "Params", f"GMACs@{m['image_size']}"], rows)
                + f"\n\nLoss: task (Dice + BCE) + {loss['pixel_weight']} x pixel-wise KL (T = "
                f"{loss['temperature']}) + {loss['pair_weight']} x pair-wise ({loss['pair_nodes']}x"
                f"{loss['pair_nodes']} nodes) + {loss['feature_weight']} x decoder-stage matching. Curves: curves.png.",
            ),
        ],
    )
