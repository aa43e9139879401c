"""What every recipe module shares: its model-size :class:`Entry` rows and its YAML preset.

A recipe module has ``NAME``, ``Config`` (a typed dataclass), ``run(cfg, data, out)``,
``summary_entries()`` and the paper's reported figures. Its paper's settings (splits, optimiser,
schedule, epochs, loss weights, with the paper's own symbols in comments) live in the preset
``downstream/kd/configs/<NAME>.yaml``: :func:`recipe_config` always loads it first, then any
user files (e.g. ``tiny_<NAME>.yaml``), then ``key=value`` overrides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sonodistill.config import load_config

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


def preset(name: str) -> Path:
    """The paper-settings preset of recipe ``name``."""
    return CONFIGS / f"{name}.yaml"


def recipe_config(recipe: Any, files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Any:
    """``recipe.Config`` from its preset, then ``files``, then ``overrides``."""
    return load_config(recipe.Config, [preset(recipe.NAME), *files], overrides)
