"""Smooth random fields (tissue heterogeneity, flow velocity) evaluated at arbitrary points."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from shards.synth.geometry import Points


class SmoothField:
    """Zero-mean, unit-std Gaussian random field with correlation length ``corr_mm``.

    Drawn on a coarse grid covering [x0, x1] x [y0, y1] (mm) and interpolated bilinearly, so
    its cost does not depend on the number of pixels it is evaluated at beyond one lookup.
    """

    def __init__(self, rng: np.random.Generator, extent: tuple[float, float, float, float], corr_mm: float):
        x0, x1, y0, y1 = extent
        self.step = corr_mm / 2.0
        self.x0, self.y0 = x0 - 2 * self.step, y0 - 2 * self.step
        nx = int(np.ceil((x1 - x0) / self.step)) + 5
        ny = int(np.ceil((y1 - y0) / self.step)) + 5
        g = gaussian_filter(rng.standard_normal((ny, nx)), sigma=1.0, mode="wrap")
        self.grid = ((g - g.mean()) / (g.std() + 1e-9)).astype(np.float32)

    def __call__(self, p: Points) -> np.ndarray:
        iy = (p.y - np.float32(self.y0)) / np.float32(self.step)
        ix = (p.x - np.float32(self.x0)) / np.float32(self.step)
        return map_coordinates(self.grid, [iy, ix], order=1, mode="nearest")
