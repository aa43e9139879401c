"""Cardiac (phased-array sector, apical four-chamber view): anechoic ventricles and atria with
near-field clutter, myocardium and septum, bright pericardium, mitral/tricuspid leaflets, and
dark lung around the heart."""

from __future__ import annotations

import numpy as np

from shards.synth.anatomy.extent import Extent
from shards.synth.scene import Scene
from shards.synth.shapes import ellipse, ring, tube
from shards.synth.texture import SmoothField


def cardiac(rng: np.random.Generator, extent: Extent, atten_db_cm: float) -> Scene:
    D = extent.depth_mm
    tex = SmoothField(rng, extent.bounds, corr_mm=rng.uniform(3.0, 6.0))
    L = D * rng.uniform(0.7, 0.9)  # apex-to-base length of the heart
    tilt = rng.uniform(-0.2, 0.2)
    ax, ay = rng.uniform(-0.05, 0.05) * D, rng.uniform(0.06, 0.14) * D
    c, s_ = np.cos(tilt), np.sin(tilt)

    def at(u: float, v: float) -> tuple[float, float]:  # heart frame (u lateral, v from apex) -> scene
        return ax + c * u * L - s_ * v * L, ay + s_ * u * L + c * v * L

    s = Scene(lambda p: -12.0 + 4.0 * tex(p), atten_db_cm)
    chest = float(rng.uniform(6.0, 14.0))  # chest wall in the near field
    s.add(lambda p: p.d < np.float32(chest), lambda p: 2.0 + 3.0 * tex(p))
    mx, my = at(0.0, 0.5)
    ma, mb = 0.36 * L * rng.uniform(0.95, 1.1), 0.53 * L
    s.add(lambda p: ring(p, mx, my, ma + 1.5, mb + 1.5, 3.0, tilt), 12.0)
    s.add(lambda p: ellipse(p, mx, my, ma, mb, tilt), lambda p: 1.0 + 2.5 * tex(p))
    haze_depth = rng.uniform(0.1, 0.2) * D
    blood = lambda p: -34.0 + 18.0 * np.exp(-p.y / np.float32(haze_depth)) * (0.6 + 0.4 * tex(p))  # noqa: E731
    j = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    chambers = [  # (u, v, a, b) in units of L: LV, RV, LA, RA
        (j(0.14, 0.18), j(0.30, 0.35), j(0.09, 0.12), j(0.22, 0.26)),
        (j(-0.19, -0.15), j(0.33, 0.38), j(0.07, 0.10), j(0.18, 0.22)),
        (j(0.14, 0.18), j(0.74, 0.78), j(0.10, 0.13), j(0.10, 0.13)),
        (j(-0.18, -0.14), j(0.72, 0.77), j(0.09, 0.12), j(0.10, 0.13)),
    ]
    for u, v, a, b in chambers:
        cx, cy = at(u, v)
        s.add(
            lambda p, cx=cx, cy=cy, a=a, b=b: ellipse(p, cx, cy, a * L, b * L, tilt),
            blood,
            atten_db_cm=0.3 * atten_db_cm,
        )
    for u0 in (0.05, -0.05):  # mitral (LV side) and tricuspid leaflets at the atrioventricular plane
        sgn = 1.0 if u0 > 0 else -1.0
        for du in (0.02, 0.2):
            x0, y0 = at(sgn * du, 0.56)
            x1, y1 = at(sgn * (du + rng.uniform(-0.03, 0.03)), 0.56 - rng.uniform(0.06, 0.12))
            s.add(lambda p, a=(x0, y0, x1, y1): tube(p, *a, 0.6), 10.0)
    s.lesion_zone = extent.zone(0.3 * D, 0.7 * D, frac=0.5)
    s.host_db = 1.0
    return s
