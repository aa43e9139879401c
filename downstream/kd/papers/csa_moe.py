"""Paper 004's reproduction: every csa_moe variant ``repeats`` times, Tables I-IV and Fig. 4.

Each variant of ``variants`` runs ``repeats`` times (paper: 20, seeds ``seed + repeat``), reported
as mean +- SD. Report: Tables I-IV (metrics mean +- SD, params and GMACs) and Fig. 4, the gate
weights per epoch (train solid, validation dashed; ``gates_<variant>.png``). The recipe itself:
:mod:`downstream.kd.recipes.csa_moe`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from downstream.edge.measure import gmacs, num_params
from downstream.kd.data import PreparedData
from downstream.kd.papers.base import Paper
from downstream.kd.recipes.csa_moe import (
    LABELS,
    PAPER,
    RECIPE,
    VARIANTS,
    CSAMoEConfig,
    MoERun,
    build,
    check_variants,
    train_variant,
)
from downstream.kd.report import md_table, mean_sd, plot_history, plot_lines, write_report
from sonodistill.atomic import write_json
from sonodistill.config import to_dict
from sonodistill.errors import UserError
from sonodistill.logs import is_main_rank

METRICS = ("accuracy", "precision", "recall", "f1", "auc")


@dataclass
class CSAMoEPaperConfig(CSAMoEConfig):
    """Paper 004's reproduction: the recipe's variants, each run ``repeats`` times."""

    repeats: int = 20  # runs per variant (seeds seed, seed + 1, ...), reported as mean +- SD


def summarise(variant: str, runs: list[dict], params: int, histories: list[list[dict]]) -> dict[str, Any]:
    """A variant's repeats: their metrics, mean and sample SD, and (several experts) the gate curves."""
    backbone, views, csa = VARIANTS[variant]
    out = {
        "runs": runs,
        "params": params,
        "mean": {k: float(np.mean([x[k] for x in runs if x[k] is not None] or [np.nan])) for k in METRICS},
        "sd": {
            k: float(np.std([x[k] for x in runs if x[k] is not None] or [np.nan], ddof=1)) if len(runs) > 1 else 0.0
            for k in METRICS
        },
        "views": list(views),
        "backbone": backbone,
        "csa": csa,
    }
    if len(views) > 1:
        out["gates"] = gate_curves(histories)
    return out


class CSAMoEPaper(Paper):
    recipe = RECIPE
    config = CSAMoEPaperConfig

    def check(self, cfg: CSAMoEPaperConfig, files: bool = True) -> None:
        super().check(cfg, files)
        check_variants(cfg.variants)
        if cfg.repeats < 1:
            raise UserError(f"repeats: expected >= 1, got {cfg.repeats}")

    def reproduce(self, cfg: CSAMoEPaperConfig, data: PreparedData, out: Path) -> dict[str, Any]:
        self.check(cfg)
        m = MoERun.start(cfg, data, out)
        results: dict[str, Any] = {}
        histories: dict[str, list] = {}
        for variant in cfg.variants:
            runs, hists = [], []
            for rep in range(cfg.repeats):
                model, met, res = train_variant(m, variant, rep)
                runs.append(met)
                hists.append(res.history)
            histories[variant] = hists[0]
            results[variant] = summarise(variant, runs, num_params(model), hists)
        size = cfg.image_size
        with torch.device("meta"):
            for variant in cfg.variants:
                n_views = len(VARIANTS[variant][1])
                results[variant]["gmacs"] = gmacs(build(variant, cfg.model), torch.zeros(1, n_views, 3, size, size))
        metrics = {
            "recipe": self.recipe.name,
            "data": data.source,
            "classes": data.classes,
            "positive": m.positive,
            "splits": {k: len(v) for k, v in data.parts.items()},
            "repeats": cfg.repeats,
            "image_size": size,
            "models": results,
            "paper": PAPER,
            "history": histories,
            "config": to_dict(cfg),
        }
        if is_main_rank():
            write_json(out / "metrics.json", metrics)
            plot_history({LABELS[v]: h for v, h in histories.items()}, out / "curves.png")
            for variant, res in results.items():
                if "gates" in res:
                    plot_gates(res["gates"], res["views"], out / f"gates_{variant}.png", LABELS[variant])
            report(metrics, out / "report.md")
        return metrics

    def single_run(self, cfg: CSAMoEPaperConfig) -> CSAMoEPaperConfig:
        return dataclasses.replace(cfg, variants=cfg.variants[:1], repeats=1)


