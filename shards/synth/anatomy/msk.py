"""Musculoskeletal (linear probe, tendon long axis): skin and fat, a tendon with the fibrillar
pattern of tightly packed bright parallel lines (sometimes an anisotropy dark end), pennate
muscle with oblique bright septa, and a bright bone cortex that shadows everything behind it."""

from __future__ import annotations

import numpy as np

from shards.synth.anatomy.extent import Extent
from shards.synth.anatomy.wall import add_wall
from shards.synth.scene import Scene
from shards.synth.shapes import Wavy, band, below, line, stripes
from shards.synth.texture import SmoothField


def musculoskeletal(rng: np.random.Generator, extent: Extent, atten_db_cm: float) -> Scene:
    W, D = extent.width_mm, extent.depth_mm
    tex = SmoothField(rng, extent.bounds, corr_mm=rng.uniform(1.0, 3.0))
    wav = SmoothField(rng, extent.bounds, corr_mm=rng.uniform(3.0, 6.0))
    s = Scene(lambda p: -8.0 + 2.0 * tex(p), atten_db_cm)
    wall = add_wall(s, rng, extent, fat_mm=(2.5, 6.0), muscle_mm=None, fat_db=-7.0)
    slope = rng.uniform(-0.12, 0.12)
    t_top = Wavy(
        wall.level + rng.uniform(0.5, 2.0),
        amp=rng.uniform(0.2, 1.0),
        period=rng.uniform(30, 80),
        phase=rng.uniform(0, 6.3),
        slope=slope,
    )
    thick = rng.uniform(3.5, 7.0)
    t_bot = Wavy(t_top.level + thick, t_top.amp, t_top.period, t_top.phase, slope=slope)
    bone = Wavy.draw(
        rng,
        rng.uniform(0.65, 0.88) * D,
        amp=rng.uniform(1.0, 3.5),
        period=(40.0, 100.0),
        slope=0.1,
        wiggle=0.0,
    )
    angle, period = rng.uniform(0.2, 0.5) * rng.choice([-1, 1]), rng.uniform(2.0, 5.0)
    # Pennate muscle between tendon and bone.
    s.add(
        lambda p: band(p, t_bot, bone),
        lambda p: (
            -9.0
            + 7.0 * stripes(p.y * np.float32(np.cos(angle)) - p.x * np.float32(np.sin(angle)), period, 10)
            + 1.5 * tex(p)
        ),
    )
    fib = rng.uniform(0.45, 0.8)
    aniso = rng.random() < 0.4
    xa, side = rng.uniform(-W / 4, W / 4), rng.choice([-1.0, 1.0])

    def tendon(p):
        u = p.y - np.float32(slope) * p.x + np.float32(0.25) * wav(p)
        e = -4.0 + 11.0 * stripes(u, fib, 4) + tex(p)
        if aniso:  # anisotropy: fibres not perpendicular to the beam look dark
            e = e - 10.0 / (1.0 + np.exp(-np.float32(side) * (p.x - np.float32(xa)) / 2.0))
        return e

    s.add(lambda p: band(p, t_top, t_bot), tendon)
    s.add(lambda p: line(p, t_top, 0.5) | line(p, t_bot, 0.5), 6.0)
    s.add(lambda p: below(p, bone), lambda p: -26.0 + 2.0 * tex(p), atten_db_cm=300.0)
    s.add(lambda p: line(p, bone, 1.0), 20.0)
    s.lesion_zone = extent.zone(t_top.level, max(bone.level - 3.0, t_top.level + 6.0), frac=0.8)
    s.host_db = 0.0
    return s
