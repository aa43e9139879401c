"""Thyroid (linear probe, transverse): skin, fat, strap muscles, the two lobes joined by the
isthmus over the trachea (bright curved wall, air shadow with reverberation lines below),
carotid arteries with bright walls, jugular veins and the longus colli muscles behind."""

from __future__ import annotations

import numpy as np

from shards.synth.anatomy.extent import Extent
from shards.synth.anatomy.wall import add_wall
from shards.synth.scene import Scene
from shards.synth.shapes import ellipse, ring, stripes
from shards.synth.texture import SmoothField


def thyroid(rng: np.random.Generator, extent: Extent, atten_db_cm: float) -> Scene:
    W, D = extent.width_mm, extent.depth_mm
    tex = SmoothField(rng, extent.bounds, corr_mm=rng.uniform(1.0, 2.5))
    s = Scene(lambda p: -4.0 + 2.0 * tex(p), atten_db_cm)
    wall = add_wall(s, rng, extent, fat_mm=(2.5, 4.5), muscle_mm=(2.5, 4.5), muscle_db=-9.0)
    top = wall.level
    xt = rng.uniform(-0.15, 0.15) * W
    rt = rng.uniform(6.0, 9.0)
    yt = top + rng.uniform(2.0, 4.0)  # anterior tracheal wall, behind the isthmus
    al, bl = rng.uniform(7.0, 10.0), rng.uniform(8.0, 11.0)
    lobe_y = yt + rng.uniform(3.0, 7.0)
    lobes = [(xt + sgn * (rt + 0.8 * al), lobe_y + rng.uniform(-1.5, 1.5)) for sgn in (-1, 1)]
    gland_db = rng.uniform(3.0, 6.0)
    gland = lambda p: np.float32(gland_db) + 1.5 * tex(p)  # noqa: E731
    for cx, cy in lobes:  # longus colli behind each lobe
        s.add(lambda p, cx=cx, cy=cy: ellipse(p, cx, cy + bl + 3.0, al * 0.9, 4.0), lambda p: -7.0 + tex(p))
    for sgn, (cx, cy) in zip((-1, 1), lobes):
        rc = rng.uniform(3.0, 4.2)
        ccx, ccy = cx + sgn * (al + rc * 0.6), cy + rng.uniform(0.0, 3.0)
        if rng.random() < 0.6:  # internal jugular vein, lateral/anterior
            jx, jy = ccx + sgn * rng.uniform(3.0, 6.0), ccy - rng.uniform(1.0, 4.0)
            ja, jb = rng.uniform(3.0, 6.0), rng.uniform(1.5, 3.0)
            s.add(
                lambda p, jx=jx, jy=jy, ja=ja, jb=jb: ellipse(p, jx, jy, ja, jb),
                -36.0,
                atten_db_cm=0.4 * atten_db_cm,
            )
        s.add(lambda p, x=ccx, y=ccy, r=rc: ring(p, x, y, r + 0.4, r + 0.4, 0.8), 8.0)
        s.add(lambda p, x=ccx, y=ccy, r=rc: ellipse(p, x, y, r, r), -38.0, atten_db_cm=0.3 * atten_db_cm)
    for cx, cy in lobes:
        s.add(lambda p, cx=cx, cy=cy: ellipse(p, cx, cy, al, bl), gland)
    iso = rng.uniform(2.0, 4.0)
    s.add(
        lambda p: (
            (np.abs(p.x - np.float32(xt)) < np.float32(rt + 2.0))
            & (p.y >= np.float32(yt - iso))
            & (p.y < np.float32(yt))
        ),
        gland,
    )
    # Trachea: bright curved anterior wall; the air column behind it shadows everything below,
    # with reverberation lines repeating the wall.
    period = rng.uniform(2.5, 4.0)

    def arc(p):
        dx = np.clip(np.abs(p.x - np.float32(xt)) / np.float32(rt), 0.0, 1.0)
        return np.float32(yt) + np.float32(rt) * (1.0 - np.sqrt(1.0 - dx * dx))

    column = lambda p: (np.abs(p.x - np.float32(xt)) < np.float32(rt)) & (p.y >= arc(p))  # noqa: E731
    s.add(column, lambda p: -30.0 + 14.0 * stripes(p.y - arc(p), period, 8) * np.exp(-(p.y - arc(p)) / 12.0))
    s.add(lambda p: column(p) & (p.y < arc(p) + 1.2), 15.0)
    k = int(np.argmin([abs(x) for x, _ in lobes]))  # the lobe nearer the centre of the view
    hw = 0.9 * extent.half_width(0.0)
    cx, cy = lobes[k]
    s.lesion_zone = (max(cx - al - 2.0, -hw), min(cx + al + 2.0, hw), cy - bl, min(cy + bl + 2.0, 0.9 * D))
    s.host_db = gland_db
    return s
