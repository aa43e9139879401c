"""Body wall: skin, subcutaneous fat and optionally muscle, following the probe face."""

from __future__ import annotations

import numpy as np

from shards.synth.anatomy.extent import Extent
from shards.synth.scene import Scene
from shards.synth.shapes import Wavy, band, line, stripes
from shards.synth.texture import SmoothField


def add_wall(
    scene: Scene,
    rng: np.random.Generator,
    extent: Extent,
    fat_mm: tuple[float, float],
    muscle_mm: tuple[float, float] | None,
    fat_db: float = -8.0,
    muscle_db: float = -5.0,
) -> Wavy:
    """Paint skin, fat (and muscle) layers measured along the beam; return the wall's deep boundary."""
    along = not extent.linear
    tex = SmoothField(rng, extent.bounds, corr_mm=rng.uniform(1.5, 4.0))
    skin = rng.uniform(1.0, 2.2)
    fat = Wavy.draw(rng, rng.uniform(*fat_mm), amp=rng.uniform(0.5, 2.0), slope=0.03)
    bottom = fat
    scene.add(lambda p: band(p, Wavy(0.0), fat, along), lambda p: np.float32(fat_db) + 2.0 * tex(p))
    # Septa / fascial strands in the fat: thin bright oblique lines.
    for _ in range(int(rng.integers(1, 4))):
        curve = Wavy.draw(rng, rng.uniform(skin, fat.level), amp=rng.uniform(1.0, 3.0), slope=0.3)
        thick = float(rng.uniform(0.2, 0.45))
        scene.add(lambda p, c=curve, t=thick: line(p, c, t, along) & band(p, Wavy(skin), fat, along), 3.0)
    if muscle_mm is not None:
        muscle = Wavy.draw(rng, fat.level + rng.uniform(*muscle_mm), amp=rng.uniform(0.5, 2.0))
        period = rng.uniform(1.2, 3.0)
        scene.add(
            lambda p: band(p, fat, muscle, along),
            lambda p: np.float32(muscle_db) + 5.0 * stripes(p.d if along else p.y, period, 6) + tex(p),
        )
        scene.add(lambda p: line(p, fat, 0.5, along), 5.0)
        scene.add(lambda p: line(p, muscle, 0.7, along), 7.0)
        bottom = muscle
    scene.add(lambda p: (p.d if along else p.y) < np.float32(skin), 2.0)
    scene.add(lambda p: (p.d if along else p.y) < np.float32(0.5), 10.0)
    return bottom
