"""The supervised KD recipes; each module has ``NAME``, ``Config``, ``run(cfg, data, out)``,
``summary_entries()``, ``TEACHER_OUTPUTS``, ``CELL`` (how it runs as a sweep row) and the paper's
reported figures. Four classification recipes (papers 000, 003, 001, 004) and one segmentation
recipe (``seg_unet``, after Liu et al., CVPR 2019)."""

from __future__ import annotations

from downstream.kd.recipes import csa_moe, hdkd, nanoray, seg_unet, vit_mobilenet

RECIPES = {m.NAME: m for m in (vit_mobilenet, nanoray, hdkd, csa_moe, seg_unet)}
