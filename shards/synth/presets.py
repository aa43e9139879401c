"""Anatomy presets: each acts as a separate source dataset with its own scanner, probe and look.

Ranges are drawn per frame. Speckle sizes are PSF standard deviations in millimetres (higher
probe frequency -> finer speckle); ``gain_db`` is the envelope level (dB re reference tissue)
shown as white, ``dynamic_range_db`` the span mapped to 0..255; ``atten_db_cm`` the round-trip
attenuation of the background tissue, which the time-gain compensation mostly cancels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shards.synth.anatomy import BUILDERS, Extent
from shards.synth.scene import Scene

Range = tuple[float, float]


@dataclass(frozen=True)
class Preset:
    name: str
    geometry: str  # 'linear' | 'convex' | 'sector'
    height: tuple[int, int]  # image size range (px) when drawn for a corpus
    width: tuple[int, int]
    depth_mm: Range
    aperture_mm: Range = (0.0, 0.0)  # linear probes
    half_angle_deg: Range = (0.0, 0.0)  # fans
    radius_mm: Range = (0.0, 0.0)  # convex apex radius (about 0 for a phased-array sector)
    axial_mm: Range = (0.1, 0.15)
    lateral_mm: Range = (0.2, 0.3)
    dynamic_range_db: Range = (55.0, 65.0)
    gain_db: Range = (25.0, 30.0)
    atten_db_cm: Range = (5.0, 8.0)
    lesion_radius_mm: Range = (3.0, 10.0)
    anatomy: Callable[[np.random.Generator, Extent, float], Scene] | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "breast",
            "linear",
            (380, 560),
            (440, 620),
            depth_mm=(35.0, 50.0),
            aperture_mm=(38.0, 46.0),
            axial_mm=(0.08, 0.12),
            lateral_mm=(0.16, 0.26),
            dynamic_range_db=(58.0, 66.0),
            gain_db=(30.0, 36.0),
            atten_db_cm=(10.0, 14.0),
            lesion_radius_mm=(3.0, 12.0),
            anatomy=BUILDERS["breast"],
        ),
        Preset(
            "thyroid",
            "linear",
            (340, 460),
            (500, 660),
            depth_mm=(30.0, 45.0),
            aperture_mm=(40.0, 60.0),
            axial_mm=(0.09, 0.14),
            lateral_mm=(0.2, 0.3),
            dynamic_range_db=(55.0, 62.0),
            gain_db=(24.0, 30.0),
            atten_db_cm=(8.0, 12.0),
            lesion_radius_mm=(3.0, 9.0),
            anatomy=BUILDERS["thyroid"],
        ),
        Preset(
            "cardiac",
            "sector",
            (440, 560),
            (560, 700),
            depth_mm=(120.0, 180.0),
            half_angle_deg=(40.0, 45.0),
            radius_mm=(0.5, 3.0),
            axial_mm=(0.4, 0.6),
            lateral_mm=(1.5, 2.5),
            dynamic_range_db=(45.0, 55.0),
            gain_db=(26.0, 34.0),
            atten_db_cm=(2.0, 3.5),
            lesion_radius_mm=(5.0, 15.0),
            anatomy=BUILDERS["cardiac"],
        ),
        Preset(
            "fetal",
            "convex",
            (400, 540),
            (520, 680),
            depth_mm=(100.0, 150.0),
            half_angle_deg=(30.0, 37.0),
            radius_mm=(40.0, 60.0),
            axial_mm=(0.25, 0.35),
            lateral_mm=(0.8, 1.2),
            dynamic_range_db=(55.0, 65.0),
            gain_db=(22.0, 30.0),
            atten_db_cm=(2.5, 4.0),
            lesion_radius_mm=(5.0, 15.0),
            anatomy=BUILDERS["fetal"],
        ),
        Preset(
            "musculoskeletal",
            "linear",
            (300, 400),
            (520, 660),
            depth_mm=(18.0, 30.0),
            aperture_mm=(40.0, 50.0),
            axial_mm=(0.06, 0.09),
            lateral_mm=(0.12, 0.2),
            dynamic_range_db=(65.0, 75.0),
            gain_db=(22.0, 27.0),
            atten_db_cm=(10.0, 14.0),
            lesion_radius_mm=(2.0, 6.0),
            anatomy=BUILDERS["musculoskeletal"],
        ),
        Preset(
            "liver",
            "convex",
            (440, 580),
            (540, 680),
            depth_mm=(140.0, 200.0),
            half_angle_deg=(32.0, 38.0),
            radius_mm=(40.0, 60.0),
            axial_mm=(0.3, 0.4),
            lateral_mm=(1.0, 1.5),
            dynamic_range_db=(55.0, 65.0),
            gain_db=(24.0, 30.0),
            atten_db_cm=(3.0, 5.0),
            lesion_radius_mm=(5.0, 20.0),
            anatomy=BUILDERS["liver"],
        ),
    )
}
