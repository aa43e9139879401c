"""Hard cases for the no-tissue rule, for linear, convex and sector (phased) arrays alike.

- ``air_frame``: a probe held in air. Every scan line sees the same thing: reverberations of the
  transducer face (bands parallel to it, fading with depth), a dark band, then the electronic
  noise floor, which time-gain compensation raises with depth; lifting off, the ends of the face
  can stay on tissue (``contact``).
- ``noise_floor_frame``: a probe in air seen at a gain that fills the whole depth with the receiver
  noise: dark at the face and brighter with depth under the time-gain compensation, a speckle-like
  grain and no structure (the phased-array presets in docs/calibration.md); with ``anatomy``, the same gain
  over tissue holding a structure -- a dark chamber in a bright wall --, which must stay.
- ``aline_lung_frame``: a lung with A-lines, which must stay. A chest wall of speckle under the
  probe, the bright pleural line, a dark lung below it holding the pleura's reverberations at
  two and three times its depth (the A-lines: bands too), and rib shadows across all depths.
Both are drawn in beam space (depth x line) and scan-converted by the geometry's own mapping.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from shards.synth.geometry import ScanGeometry, place_fan, place_linear


def geometry(kind: str, size: tuple[int, int]) -> ScanGeometry:
    """A linear, convex or sector scan area filling most of an image of ``size`` (height, width)."""
    h, w = size
    margins = (0.06, 0.04, 0.1, 0.1)
    if kind == "linear":
        return place_linear(h, w, 38.0, 40.0, margins, 0.0)
    if kind == "convex":
        return place_fan("convex", h, w, 140.0, 45.0, 0.6, margins, 0.0)
    return place_fan("sector", h, w, 150.0, 2.0, 0.75, margins, 0.0)


def _beam_grid(g: ScanGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, depth index, line index) of every image pixel in beam space (fractional)."""
    if g.kind == "linear":
        m = g.scan_mask()
        rows, cols = np.indices(m.shape, dtype=np.float32)
        return m, rows - g.row0, cols - g.col0
    m, rr, cc, r, th = g._fan_pixels()
    depth = np.zeros(m.shape, np.float32)
    line = np.zeros(m.shape, np.float32)
    depth[rr, cc] = r - g.r0
    line[rr, cc] = (th + g.half_angle) / (2 * g.half_angle) * (g.n_lines - 1)
    return m, depth, line


def _convert(g: ScanGeometry, beam: np.ndarray) -> np.ndarray:
    """Beam-space image (n_depth x n_lines) -> the image, 0 outside the scan area."""
    m, depth, line = _beam_grid(g)
    out = map_coordinates(beam, [depth, line], order=1, mode="nearest")
    return np.where(m, np.clip(out, 0, 255), 0).astype(np.uint8)


def _shape(g: ScanGeometry) -> tuple[int, int]:
    if g.kind == "linear":
        return g.row1 - g.row0, g.col1 - g.col0
    return g.n_depth, g.n_lines


def air_frame(
    kind: str, rng: np.random.Generator, size: tuple[int, int] = (360, 480), contact: float = 0.0
) -> np.ndarray:
    """A probe of ``kind`` (linear | convex | sector) held in air (module doc); ``contact``: share of
    the scan lines at each end of the face still on tissue (a probe lifting off keeps gel there)."""
    g = geometry(kind, size)
    n_depth, n_lines = _shape(g)
    d = np.arange(n_depth, dtype=np.float32)[:, None] / n_depth
    spacing = float(rng.uniform(0.025, 0.04))
    bands = sum(
        float(rng.uniform(150, 220)) * np.exp(-0.7 * k) * np.exp(-(((d - 0.01 - k * spacing) / 0.004) ** 2))
        for k in range(5)
    )
    floor = float(rng.uniform(20, 45)) * np.clip((d - 0.45) / 0.55, 0, 1) ** 1.5
    noise = gaussian_filter(rng.rayleigh(1.0, (n_depth, n_lines)), (1.5, 0.4)) * 0.8
    beam = bands + floor * noise + rng.normal(0, 1.0, (n_depth, n_lines))
    k = int(contact * n_lines)
    if k:
        tissue = 70.0 * gaussian_filter(rng.rayleigh(1.0, (n_depth, n_lines)), (1.2, 2.0)) * (1.0 - 0.5 * d)
        beam[:, :k], beam[:, -k:] = tissue[:, :k], tissue[:, -k:]
    return _convert(g, beam.astype(np.float32))


def noise_floor_frame(
    kind: str, rng: np.random.Generator, size: tuple[int, int] = (360, 480), anatomy: bool = False
) -> np.ndarray:
    """The receiver noise of a probe of ``kind`` in air over the whole depth, or tissue with a chamber
    under the same gain (``anatomy``; module doc)."""
    g = geometry(kind, size)
    n_depth, n_lines = _shape(g)
    d = np.arange(n_depth, dtype=np.float32)[:, None] / n_depth
    gain = float(rng.uniform(12, 20)) + float(rng.uniform(30, 45)) * d
    grain = gaussian_filter(rng.rayleigh(1.0, (n_depth, n_lines)), (1.5, 0.8))
    if anatomy:
        x = np.linspace(-1, 1, n_lines, dtype=np.float32)[None, :]
        r = np.hypot(x / 0.45, (d - 0.55) / 0.25)
        grain = grain * np.where(r < 1, 0.25, 1.0) + 2.5 * np.exp(-(((r - 1.05) / 0.06) ** 2))
    return _convert(g, (gain * grain).astype(np.float32))


def aline_lung_frame(kind: str, rng: np.random.Generator, size: tuple[int, int] = (360, 480)) -> np.ndarray:
    """A lung with A-lines under a chest wall, seen by a probe of ``kind`` (module doc)."""
    g = geometry(kind, size)
    n_depth, n_lines = _shape(g)
    d = np.arange(n_depth, dtype=np.float32)[:, None] / n_depth
    pleura = float(rng.uniform(0.18, 0.25))
    speckle = gaussian_filter(rng.rayleigh(1.0, (n_depth, n_lines)), (1.2, 2.0))
    layers = 1.0 + 0.5 * np.sin(d * 90.0 + gaussian_filter(rng.normal(0, 3, (1, n_lines)), (0, 8)))
    wall = np.where(d < pleura, 70.0 * layers * speckle, 0.0)
    wobble = gaussian_filter(rng.normal(0, 1, n_lines), 10)[None, :] * 0.01
    lines = sum(
        a * np.exp(-(((d - k * (pleura + wobble)) / 0.006) ** 2)) * (0.7 + 0.3 * speckle)
        for k, a in ((1, 200.0), (2, 90.0), (3, 45.0))
    )
    lung = np.where(d > pleura, 12.0 * speckle, 0.0)
    ribs = np.ones((1, n_lines), np.float32)
    for c in rng.choice(np.arange(n_lines // 6, 5 * n_lines // 6), size=2, replace=False):
        ribs[0, max(0, c - n_lines // 14) : c + n_lines // 14] = 0.15
    shadow = np.where(d > pleura * 0.6, ribs, 1.0)
    return _convert(g, ((wall + lines + lung) * shadow).astype(np.float32))
