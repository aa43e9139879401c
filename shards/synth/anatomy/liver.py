"""Liver (convex probe, subcostal/intercostal): abdominal wall, homogeneous fine-textured
parenchyma (sometimes bright fatty liver with stronger attenuation), hepatic and portal vessels
(anechoic, portal ones with bright walls), sometimes the gallbladder, the right kidney (dark
cortex, bright sinus) and a rib shadow, and the bright curved diaphragm."""

from __future__ import annotations

import numpy as np

from shards.synth.anatomy.extent import Extent
from shards.synth.anatomy.wall import add_wall
from shards.synth.scene import Scene
from shards.synth.shapes import Wavy, below, ellipse, line, ring, tube
from shards.synth.texture import SmoothField


def liver(rng: np.random.Generator, extent: Extent, atten_db_cm: float) -> Scene:
    D = extent.depth_mm
    tex = SmoothField(rng, extent.bounds, corr_mm=rng.uniform(2.0, 5.0))
    fine = SmoothField(rng, extent.bounds, corr_mm=rng.uniform(0.8, 1.5))
    fatty = rng.random() < 0.25
    base_db = rng.uniform(3.0, 6.0) if fatty else rng.uniform(-1.0, 1.0)
    atten = atten_db_cm * (1.6 if fatty else 1.0)
    s = Scene(lambda p: np.float32(base_db) + 1.5 * tex(p) + 0.7 * fine(p), atten)
    wall = add_wall(s, rng, extent, fat_mm=(6.0, 20.0), muscle_mm=(6.0, 12.0))
    top = wall.level + 3.0
    diaphragm = Wavy(
        rng.uniform(0.72, 0.92) * D,
        amp=rng.uniform(6.0, 15.0),
        period=extent.width_mm * rng.uniform(2.5, 4.0),
        phase=rng.uniform(0.5, 2.6),
    )
    below_wall = Wavy(top)
    for _ in range(int(rng.integers(5, 13))):  # vessels: cross-sections (ovals) and short branching segments
        r = rng.uniform(1.5, 6.0)
        y = rng.uniform(top + r + 3.0, 0.8 * D)
        hw = extent.half_width(y)
        x = rng.uniform(-hw, hw)
        portal = rng.random() < 0.5  # portal veins have an echogenic wall
        if rng.random() < 0.5:
            a, b, ang = r * rng.uniform(1.0, 2.2), r * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi)
            box = (x - a - 2, x + a + 2, y - a - 2, y + a + 2)
            if portal:
                s.add(
                    lambda p, e=(x, y, a + 0.9, b + 0.9, ang): ellipse(p, *e) & below(p, below_wall),
                    10.0,
                    bbox=box,
                )
            s.add(
                lambda p, e=(x, y, a, b, ang): ellipse(p, *e) & below(p, below_wall),
                -36.0,
                atten_db_cm=0.3 * atten,
                bbox=box,
            )
            continue
        ang, length = rng.uniform(0, np.pi), rng.uniform(6.0, 25.0)
        segs = [(x, y, x + length * np.cos(ang), y + length * np.sin(ang), r)]
        if rng.random() < 0.6:  # a branch from the far end, narrower
            bx, by = segs[0][2], segs[0][3]
            ang2 = ang + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9)
            l2 = rng.uniform(5.0, 18.0)
            segs.append((bx, by, bx + l2 * np.cos(ang2), by + l2 * np.sin(ang2), r * rng.uniform(0.5, 0.8)))
        for x0, y0, x1, y1, rr in segs:
            box = (min(x0, x1) - rr - 2, max(x0, x1) + rr + 2, min(y0, y1) - rr - 2, max(y0, y1) + rr + 2)
            if portal:
                s.add(lambda p, t=(x0, y0, x1, y1, rr + 0.9): tube(p, *t) & below(p, below_wall), 10.0, bbox=box)
        for x0, y0, x1, y1, rr in segs:
            box = (min(x0, x1) - rr - 2, max(x0, x1) + rr + 2, min(y0, y1) - rr - 2, max(y0, y1) + rr + 2)
            s.add(
                lambda p, t=(x0, y0, x1, y1, rr): tube(p, *t) & below(p, below_wall),
                -36.0,
                atten_db_cm=0.3 * atten,
                bbox=box,
            )
    if rng.random() < 0.25:  # gallbladder
        gx, gy = rng.uniform(-0.3, 0.3) * extent.half_width(0.3 * D), top + rng.uniform(12.0, 30.0)
        ga, gb, gang = rng.uniform(14.0, 24.0), rng.uniform(7.0, 13.0), rng.uniform(-0.4, 0.4)
        s.add(lambda p: ring(p, gx, gy, ga, gb, 1.2, gang), 6.0)
        s.add(lambda p: ellipse(p, gx, gy, ga - 0.6, gb - 0.6, gang), -40.0, atten_db_cm=0.0)
    if rng.random() < 0.35:  # right kidney, deep
        kx, ky = rng.uniform(-0.3, 0.3) * extent.half_width(0.7 * D), rng.uniform(0.6, 0.75) * D
        ka, kb, kang = rng.uniform(22.0, 32.0), rng.uniform(11.0, 16.0), rng.uniform(-0.4, 0.4)
        s.add(lambda p: ring(p, kx, ky, ka + 1, kb + 1, 2.0, kang), 8.0)
        s.add(lambda p: ellipse(p, kx, ky, ka, kb, kang), lambda p: -6.0 + 1.5 * tex(p))
        s.add(lambda p: ellipse(p, kx, ky, 0.55 * ka, 0.4 * kb, kang), lambda p: 9.0 + 3.0 * fine(p))
    s.add(lambda p: below(p, diaphragm), lambda p: -8.0 + 3.0 * tex(p))
    s.add(lambda p: line(p, diaphragm, 2.5), 16.0)
    if rng.random() < 0.3:  # a rib in the wall: bright surface, radial shadow behind
        y = wall.level * rng.uniform(0.5, 0.8)
        hw = extent.half_width(y)
        x = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.8) * hw
        s.add(lambda p: ellipse(p, x, y, 7.0, 3.5), 14.0, atten_db_cm=400.0)
    s.lesion_zone = extent.zone(max(top + 5.0, 0.28 * D), 0.68 * D, frac=0.6)
    s.host_db = base_db
    return s
