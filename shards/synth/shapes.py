"""Geometric primitives evaluated on physical points (mm): each returns a boolean array.

Boundaries of tissue layers are curves depth = f(x) (``Wavy``); organs and vessels are ellipses,
rings and tubes. All are vectorised over the points so a whole frame is painted in a few passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.synth.geometry import Points


@dataclass(frozen=True)
class Wavy:
    """A boundary depth(x) = level + slope*x + sum of two sinusoids (mm)."""

    level: float
    amp: float = 0.0
    period: float = 20.0
    phase: float = 0.0
    amp2: float = 0.0
    period2: float = 7.0
    phase2: float = 0.0
    slope: float = 0.0

    @staticmethod
    def draw(
        rng: np.random.Generator,
        level: float,
        amp: float,
        period: tuple[float, float] = (12.0, 40.0),
        slope: float = 0.0,
        wiggle: float = 0.25,
    ) -> Wavy:
        """A random boundary around ``level``; ``wiggle`` scales the short-period ripple."""
        return Wavy(
            level,
            amp * rng.uniform(0.5, 1.0),
            rng.uniform(*period),
            rng.uniform(0, 2 * np.pi),
            amp * wiggle * rng.uniform(0.0, 1.0),
            rng.uniform(4.0, 10.0),
            rng.uniform(0, 2 * np.pi),
            rng.uniform(-slope, slope) if slope else 0.0,
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        two_pi = np.float32(2 * np.pi)
        return (
            np.float32(self.level)
            + np.float32(self.slope) * x
            + np.float32(self.amp) * np.sin(two_pi * x / np.float32(self.period) + np.float32(self.phase))
            + np.float32(self.amp2) * np.sin(two_pi * x / np.float32(self.period2) + np.float32(self.phase2))
        )


def depth_of(p: Points, along_beam: bool) -> np.ndarray:
    return p.d if along_beam else p.y


def below(p: Points, top: Wavy, along_beam: bool = False) -> np.ndarray:
    return depth_of(p, along_beam) >= top(p.x)


def band(p: Points, top: Wavy, bottom: Wavy, along_beam: bool = False) -> np.ndarray:
    z = depth_of(p, along_beam)
    return (z >= top(p.x)) & (z < bottom(p.x))


def line(p: Points, curve: Wavy, thickness: float, along_beam: bool = False) -> np.ndarray:
    """A thin layer of ``thickness`` mm centred on a curve (fascia, pleura, bone surface)."""
    return np.abs(depth_of(p, along_beam) - curve(p.x)) <= np.float32(thickness / 2)


def _local(p: Points, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    dx = p.x - np.float32(cx)
    dy = p.y - np.float32(cy)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return c * dx + s * dy, -s * dx + c * dy


def ellipse_radius(p: Points, cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> np.ndarray:
    """Normalised elliptic radius: < 1 inside the ellipse (semi-axes a along x', b along y')."""
    u, v = _local(p, cx, cy, angle)
    return np.sqrt((u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2)


def ellipse(p: Points, cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> np.ndarray:
    return ellipse_radius(p, cx, cy, a, b, angle) < 1.0


def ring(p: Points, cx: float, cy: float, a: float, b: float, thickness: float, angle: float = 0.0) -> np.ndarray:
    """An elliptic shell about ``thickness`` mm thick centred on the ellipse (a, b)."""
    rho = ellipse_radius(p, cx, cy, a, b, angle)
    return np.abs(rho - 1.0) * np.float32(min(a, b)) <= np.float32(thickness / 2)


def tube(p: Points, x0: float, y0: float, x1: float, y1: float, radius: float) -> np.ndarray:
    """Points within ``radius`` of the segment (x0, y0)-(x1, y1): a vessel cut along its axis."""
    vx, vy = x1 - x0, y1 - y0
    n2 = max(vx * vx + vy * vy, 1e-9)
    t = np.clip(
        ((p.x - np.float32(x0)) * np.float32(vx) + (p.y - np.float32(y0)) * np.float32(vy)) / np.float32(n2),
        0.0,
        1.0,
    )
    ex = p.x - (np.float32(x0) + t * np.float32(vx))
    ey = p.y - (np.float32(y0) + t * np.float32(vy))
    return ex * ex + ey * ey <= np.float32(radius * radius)


def stripes(u: np.ndarray, period: float, sharpness: int) -> np.ndarray:
    """Thin bright lines: (0.5 + 0.5 cos(2 pi u / period)) ** sharpness, in [0, 1]."""
    c = np.float32(0.5) + np.float32(0.5) * np.cos(np.float32(2 * np.pi / period) * u)
    return c**sharpness
