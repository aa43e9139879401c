"""Every KD recipe by name, and the papers' reproductions of them.

``RECIPES`` is what ``--recipe NAME`` and a sweep's ``kd:NAME`` resolve to; ``PAPERS`` what
``python -m downstream.kd train --recipe NAME`` runs (a recipe without a paper module is run once,
:class:`~downstream.kd.papers.base.OneRun`). Adding a recipe: its module in ``recipes/``, its preset
``configs/<name>.yaml`` and one line here (docs/development.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from downstream.kd.papers import csa_moe as csa_moe_paper
from downstream.kd.papers import hdkd as hdkd_paper
from downstream.kd.papers import nanoray as nanoray_paper
from downstream.kd.papers import seg_unet as seg_unet_paper
from downstream.kd.papers import vit_mobilenet as vit_mobilenet_paper
from downstream.kd.papers.base import OneRun, Paper
from downstream.kd.recipes import csa_moe, hdkd, nanoray, seg_unet, vit_mobilenet
from downstream.kd.recipes.base import Recipe, check_teacher_keys, preset
from sonodistill.config import load_config
from sonodistill.errors import UserError

RECIPES: dict[str, Recipe] = {
    "vit_mobilenet": vit_mobilenet.RECIPE,  # paper 000: ViT-B/16 + ConvNeXt-T -> MobileNetV3, logit KD
    "nanoray": nanoray.RECIPE,  # paper 003: ViT-B/16 -> MobileNetV3-Small, logit KD
    "hdkd": hdkd.RECIPE,  # paper 001: MBCSA CNN -> MBCSA + DFLT, logit + stage-feature KD
    "csa_moe": csa_moe.RECIPE,  # paper 004: three experts on mask-derived views, cross-entropy (no teacher)
    "seg_unet": seg_unet.RECIPE,  # Liu et al. 2019: U-Net on any encoder -> small U-Net, pixel + pair-wise KD
}

PAPERS: dict[str, Paper] = {
    "vit_mobilenet": vit_mobilenet_paper.REPRODUCTION,  # Tables 1-2, scratch baseline, CPU timing
    "nanoray": nanoray_paper.REPRODUCTION,  # Table 1, Grad-CAM figure
    "hdkd": hdkd_paper.REPRODUCTION,  # data-size sweep, Tables 2-4 and 6-7, Fig. 3
    "csa_moe": csa_moe_paper.REPRODUCTION,  # every variant x repeats, Tables I-IV, gate weights (Fig. 4)
    "seg_unet": seg_unet_paper.REPRODUCTION,  # test Dice / IoU, parameters, GMACs
}


def recipe(name: str, where: str = "--recipe") -> Recipe:
    """The recipe called ``name`` (a one-line error listing the valid names otherwise)."""
    if name not in RECIPES:
        raise UserError(f"{where}: unknown recipe '{name}'; valid: {', '.join(RECIPES)}")
    return RECIPES[name]


def reproduction(name: str) -> Paper:
    """What ``python -m downstream.kd train --recipe name`` runs."""
    return PAPERS[name] if name in PAPERS else OneRun(recipe(name))


def reproduction_config(name: str, files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Any:
    """The config ``python -m downstream.kd train --recipe name`` resolves: the recipe's paper preset,
    then ``files``, then ``key=value`` overrides."""
    r = recipe(name)
    check_teacher_keys(r, overrides)
    return load_config(reproduction(name).config, [preset(name), *files], overrides)
