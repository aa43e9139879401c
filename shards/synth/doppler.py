"""Colour-Doppler frames: a colour box over part of the scan area (a rectangle for linear probes,
an annular sector for fans) in which dark lumens carry red (towards the probe) / blue (away) flow
with aliasing to yellow/cyan at high velocity, plus a colour bar in the margin."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import binary_erosion, gaussian_filter, zoom

from shards.synth.geometry import ScanGeometry
from shards.synth.overlays import Canvas


def box_mask(geom: ScanGeometry, rng: np.random.Generator) -> np.ndarray:
    """The colour box (boolean, image sized), always inside the scan area."""
    m = np.zeros((geom.height, geom.width), dtype=bool)
    if geom.kind == "linear":
        h, w = geom.row1 - geom.row0, geom.col1 - geom.col0
        bw, bh = int(w * rng.uniform(0.3, 0.6)), int(h * rng.uniform(0.25, 0.5))
        c0 = geom.col0 + int(rng.integers(0, max(w - bw, 1)))
        r0 = geom.row0 + int(rng.integers(int(0.05 * h), max(int(0.05 * h) + 1, h - bh)))
        m[r0 : r0 + bh, c0 : c0 + bw] = True
        return m
    span = geom.r1 - geom.r0
    ra = geom.r0 + span * rng.uniform(0.1, 0.5)
    rb = min(ra + span * rng.uniform(0.2, 0.45), geom.r1)
    half = geom.half_angle * rng.uniform(0.25, 0.5)
    centre = rng.uniform(-geom.half_angle + half, geom.half_angle - half)
    rows = np.arange(geom.height, dtype=np.float64)[:, None] - geom.apex_row
    cols = np.arange(geom.width, dtype=np.float64)[None, :] - geom.apex_col
    r, th = np.hypot(rows, cols), np.arctan2(cols, rows)
    return (r >= ra) & (r <= rb) & (np.abs(th - centre) <= half) & geom.scan_mask()


def velocity_colour(v: np.ndarray) -> np.ndarray:
    """Map velocities in [-1, 1] to RGB (uint8): red/yellow positive, blue/cyan negative."""
    a = np.abs(v)
    alias = np.clip((a - 0.8) * 5.0, 0.0, 1.0)
    strength = 90.0 + 165.0 * a
    rgb = np.zeros(v.shape + (3,), dtype=np.float32)
    pos = v >= 0
    rgb[..., 0] = np.where(pos, strength, 0.0)
    rgb[..., 2] = np.where(pos, 0.0, strength)
    rgb[..., 1] = 215.0 * alias
    return np.clip(rgb, 0, 255).astype(np.uint8)


def draw_doppler(image: np.ndarray, geom: ScanGeometry, scan_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return an RGB copy of ``image`` (uint8 HxW) with a colour-flow box burned in."""
    box = box_mask(geom, rng)
    smooth = gaussian_filter(image.astype(np.float32), 2.0)
    inside = smooth[box]
    thr = max(float(np.percentile(inside, rng.uniform(15, 35))), 20.0) if inside.size else 0.0
    coarse = rng.standard_normal((max(geom.height // 24, 2), max(geom.width // 24, 2)))
    field = zoom(gaussian_filter(coarse, 1.0), (geom.height / coarse.shape[0], geom.width / coarse.shape[1]), order=1)
    field = field[: geom.height, : geom.width]
    field = np.pad(field, ((0, geom.height - field.shape[0]), (0, geom.width - field.shape[1])), mode="edge")
    v = np.tanh(1.6 * field / (field.std() + 1e-9))
    flow = box & (smooth < thr)
    flow |= box & (rng.random(box.shape) < 0.004)  # colour noise
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    rgb[flow] = velocity_colour(v[flow].astype(np.float32))
    g = int(rng.integers(150, 221))
    rgb[box & ~binary_erosion(box)] = (g, g, g)  # box outline
    c = Canvas(rgb, scan_mask)
    _colour_bar(c, geom, rng)
    c.text((2, geom.height - 13), f"CF  PRF {rng.uniform(0.8, 6.0):.1f}kHz", (g, g, g))
    return np.asarray(c.img).copy()


def _colour_bar(c: Canvas, geom: ScanGeometry, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = geom.bbox()
    h = int(min(80, max(24, (y1 - y0) // 4)))
    col = x1 + 24 if x1 + 34 < c.w else x0 - 16
    top = y0 + int(rng.integers(0, 10))
    if col < 0 or not c.free((col, top, col + 8, top + h)):
        return
    v = np.linspace(1.0, -1.0, h, dtype=np.float32)
    bar = velocity_colour(v)[:, None, :].repeat(8, axis=1)
    bar[np.abs(v) < 0.04] = 0
    c.img.paste(Image.fromarray(bar), (col, top))
