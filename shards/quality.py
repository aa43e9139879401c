"""Reject frames that are not B-mode ultrasound (documented rules; docs/data.md "Cleaning rules").

- ``colour``: inside the scan area, more than ``COLOUR_FRACTION`` of the lit pixels are coloured
  (channel spread max-min above ``CHROMA``) in solid blobs (surviving a 2x2 opening: colour flow,
  elastography; coloured text and calipers are thin strokes), or more than ``COLOUR_ANY`` are
  coloured at all (speckled low-flow colour), or coloured *textured* pixels (grey
  std among the coloured pixels of a 5x5 window above 6, opened 3x3, in blobs that are not
  mostly one flat colour as a coloured bar with text on it is) outside it cover more than
  ``COLOUR_OUTSIDE`` of the frame (a spectral-Doppler strip or colour M-mode beside the image).
  Flat coloured user interface outside the scan area (header bars, icons, ECG traces) does not count.
- ``not_ultrasound``: near-constant frames (std < ``MIN_STD``); no scan area covering at least
  ``MIN_SCAN_FRACTION`` of the frame; a bright frame (more than ``MAX_BRIGHT_FRACTION`` of the scan
  area above 200: documents, screenshots, white pages); or no speckle texture inside the scan area
  (median local coefficient of variation below ``MIN_SPECKLE_CV``: smooth photos, gradients, drawings).
- ``no_tissue``: a scan area with nothing in it. A frozen blank frame (the whole frame, or the
  scan area, with a grey-level std below ``MIN_STD``), or a probe in air: reverberation bands
  parallel to the transducer face over an empty field. Measured inside the scan area at the working
  resolution, with depth counted from each column's top edge (so the bands of a convex probe's arc
  line up like a linear probe's rows): the near field (top ``NEAR_FIELD`` of the depth) is explained
  by its depth profile (``band_r2`` > ``AIR_BAND_R2``), gradients run mostly across depth
  (``lateral_ratio`` = mean |d/dx| / mean |d/dy| < ``AIR_LATERAL_RATIO``: speckle of tissue has both)
  less than ``AIR_LIT_FRACTION`` of the scan area is lit (5x5 mean above ``LIT_LEVEL``) and the deep
  field below the near field is featureless (std of the 5x5 mean below ``AIR_DEEP_STD``). All four
  are needed: lung with A-lines has bands too, but its chest wall is textured and its ribs shadow;
  an eye or a bladder is dark under horizontal layers, but tissue behind it is structured.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from shards.scan_area import ScanArea, coloured

CHROMA = 40
COLOUR_FRACTION = 0.01
COLOUR_ANY = 0.015
COLOUR_OUTSIDE = 0.002
MIN_STD = 4.0
MIN_SCAN_FRACTION = 0.04
MAX_BRIGHT_FRACTION = 0.5
MIN_SPECKLE_CV = 0.06
NEAR_FIELD = 0.4
AIR_BAND_R2 = 0.45
AIR_LATERAL_RATIO = 0.58
AIR_LIT_FRACTION = 0.40
AIR_DEEP_STD = 22.0
LIT_LEVEL = 40


def colour_fraction(rgb: np.ndarray) -> float:
    """Fraction of non-black pixels whose channels differ by more than ``CHROMA`` levels."""
    # Element-wise over the three planes: numpy's axis=2 reductions are ~10x slower here.
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    hi = np.maximum(np.maximum(r, g), b)
    lo = np.minimum(np.minimum(r, g), b)
    lit = hi > 16
    n = int(np.count_nonzero(lit))
    return float(np.count_nonzero((hi - lo > CHROMA) & lit) / n) if n else 0.0


def is_colour_frame(rgb: np.ndarray) -> bool:
    return colour_fraction(rgb) > COLOUR_FRACTION


def colour_measures(rgb: np.ndarray, area: ScanArea) -> dict:
    """``colour_fraction`` (solid colour inside the scan area) and ``colour_outside`` (see the module doc)."""
    small = rgb[:: area.step, :: area.step]
    col = coloured(small, CHROMA)
    mask = area.small_mask
    if not mask.any():
        whole = round(colour_fraction(small), 4)
        return {"colour_fraction": whole, "colour_any": whole, "colour_outside": 0.0}
    lit = (small.max(axis=2) > 16) & mask
    n = int(np.count_nonzero(lit))
    solid = ndimage.binary_opening(col, np.ones((2, 2), bool))
    inside = float(np.count_nonzero(solid & lit) / n) if n else 0.0
    anywhere = float(np.count_nonzero(col & lit) / n) if n else 0.0
    # Grey-level std among the *coloured* pixels of 5x5 windows: a spectrum or colour flow varies in
    # brightness, a flat coloured bar does not (even with white text on it).
    g = small.astype(np.float32).mean(axis=2)
    c = col.astype(np.float32)
    wc = ndimage.uniform_filter(c, 5)
    m1 = ndimage.uniform_filter(g * c, 5) / np.maximum(wc, 1e-6)
    m2 = ndimage.uniform_filter(g * g * c, 5) / np.maximum(wc, 1e-6)
    std = np.sqrt(np.maximum(m2 - m1 * m1, 0.0))
    textured = ndimage.binary_opening(col & (wc > 0.5) & (std > 6), np.ones((3, 3), bool)) & ~mask
    # A coloured bar with text on it is mostly one flat colour; a spectrum or a colour-map legend is not.
    labels, n = ndimage.label(textured)
    area = 0
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[sl] == k
        vals = g[sl][comp & col[sl]]
        if vals.size and float((np.abs(vals - np.median(vals)) <= 2).mean()) < 0.5:
            area += int(comp.sum())
    return {
        "colour_fraction": round(inside, 4),
        "colour_any": round(anywhere, 4),
        "colour_outside": round(area / textured.size, 4),
    }


def is_colour(values: dict) -> bool:
    return (
        values["colour_fraction"] > COLOUR_FRACTION
        or values["colour_any"] > COLOUR_ANY
        or values["colour_outside"] > COLOUR_OUTSIDE
    )


def speckle_cv(gray: np.ndarray, mask: np.ndarray) -> float:
    """Median local coefficient of variation (7x7 windows) over lit pixels of ``mask``."""
    g = gray.astype(np.float32)
    mean = ndimage.uniform_filter(g, 7)
    sq = ndimage.uniform_filter(g * g, 7)
    std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    sel = mask & (mean > 20)
    if sel.sum() < 64:
        return 0.0
    return float(np.median(std[sel] / mean[sel]))


def tissue_measures(small: np.ndarray, mask: np.ndarray) -> dict:
    """``band_r2``, ``lateral_ratio`` and ``lit_fraction`` of the scan area (see the module doc)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    f = small.astype(np.float32)
    b3 = ndimage.uniform_filter(f, 3)[y0:y1, x0:x1]
    b5 = ndimage.uniform_filter(f, 5)[y0:y1, x0:x1]
    m = mask[y0:y1, x0:x1]
    # Depth below each column's top edge: rows for a linear probe, arcs for a convex one.
    top = np.where(m.any(0), m.argmax(0), 0)
    depth = np.arange(m.shape[0])[:, None] - top[None, :]
    h = int(depth[m].max()) + 1 if m.any() else 1
    near = m & (depth < max(4, int(h * NEAR_FIELD)))
    d, v = depth[near], b3[near]
    r2 = 0.0
    if v.size > 16 and v.var() > 1e-6:
        sums = np.bincount(d, weights=v)
        counts = np.maximum(np.bincount(d), 1)
        profile = sums / counts
        r2 = float(1.0 - (v - profile[d]).var() / v.var())
    inner_x = m[:, 1:] & m[:, :-1]
    inner_y = m[1:] & m[:-1]
    dx = float(np.abs(np.diff(b3, axis=1))[inner_x].mean()) if inner_x.any() else 0.0
    dy = float(np.abs(np.diff(b3, axis=0))[inner_y].mean()) if inner_y.any() else 0.0
    deep = m & (depth >= int(h * NEAR_FIELD))
    return {
        "band_r2": round(r2, 3),
        "lateral_ratio": round(dx / dy, 3) if dy > 1e-6 else 1.0,
        "lit_fraction": round(float((b5[m] > LIT_LEVEL).mean()), 3),
        "deep_std": round(float(b5[deep].std()), 2) if deep.any() else 0.0,
    }


