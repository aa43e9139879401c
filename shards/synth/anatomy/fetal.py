"""Fetal (convex probe): maternal abdominal wall and myometrium, anechoic amniotic fluid with
posterior enhancement, an anterior or posterior placenta, and either the fetal head (bright
skull ellipse that shadows, midline falx, cavum septi pellucidi, thalami) or the fetal abdomen
(stomach bubble, spine with shadowing vertebrae)."""

from __future__ import annotations

import numpy as np

from shards.synth.anatomy.extent import Extent
from shards.synth.anatomy.wall import add_wall
from shards.synth.scene import Scene
from shards.synth.shapes import Wavy, band, below, ellipse, ring, tube
from shards.synth.texture import SmoothField


def fetal(rng: np.random.Generator, extent: Extent, atten_db_cm: float) -> Scene:
    D = extent.depth_mm
    tex = SmoothField(rng, extent.bounds, corr_mm=rng.uniform(2.0, 5.0))
    s = Scene(lambda p: -2.0 + 2.0 * tex(p), atten_db_cm)
    wall = add_wall(s, rng, extent, fat_mm=(5.0, 14.0), muscle_mm=(4.0, 9.0))
    uterus = Wavy.draw(rng, wall.level + rng.uniform(5.0, 10.0), amp=rng.uniform(1.0, 3.0))
    back = Wavy.draw(rng, rng.uniform(0.8, 0.95) * D, amp=rng.uniform(2.0, 6.0), period=(40.0, 120.0))
    s.add(lambda p: band(p, wall, uterus, along_beam=True), lambda p: -1.0 + 2.0 * tex(p))
    fluid_atten = 0.25 * atten_db_cm
    s.add(lambda p: below(p, uterus, along_beam=True) & ~below(p, back), -38.0, atten_db_cm=fluid_atten)
    if rng.random() < 0.5:
        anterior = rng.random() < 0.5
        thick = rng.uniform(15.0, 28.0)
        if anterior:
            plac = Wavy(uterus.level + thick, uterus.amp, uterus.period, uterus.phase)
            s.add(lambda p: band(p, uterus, plac, along_beam=True), lambda p: 3.0 + 2.5 * tex(p))
        else:
            plac = Wavy(back.level - thick, back.amp, back.period, back.phase)
            s.add(lambda p: band(p, plac, back), lambda p: 3.0 + 2.5 * tex(p))
    cx = rng.uniform(-0.15, 0.15) * extent.half_width(0.5 * D) * 2
    cy = rng.uniform(0.45, 0.6) * D
    angle = rng.uniform(-0.6, 0.6)
    in_uterus = lambda p: below(p, uterus, along_beam=True) & ~below(p, back)  # noqa: E731

    def add_in(inside, echo, atten=None):  # fetal parts never cover the maternal layers
        s.add(lambda p: inside(p) & in_uterus(p), echo, atten)

    if rng.random() < 0.7:  # head, biparietal view
        a = rng.uniform(0.2, 0.28) * D
        b = a * rng.uniform(0.75, 0.88)
        skull = rng.uniform(2.5, 4.0)
        add_in(lambda p: ring(p, cx, cy, a, b, skull, angle), 16.0, 25.0)
        add_in(lambda p: ellipse(p, cx, cy, a - skull / 2, b - skull / 2, angle), lambda p: -16.0 + 3.0 * tex(p))
        ca, sa = np.cos(angle), np.sin(angle)
        add_in(
            lambda p: tube(p, cx - 0.85 * a * ca, cy - 0.85 * a * sa, cx + 0.85 * a * ca, cy + 0.85 * a * sa, 0.5),
            6.0,
        )
        for sgn in (-1.0, 1.0):  # thalami either side of the midline
            tx, ty = cx - 0.1 * a * ca - sgn * 0.12 * b * sa, cy - 0.1 * a * sa + sgn * 0.12 * b * ca
            add_in(lambda p, tx=tx, ty=ty: ellipse(p, tx, ty, 0.12 * a, 0.08 * b, angle), -22.0)
        qx, qy = cx + 0.3 * a * ca, cy + 0.3 * a * sa  # cavum septi pellucidi
        add_in(lambda p: ellipse(p, qx, qy, 0.08 * a, 0.035 * b, angle), -32.0)
        host = -16.0
    else:  # abdomen, transverse
        r = rng.uniform(0.15, 0.22) * D
        add_in(lambda p: ring(p, cx, cy, r, r * 0.92, 1.5, angle), 6.0)
        add_in(lambda p: ellipse(p, cx, cy, r - 0.75, r * 0.92 - 0.75, angle), lambda p: -3.0 + 2.0 * tex(p))
        st = rng.uniform(0.0, 2 * np.pi)
        add_in(
            lambda p: ellipse(p, cx + 0.4 * r * np.cos(st), cy + 0.4 * r * np.sin(st), 0.3 * r, 0.18 * r, st),
            -38.0,
        )
        sp = st + np.pi + rng.uniform(-0.5, 0.5)
        for k in range(3):  # vertebral ossification centres
            ang = sp + (k - 1) * 0.35
            vx, vy = cx + 0.78 * r * np.cos(ang), cy + 0.78 * r * np.sin(ang)
            add_in(lambda p, vx=vx, vy=vy: ellipse(p, vx, vy, 1.8, 1.8), 16.0, 80.0)
        host = -3.0
    s.lesion_zone = (cx - 0.3 * D * 0.4, cx + 0.3 * D * 0.4, cy - 0.12 * D, cy + 0.12 * D)
    s.host_db = host
    return s
