"""Focal lesions: benign (oval, circumscribed, posterior enhancement) and malignant (irregular,
spiculated, taller-than-wide tendency, posterior shadowing), following the BI-RADS/TI-RADS
descriptors a reader uses to tell them apart.

A lesion is a star-shaped region around its centre: in its own rotated frame the boundary radius
at angle phi is the ellipse radius times (1 + sum_k c_k cos(k phi + psi_k)) plus narrow spikes
R * L_j * max(0, cos(phi - phi_j)) ** p_j. Benign lesions get a few weak low harmonics; malignant
ones strong higher harmonics and spicules; each class has phenotypes (cyst, fibroadenoma,
irregular benign; spiculated, microlobulated, circumscribed carcinoma) so a minority of each
looks like the other. Posterior effects are not painted: they come from the
lesion's attenuation, integrated along the beam like any other tissue (low -> enhancement,
high -> shadow). Contrast, size, position and effect strength all vary, so the classes overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.synth.geometry import Points
from shards.synth.scene import Scene
from shards.synth.texture import SmoothField

LESION_KINDS = ("benign", "malignant")
BUSI_PROPORTIONS = {"benign": 437, "malignant": 210, "normal": 133}


@dataclass(frozen=True)
class LesionShape:
    cx: float
    cy: float
    a: float  # lateral semi-axis (mm) before rotation
    b: float  # vertical semi-axis (mm)
    angle: float
    harmonics: np.ndarray  # (K, 3): k, amplitude, phase
    spikes: np.ndarray  # (J, 3): angle, length (fraction of mean radius), sharpness exponent

    def radius(self, phi: np.ndarray) -> np.ndarray:
        """Boundary radius (mm) at local angle ``phi``."""
        phi = np.asarray(phi, dtype=np.float32)
        c, s = np.cos(phi), np.sin(phi)
        r = np.float32(self.a * self.b) / np.sqrt((np.float32(self.b) * c) ** 2 + (np.float32(self.a) * s) ** 2)
        mod = np.ones_like(phi)
        for k, amp, ph in self.harmonics:
            mod += np.float32(amp) * np.cos(np.float32(k) * phi + np.float32(ph))
        r = r * mod
        mean_r = np.float32(np.sqrt(self.a * self.b))
        for ang, length, sharp in self.spikes:
            r += mean_r * np.float32(length) * np.maximum(np.cos(phi - np.float32(ang)), 0.0) ** np.float32(sharp)
        return r

    def polar(self, p: Points) -> tuple[np.ndarray, np.ndarray]:
        dx = p.x - np.float32(self.cx)
        dy = p.y - np.float32(self.cy)
        c, s = np.float32(np.cos(self.angle)), np.float32(np.sin(self.angle))
        u, v = c * dx + s * dy, -s * dx + c * dy
        return np.hypot(u, v), np.arctan2(v, u)

    def inside(self, p: Points, grow: float = 0.0) -> np.ndarray:
        """Points inside the boundary (pushed out by ``grow`` mm for a capsule/halo shell)."""
        r = np.float32(self.max_radius() + grow + 0.1)
        near = np.flatnonzero((np.abs(p.x - np.float32(self.cx)) < r) & (np.abs(p.y - np.float32(self.cy)) < r))
        out = np.zeros(len(p), dtype=bool)
        rho, phi = self.polar(p.take(near))
        out[near] = rho < self.radius(phi) + np.float32(grow)
        return out

    def max_radius(self) -> float:
        if "_rmax" not in self.__dict__:  # frozen dataclass: cache by writing the instance dict
            self.__dict__["_rmax"] = float(self.radius(np.linspace(-np.pi, np.pi, 1441)).max())
        return self.__dict__["_rmax"]

    def bbox(self, grow: float = 0.0) -> tuple[float, float, float, float]:
        r = self.max_radius() + grow + 0.5
        return (self.cx - r, self.cx + r, self.cy - r, self.cy + r)


@dataclass(frozen=True)
class Lesion:
    kind: str
    phenotype: str
    shape: LesionShape
    echo_db: float
    atten_db_cm: float
    texture_db: float  # heterogeneity of the interior
    shell_mm: float  # capsule (benign) or echogenic halo (malignant) thickness, 0 = none
    shell_db: float
    calcifications: np.ndarray  # (M, 3): x, y, radius (mm)


# Phenotypes with their share of the class: margins, orientation and posterior effect differ, and
# a minority of each class looks like the other (irregular benign, circumscribed malignant).
BENIGN_TYPES = {"cyst": 0.25, "fibroadenoma": 0.55, "irregular": 0.20}
MALIGNANT_TYPES = {"spiculated": 0.6, "microlobulated": 0.25, "circumscribed": 0.15}


def _harmonics(rng: np.random.Generator, ks: np.ndarray, lo: float, hi: float) -> np.ndarray:
    amps = rng.uniform(lo, hi, ks.size) / np.sqrt(ks / ks[0])
    return np.stack([ks.astype(float), amps, rng.uniform(0, 2 * np.pi, ks.size)], axis=1)


def _spikes(rng: np.random.Generator, n: int, length: tuple[float, float]) -> np.ndarray:
    return np.stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(*length, n), rng.uniform(60.0, 400.0, n)], axis=1)


def _shape(pheno: str, rng: np.random.Generator) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(height/width ratio, angle, harmonics, spikes) of a phenotype."""
    none = np.zeros((0, 3))
    if pheno in ("cyst", "fibroadenoma"):  # oval, parallel to the skin, circumscribed
        harm = _harmonics(rng, np.arange(2, 5), 0.0, 0.05)
        if pheno == "fibroadenoma" and rng.random() < 0.3:  # gently macrolobulated
            harm[rng.integers(3), 1] += rng.uniform(0.04, 0.09)
        return rng.uniform(0.45, 0.9), rng.uniform(-0.25, 0.25), harm, none
    if pheno == "irregular":
        return (
            rng.uniform(0.6, 1.1),
            rng.uniform(-0.3, 0.3),
            _harmonics(rng, np.arange(3, 9), 0.04, 0.12),
            _spikes(rng, int(rng.integers(1, 6)), (0.12, 0.35)),
        )
    if pheno == "circumscribed":
        return (
            rng.uniform(0.8, 1.2),
            rng.uniform(-0.3, 0.3),
            _harmonics(rng, np.arange(2, 7), 0.0, 0.06),
            none,
        )
    if pheno == "microlobulated":
        return (
            rng.uniform(0.8, 1.5),
            rng.uniform(-0.35, 0.35),
            _harmonics(rng, np.arange(4, 13), 0.04, 0.1),
            _spikes(rng, int(rng.integers(0, 4)), (0.1, 0.3)),
        )
    # spiculated: taller than wide, strong high harmonics and spicules
    return (
        rng.uniform(0.85, 1.7),
        rng.uniform(-0.35, 0.35),
        _harmonics(rng, np.arange(3, 13), 0.02, 0.12),
        _spikes(rng, int(rng.integers(5, 17)), (0.15, 0.7)),
    )


