"""Breast (linear probe): skin, lobulated subcutaneous fat crossed by Cooper's ligaments,
heterogeneous hyperechoic fibroglandular layer with fat lobules, retromammary fat, pectoralis
muscle with striations, then pleura/lung and sometimes a rib with its acoustic shadow."""

from __future__ import annotations

import numpy as np

from shards.synth.anatomy.extent import Extent
from shards.synth.scene import Scene
from shards.synth.shapes import Wavy, band, below, ellipse, line, ring, stripes
from shards.synth.texture import SmoothField


def breast(rng: np.random.Generator, extent: Extent, atten_db_cm: float) -> Scene:
    W, D = extent.width_mm, extent.depth_mm
    b = extent.bounds
    coarse = SmoothField(rng, b, corr_mm=rng.uniform(2.0, 4.0))
    fine = SmoothField(rng, b, corr_mm=rng.uniform(0.6, 1.2))
    skin = rng.uniform(1.2, 2.2)
    fat = Wavy.draw(rng, rng.uniform(0.12, 0.28) * D, amp=rng.uniform(1.0, 3.0), slope=0.06)
    gland = Wavy.draw(rng, fat.level + rng.uniform(0.3, 0.45) * D, amp=rng.uniform(1.5, 4.0), slope=0.08)
    muscle_top = Wavy.draw(rng, gland.level + rng.uniform(1.5, 4.0), amp=rng.uniform(0.5, 2.0))
    muscle_bot = Wavy.draw(rng, muscle_top.level + rng.uniform(5.0, 10.0), amp=rng.uniform(0.5, 2.0))
    pleura = Wavy.draw(rng, muscle_bot.level + rng.uniform(2.0, 6.0), amp=rng.uniform(0.3, 1.5))

    s = Scene(lambda p: -12.0 + 3.0 * coarse(p), atten_db_cm)  # lung below the pleura
    s.add(lambda p: band(p, Wavy(0.0), fat), lambda p: -9.0 + 2.5 * coarse(p))
    for _ in range(int(rng.integers(1, 5))):  # Cooper's ligaments
        c = Wavy.draw(
            rng,
            rng.uniform(skin, fat.level),
            amp=rng.uniform(1.5, 4.0),
            period=(15.0, 40.0),
            slope=0.4,
            wiggle=0.0,
        )
        t = float(rng.uniform(0.25, 0.5))
        s.add(lambda p, c=c, t=t: line(p, c, t) & band(p, Wavy(skin), fat), 4.0)
    s.add(lambda p: band(p, fat, gland), lambda p: 2.0 + 3.0 * coarse(p) + 2.0 * fine(p))
    for _ in range(int(rng.integers(2, 8))):  # fat lobules inside the glandular layer
        cx, cy = rng.uniform(-W / 2, W / 2), rng.uniform(fat.level, gland.level)
        a, bb = rng.uniform(1.5, 4.0), rng.uniform(1.0, 2.5)
        s.add(
            lambda p, cx=cx, cy=cy, a=a, bb=bb: ellipse(p, cx, cy, a, bb) & band(p, fat, gland),
            lambda p: -6.0 + 2.0 * coarse(p),
            bbox=(cx - a, cx + a, cy - a, cy + a),
        )
    s.add(lambda p: band(p, gland, muscle_top), lambda p: -9.0 + 2.0 * coarse(p))
    period, tilt = rng.uniform(1.5, 3.0), rng.uniform(-0.3, 0.3)
    s.add(
        lambda p: band(p, muscle_top, muscle_bot),
        lambda p: -6.0 + 5.0 * stripes(p.y - np.float32(tilt) * p.x, period, 6) + coarse(p),
    )
    s.add(lambda p: line(p, muscle_top, 0.5), 5.0)
    s.add(lambda p: line(p, muscle_bot, 0.5), 5.0)
    s.add(lambda p: line(p, pleura, 0.7), 12.0)
    if rng.random() < 0.15:  # a rib: bright anterior surface, complete shadow behind
        cx, cy = rng.uniform(-W / 3, W / 3), pleura.level - rng.uniform(2.0, 4.0)
        a, bb = rng.uniform(6.0, 9.0), rng.uniform(2.5, 4.0)
        s.add(
            lambda p: (
                ellipse(p, cx, cy, a, bb) | (below(p, Wavy(cy)) & (np.abs(p.x - np.float32(cx)) < np.float32(a * 0.9)))
            ),
            lambda p: -20.0 + 2.0 * coarse(p),
            atten_db_cm=60.0,
        )
        s.add(
            lambda p: ring(p, cx, cy, a, bb, 0.8) & (p.y < np.float32(cy)),
            14.0,
            bbox=(cx - a - 1, cx + a + 1, cy - bb - 1, cy + 1),
        )
    s.add(lambda p: p.y < np.float32(skin), 3.0)
    s.add(lambda p: p.y < np.float32(0.5), 12.0)
    s.lesion_zone = extent.zone(max(fat.level - 2.0, 0.12 * D), min(gland.level + 3.0, 0.8 * D), frac=0.8)
    s.host_db = 2.0
    return s
