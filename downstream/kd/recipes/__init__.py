"""The four supervised KD recipes; each module has ``NAME``, ``Config``, ``run(cfg, data, out)``,
``summary_entries()`` and the paper's reported figures."""

from __future__ import annotations

from downstream.kd.recipes import csa_moe, hdkd, nanoray, vit_mobilenet

RECIPES = {m.NAME: m for m in (vit_mobilenet, nanoray, hdkd, csa_moe)}
