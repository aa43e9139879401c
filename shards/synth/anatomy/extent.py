"""The physical field of view a scene is built for."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Extent:
    width_mm: float  # lateral extent at the deepest point
    depth_mm: float
    radius_mm: float = 0.0  # convex/sector apex radius; 0 with half_angle 0 means linear
    half_angle: float = 0.0  # fan half-angle (rad)

    @property
    def linear(self) -> bool:
        return self.half_angle == 0.0

    def half_width(self, y: float) -> float:
        """Lateral half-extent of the field of view at vertical depth ``y`` (mm)."""
        if self.linear:
            return self.width_mm / 2.0
        return min((y + self.radius_mm) * float(np.tan(self.half_angle)), self.width_mm / 2.0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, x1, y0, y1) covering every point of the field of view."""
        top = 0.0 if self.linear else -self.radius_mm * (1.0 - float(np.cos(self.half_angle)))
        return (-self.width_mm / 2.0, self.width_mm / 2.0, top, self.depth_mm)

    def zone(self, y0: float, y1: float, frac: float = 0.7) -> tuple[float, float, float, float]:
        """A lesion zone between depths y0..y1, laterally ``frac`` of the narrowest half-width."""
        hw = frac * self.half_width(y0)
        return (-hw, hw, y0, y1)