def frame_rejection(gray: np.ndarray, area: ScanArea) -> tuple[str | None, dict]:
    """(rejection reason or None, measured values) for a grayscale frame and its scan area.

    Measured at the scan-area detector's working resolution (every ``step``-th pixel): the
    statistics are the same and the cost does not grow with the frame size.
    """
    small = gray[:: area.step, :: area.step]
    values: dict = {"std": round(float(small.std()), 2), "scan_fraction": round(area.fraction, 4)}
    if values["std"] < MIN_STD:
        return "no_tissue", values  # a frozen blank frame
    if area.fraction < MIN_SCAN_FRACTION:
        return "not_ultrasound", values
    inside = small[area.small_mask]
    values["scan_std"] = round(float(inside.std()), 2)
    if values["scan_std"] < MIN_STD:
        return "no_tissue", values
    values["bright_fraction"] = round(float((inside > 200).mean()), 4)
    if values["bright_fraction"] > MAX_BRIGHT_FRACTION:
        return "not_ultrasound", values
    values["speckle_cv"] = round(speckle_cv(small, area.small_mask), 4)
    if values["speckle_cv"] < MIN_SPECKLE_CV:
        return "not_ultrasound", values
    values.update(tissue_measures(small, area.small_mask))
    if (
        values["band_r2"] > AIR_BAND_R2
        and values["lateral_ratio"] < AIR_LATERAL_RATIO
        and values["lit_fraction"] < AIR_LIT_FRACTION
        and values["deep_std"] < AIR_DEEP_STD
    ):
        return "no_tissue", values
    return None, values


def ultrasound_rejection(gray: np.ndarray, area: ScanArea) -> str | None:
    """The rejection reason for a grayscale frame and its scan area, or None to keep it."""
    return frame_rejection(gray, area)[0]
