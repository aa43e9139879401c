"""What a paper reproduction is (:class:`Paper`) and the one a recipe without a paper module gets
(:class:`OneRun`): ``python -m downstream.kd train --recipe R`` runs it.

A reproduction runs its recipe as the paper did (HDKD: one teacher, then a student pair per data
size; CSA-MoE: every variant ``repeats`` times) and writes the paper's tables and figures. Its
config is the recipe's plus the reproduction's own settings (a data-size sweep, repeats, CPU
timing, a Grad-CAM panel), which a sweep cell, one run of the recipe, does not have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from downstream.kd.data import PreparedData
from downstream.kd.recipes.base import Recipe, RecipeResult
from downstream.kd.report import md_table, plot_history, write_report
from sonodistill.atomic import write_json
from sonodistill.logs import is_main_rank


class Paper(Protocol):
    """A paper's reproduction of a recipe (subclass it: ``single_run`` has a default)."""

    recipe: Recipe
    config: type  # the recipe's config class or a subclass adding the reproduction's settings

    def reproduce(self, cfg: Any, data: PreparedData, out: Path) -> dict[str, Any]:
        """Run the recipe as the paper did; write ``metrics.json``, ``report.md`` and figures; return the metrics."""
        ...

    def check(self, cfg: Any, files: bool = True) -> None:
        """The recipe's settings and the reproduction's own, refused before any data is read
        (``files=False``: the values alone, as ``--show-config`` checks them)."""
        self.recipe.check(cfg, files)

    def single_run(self, cfg: Any) -> Any:
        """``cfg`` with the reproduction's settings reduced to the one run of the recipe a sweep cell makes.

        Sweep cells made before the reproductions moved out of the recipes (issue 15) hashed their
        recipe config in this form; hashing it so keeps their keys, so a finished sweep stays finished."""
        return cfg


class OneRun(Paper):
    """The reproduction of a recipe that has no paper module: one run, its metrics and curves."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.config = recipe.config

    def reproduce(self, cfg: Any, data: PreparedData, out: Path) -> dict[str, Any]:
        result = self.recipe.run(cfg, data, out)
        write_run(self.recipe, result, out)
        return result.metrics


def write_run(recipe: Recipe, result: RecipeResult, out: Path) -> None:
    """One run's ``metrics.json``, ``curves.png`` and a ``report.md`` of its models' test metrics (main process)."""
    if not is_main_rank():
        return
    write_json(out / "metrics.json", result.metrics)
    histories = {k: v for k, v in result.metrics.get("history", {}).items() if v}
    if histories:
        plot_history(histories, out / "curves.png", "dice" if recipe.kind == "seg" else "accuracy")
    write_report(out / "report.md", f"{recipe.name}: one run", [("Test metrics", run_table(recipe, result))])


def run_table(recipe: Recipe, result: RecipeResult) -> str:
    """Teacher, from-scratch and deployed student: test metrics, parameters, selected epoch."""
    names = ("dice", "iou") if recipe.kind == "seg" else ("accuracy", "macro_f1")
    rows = []
    for label, m in (("teacher", result.teacher), ("from scratch", result.scratch), ("student", result.student)):
        if m is None:
            continue
        params = f"{m['params'] / 1e6:.2f}M" if "params" in m else ""
        rows.append([label, *(f"{m[k]:.4f}" for k in names), params, str(m.get("best_epoch", ""))])
    return md_table(["model", *names, "params", "best epoch"], rows)
