"""What every recipe module shares: its model-size :class:`Entry` rows, its YAML preset, and how it
runs as one row of a limited-label sweep (:class:`CellSpec`).

A recipe module has ``NAME``, ``Config`` (a typed dataclass), ``run(cfg, data, out)``,
``summary_entries()``, ``TEACHER_OUTPUTS`` (what its loss reads from the teacher: ``logits``,
``stages``, or nothing for a recipe without a teacher), ``CELL`` and the paper's reported figures.
Its paper's settings (splits, optimiser, schedule, epochs, loss weights, with the paper's own
symbols in comments) live in the preset ``downstream/kd/configs/<NAME>.yaml``: :func:`recipe_config`
always loads it first, then any user files (e.g. ``tiny_<NAME>.yaml``), then ``key=value`` overrides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from downstream.data.record import Catalog
from sonodistill.config import load_config
from sonodistill.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class Entry:
    """One model of a recipe for ``python -m downstream.kd summary`` (built on the meta device)."""

    recipe: str
    name: str
    build: Callable[[], torch.nn.Module]
    input_shape: tuple[int, ...] = (1, 3, 224, 224)
    paper_params_m: float | None = None
    paper_gflops: float | None = None
    paper_mb: float | None = None


@dataclass
class CellSpec:
    """How a recipe runs as one cell of ``python -m downstream.sweep`` (see :mod:`downstream.kd.cell`).

    ``overrides`` make one run one cell (hdkd: a single data size; csa_moe: one variant, one repeat);
    ``extract(metrics, cfg)`` returns the test metrics of the evaluated ``student`` and, where the
    recipe has them, of its ``teacher`` and from-``scratch`` baseline; ``deployed(cfg, classes)``
    builds the evaluated architecture and names the stage folder holding its weights; ``prepare(cfg)``
    maps a uint8 batch to that model's input (default: ImageNet normalisation);
    ``applies(catalog, cfg)`` returns why the recipe cannot run on a task's data (``None``: it can).
    """

    kind: Literal["cls", "seg"]
    extract: Callable[[dict, Any], dict[str, dict | None]]
    deployed: Callable[[Any, int], tuple[torch.nn.Module, str]]
    overrides: tuple[str, ...] = ()
    state_prefix: str = ""  # keys of the deployed model inside the stage's state dict (seg_unet: "unet.")
    views: bool = False  # input is CSA-MoE's [B, views, 3, S, S] (ViewSet) instead of [B, 3, S, S]
    prepare: Callable[[Any], Callable[[torch.Tensor], torch.Tensor]] | None = None  # cfg -> uint8 batch -> input
    applies: Callable[[Catalog, Any], str | None] | None = None
    notes: list[str] = field(default_factory=list)


def roles(student: str, teacher: str | None = "teacher", scratch: str | None = "scratch"):
    """``extract`` for recipes that keep every model's metrics under ``metrics["models"][name]``."""

    def extract(metrics: dict, cfg: Any) -> dict[str, dict | None]:
        models = metrics["models"]
        return {
            "student": models[student],
            "teacher": models.get(teacher) if teacher else None,
            "scratch": models.get(scratch) if scratch else None,
        }

    return extract


def check_teacher_keys(recipe: Any, overrides: Sequence[str]) -> None:
    """A recipe without a teacher refuses ``teacher.*`` keys with the reason, not a list of valid keys."""
    if getattr(recipe, "TEACHER_OUTPUTS", ("logits",)):
        return
    given = [o.split("=", 1)[0] for o in overrides if o.strip().startswith("teacher.")]
    if given:
        raise UserError(
            f"{given[0]}: recipe '{recipe.NAME}' has no teacher (it trains its model with cross-entropy only); "
            "teacher.* settings do not apply to it"
        )


def preset(name: str) -> Path:
    """The paper-settings preset of recipe ``name``."""
    return CONFIGS / f"{name}.yaml"


def recipe_config(recipe: Any, files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Any:
    """``recipe.Config`` from its preset, then ``files``, then ``overrides``."""
    check_teacher_keys(recipe, overrides)
    return load_config(recipe.Config, [preset(recipe.NAME), *files], overrides)