def draw_lesion(
    kind: str,
    rng: np.random.Generator,
    scene: Scene,
    radius_range: tuple[float, float],
    avoid: list[Lesion] = (),
) -> Lesion | None:
    """A lesion of ``kind`` centred in ``scene.lesion_zone``; None if it cannot avoid ``avoid``."""
    x0, x1, y0, y1 = scene.lesion_zone
    base = scene.background_atten
    types = BENIGN_TYPES if kind == "benign" else MALIGNANT_TYPES
    pheno = str(rng.choice(list(types), p=list(types.values())))
    for _ in range(20):
        radius = float(np.exp(rng.uniform(np.log(radius_range[0]), np.log(radius_range[1]))))
        ratio, angle, harm, spikes = _shape(pheno, rng)
        a, b = radius / np.sqrt(ratio), radius * np.sqrt(ratio)
        r = LesionShape(0.0, 0.0, a, b, angle, harm, spikes).max_radius() + 1.0
        # Shrink to fit the zone if needed: the lesion stays entirely inside it.
        fit = min(1.0, (x1 - x0) / (2 * r), (y1 - y0) / (2 * r))
        if fit < 1.0:
            a, b, r = a * fit, b * fit, r * fit
        cx = rng.uniform(min(x0 + r, (x0 + x1) / 2), max(x1 - r, (x0 + x1) / 2))
        cy = rng.uniform(min(y0 + r, (y0 + y1) / 2), max(y1 - r, (y0 + y1) / 2))
        shape = LesionShape(float(cx), float(cy), float(a), float(b), float(angle), harm, spikes)
        if all(np.hypot(cx - o.shape.cx, cy - o.shape.cy) > r + o.shape.max_radius() + 2.0 for o in avoid):
            break
    else:
        return None
    calc = np.zeros((0, 3))
    host = scene.host_db
    shell, shell_db = 0.0, host + rng.uniform(2.0, 6.0)
    if pheno == "cyst":  # anechoic, strong posterior enhancement
        echo, atten, texture = host - 40.0, base * rng.uniform(0.0, 0.2), 0.0
    elif pheno == "fibroadenoma":
        echo, texture = host + rng.uniform(-18.0, -8.0), rng.uniform(0.5, 2.0)
        atten = base * (rng.uniform(0.3, 0.8) if rng.random() < 0.8 else 1.0)
        shell = rng.uniform(0.3, 0.6) if rng.random() < 0.4 else 0.0  # thin echogenic capsule
    elif pheno == "irregular":
        echo, texture = host + rng.uniform(-18.0, -6.0), rng.uniform(1.0, 3.0)
        atten = base * rng.uniform(0.6, 1.1)
    else:
        echo, texture = host + rng.uniform(-24.0, -9.0), rng.uniform(1.5, 4.0)
        if pheno == "spiculated":
            atten = base + rng.uniform(8.0, 30.0)
        elif pheno == "microlobulated":
            atten = base + rng.uniform(3.0, 15.0)
        else:  # circumscribed carcinomas may even enhance
            atten = base * rng.uniform(0.5, 1.0)
        if rng.random() < 0.3:  # echogenic halo
            shell = rng.uniform(0.8, 2.0)
        if rng.random() < 0.35:  # microcalcifications
            m = int(rng.integers(3, 13))
            rr = np.sqrt(rng.uniform(0, 0.5, m)) * min(a, b)
            th = rng.uniform(-np.pi, np.pi, m)
            calc = np.stack([cx + rr * np.cos(th), cy + rr * np.sin(th), rng.uniform(0.15, 0.35, m)], axis=1)
    return Lesion(kind, pheno, shape, float(echo), float(atten), float(texture), float(shell), float(shell_db), calc)


def paint_lesion(scene: Scene, lesion: Lesion, rng: np.random.Generator) -> None:
    """Add the lesion (shell, interior, calcifications) to the scene; its mask is ``shape.inside``."""
    s = lesion.shape
    if lesion.shell_mm > 0:
        scene.add(lambda p: s.inside(p, lesion.shell_mm), lesion.shell_db, bbox=s.bbox(lesion.shell_mm))
    x0, x1, y0, y1 = s.bbox()
    echo: float | object = lesion.echo_db
    if lesion.texture_db > 0:
        fld = SmoothField(rng, (x0, x1, y0, y1), corr_mm=1.2)
        echo = lambda p: np.float32(lesion.echo_db) + np.float32(lesion.texture_db) * fld(p)  # noqa: E731
    scene.add(s.inside, echo, lesion.atten_db_cm, bbox=(x0, x1, y0, y1))
    for cx, cy, r in lesion.calcifications:
        scene.add(
            lambda p, cx=cx, cy=cy, r=r: (
                ((p.x - np.float32(cx)) ** 2 + (p.y - np.float32(cy)) ** 2 < np.float32(r * r)) & s.inside(p)
            ),
            scene.host_db + 20.0,
            bbox=(cx - r, cx + r, cy - r, cy + r),
        )
