"""``python -m downstream.kd summary``: size of every recipe model next to its paper's figure.

Models are built on the meta device (no memory, no init cost), so even the 415 M-parameter
VGG-16 MoE is counted in a fraction of a second. Conventions are those of
:mod:`downstream.edge.measure`: GMACs (the papers' "GFLOPs" are MAC counts) at 224x224, MB =
MiB of the fp32 state dict.
"""

from __future__ import annotations

from typing import Any

import torch

from downstream.edge.measure import fp32_mib, gmacs, num_params
from downstream.kd.recipes.base import Entry
from downstream.kd.registry import RECIPES
from downstream.kd.report import md_table


def measure(entry: Entry) -> dict[str, Any]:
    with torch.device("meta"):
        model = entry.build()
        g = gmacs(model, torch.zeros(entry.input_shape))
    params = num_params(model)
    row = {
        "recipe": entry.recipe,
        "model": entry.name,
        "params": params,
        "params_m": round(params / 1e6, 3),
        "gmacs_224": round(g, 3),
        "fp32_mb": round(fp32_mib(model), 2),
        "paper_params_m": entry.paper_params_m,
        "paper_gflops": entry.paper_gflops,
        "paper_mb": entry.paper_mb,
    }
    if entry.paper_params_m:
        row["params_gap_pct"] = round(100 * (params / 1e6 - entry.paper_params_m) / entry.paper_params_m, 2)
    return row


def all_entries(recipe: str | None = None) -> list[Entry]:
    names = [recipe] if recipe else list(RECIPES)
    return [e for n in names for e in RECIPES[n].summary_entries()]


def table(rows: list[dict[str, Any]]) -> str:
    def paper(v, fmt):
        return "" if v is None else fmt.format(v)

    return md_table(
        ["recipe", "model", "params", "paper params", "gap", "GMACs@224", "paper GFLOPs", "fp32 MB", "paper MB"],
        [
            [
                r["recipe"],
                r["model"],
                f"{r['params_m']:.3f}M",
                paper(r["paper_params_m"], "{:.3f}M"),
                paper(r.get("params_gap_pct"), "{:+.2f}%"),
                f"{r['gmacs_224']:.3f}",
                paper(r["paper_gflops"], "{:.3f}"),
                f"{r['fp32_mb']:.1f}",
                paper(r["paper_mb"], "{:.1f}"),
            ]
            for r in rows
        ],
    )