REPRODUCTION = CSAMoEPaper()


def gate_curves(histories: list[list[dict]]) -> dict[str, list[list[float]]]:
    """Per-epoch mean gate weight per expert, averaged over repeats: {'train': [[w_e...] per epoch], 'val': ...}."""
    out = {}
    for part in ("train", "val"):
        key = f"{part}_gates"
        if histories and histories[0] and key in histories[0][0]:
            per_run = np.array([[row[key] for row in h] for h in histories])  # runs, epochs, experts
            out[part] = per_run.mean(0).tolist()
    return out


def plot_gates(gates: dict[str, list[list[float]]], views: list[str], path: Path, title: str) -> None:
    names = {"image": "Expert-Img", "core": "Expert-Tumor", "boundary": "Expert-Boundary"}
    epochs = list(range(1, len(gates["train"]) + 1))
    series, styles = {}, {}
    for e, v in enumerate(views):
        for part, ls in (("train", "-"), ("val", "--")):
            if part in gates:
                series[f"{names[v]} ({part})"] = [row[e] for row in gates[part]]
                styles[f"{names[v]} ({part})"] = f"C{e}{ls}"
    plot_lines(
        epochs, series, path, xlabel="epoch", ylabel="gate weight", title=f"{title}: expert weights", styles=styles
    )


def report(m: dict[str, Any], path: Path) -> None:
    res, paper = m["models"], m["paper"]

    def row(v: str) -> list[str]:
        return [mean_sd([x[k] for x in res[v]["runs"]]) for k in METRICS]

    t2 = md_table(
        [
            "Model",
            "Cross-Stage Attention",
            "Mixture of Experts",
            "Accuracy(%)",
            "Precision(%)",
            "Recall(%)",
            "F1(%)",
            "AUC(%)",
            "Paper Acc / AUC",
        ],
        [
            [
                LABELS[v],
                "✓" if res[v]["csa"] else "×",
                "✓" if len(res[v]["views"]) > 1 else "×",
                *row(v),
                f"{paper[v][0]} / {paper[v][4]}",
            ]
            for v in res
        ],
    )
    t4 = md_table(
        [
            "Model",
            "Acc(%)",
            "Pre(%)",
            "Recall(%)",
            "F1(%)",
            "AUC(%)",
            "Params(M)",
            "GMACs",
            "Paper Params(M)",
            "Paper FLOPs(G)",
        ],
        [
            [
                LABELS[v],
                *row(v),
                f"{res[v]['params'] / 1e6:.3f}",
                f"{res[v]['gmacs']:.3f}",
                paper[v][5] if paper[v][5] is not None else "",
                paper[v][6] if paper[v][6] is not None else "",
            ]
            for v in res
        ],
    )
    gates = "\n".join(f"![{LABELS[v]} gates](gates_{v}.png)" for v in res if "gates" in res[v])
    write_report(
        path,
        "CSA-MoE-Net: cross-stage attention multi-expert network (paper 004)",
        [
            (
                "Data",
                f"classes: {', '.join(m['classes'])} (positive: {m['positive']}); images train/val/test: "
                f"{m['splits']['train']}/{m['splits']['val']}/{m['splits']['test']}; {m['repeats']} run(s) per model, "
                f"mean ± SD (sample SD) over runs.",
            ),
            ("Tables I-III. Test metrics per model", t2),
            (
                "Table IV. Metrics, parameters and complexity",
                t4
                + f"\n\nGMACs at {m['image_size']} px (torch flop counter / 2; the paper's FLOPs are MACs at 224 px).",
            ),
            (
                "Figure 4. Expert gate weights per epoch (train solid, validation dashed)",
                gates or "(no multi-expert model run)",
            ),
        ],
    )
