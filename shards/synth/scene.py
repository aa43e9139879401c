"""A scene: tissue regions painted in order onto echogenicity and attenuation maps.

Echogenicity is in dB relative to reference soft tissue (0 dB); attenuation in dB/cm round
trip. Later regions overwrite earlier ones (painter's algorithm), so anatomy is listed from the
background outwards and lesions last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shards.synth.geometry import Points

Echo = float | Callable[[Points], np.ndarray]
Inside = Callable[[Points], np.ndarray]


@dataclass
class Region:
    inside: Inside
    echo_db: Echo | None  # None keeps what is underneath (an attenuation-only region)
    atten_db_cm: float | None = None  # None keeps what is underneath
    bbox: tuple[float, float, float, float] | None = None  # (x0, x1, y0, y1) mm, a cheap prefilter


@dataclass
class Scene:
    background_db: Echo
    background_atten: float
    regions: list[Region] = field(default_factory=list)
    # Where lesions may be centred (x0, x1, y0, y1 in mm) and the echogenicity of their host tissue.
    lesion_zone: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    host_db: float = 0.0

    def add(
        self,
        inside: Inside,
        echo_db: Echo | None,
        atten_db_cm: float | None = None,
        bbox: tuple[float, float, float, float] | None = None,
    ) -> None:
        self.regions.append(Region(inside, echo_db, atten_db_cm, bbox))

    def evaluate(self, p: Points) -> tuple[np.ndarray, np.ndarray]:
        """(echo dB, attenuation dB/cm) at every point, float32."""
        n = len(p)
        echo = _value(self.background_db, p, n)
        atten = np.full(n, self.background_atten, dtype=np.float32)
        for r in self.regions:
            if r.bbox is not None:
                x0, x1, y0, y1 = r.bbox
                idx = np.flatnonzero((p.x >= x0) & (p.x <= x1) & (p.y >= y0) & (p.y <= y1))
                if idx.size == 0:
                    continue
                sub = p.take(idx)
                idx = idx[r.inside(sub)]
            else:
                idx = np.flatnonzero(r.inside(p))
            if idx.size == 0:
                continue
            if r.echo_db is not None:
                echo[idx] = _value(r.echo_db, p.take(idx), idx.size)
            if r.atten_db_cm is not None:
                atten[idx] = r.atten_db_cm
        return echo, atten


def _value(v: Echo, p: Points, n: int) -> np.ndarray:
    if callable(v):
        return np.asarray(v(p), dtype=np.float32)
    return np.full(n, v, dtype=np.float32)
