"""Is there tissue in the scan area? The probe in air and the empty frame (``no_tissue``).

In air every scan line sees the same thing: reverberations of the transducer face parallel to it,
then a dark band or a noise floor. In tissue the scan lines differ. The scan area is therefore
resampled into *scan-line coordinates* -- depth along each line, one column per line -- where the
bands of a probe in air are rows for every array: depth counted from each column's top edge for a
linear or convex array (the convex arcs line up), and the distance from the apex along each angle
for a sector (phased array; its top is a point). Measured there, at the working resolution
(thresholds in :mod:`shards.thresholds`, measurements in docs/calibration.md):

- ``band_r2``: share of the near field's variance (top ``NEAR_FIELD`` of the depth) explained by
  its depth profile; ``lateral_ratio``: mean |d/d line| over mean |d/d depth| there (speckle has
  both, reverberation bands only the second);
- ``near_structure`` / ``deep_structure``: grey-level std of the 5x5-smoothed image once each
  depth's and each line's median are taken away, in the near field and below it: what neither a
  band parallel to the face nor a line's own gain (a channel's noise streak, a rib shadow)
  explains -- the anatomy;
- ``lit_fraction``: share of the scan area above ``LIT_AREA_LEVEL`` (5x5 mean).

Six signatures, any suffices: an *empty* field (``lit_fraction`` below ``AIR_EMPTY_LIT``, no
structure below the near field: ``deep_structure`` under ``AIR_DEEP_STRUCTURE``); a
*uniform* one (structure below ``AIR_NEAR_STRUCTURE`` and ``AIR_DEEP_STRUCTURE``, with bands
parallel to the face -- ``band_r2`` at least ``AIR_UNIFORM_BAND_R2`` over at least ``AIR_BANDS``
bands (``near_bands``: reverberations repeat; a phantom's membrane line is one) --, no lateral
speckle texture -- ``lateral_ratio`` below ``AIR_FLAT_RATIO`` -- or dim like a noise floor --
``lit_fraction`` below ``AIR_DIM_FRACTION`` --, or a near field flatter still (structure below
``AIR_FLAT_STRUCTURE``): a probe held in air, its noise floor even);
*bands over an empty field* (``band_r2`` above ``AIR_BAND_R2``, ``lit_fraction`` below
``AIR_LIT_FRACTION`` -- or any lit share when the bands are all the near field holds, ``band_r2`` at
least ``AIR_PURE_BAND_R2`` --, structure below the near field under ``AIR_EMPTY_STRUCTURE``: a probe
lifted off the skin); a *thin band over a dark frame*: a scan area found (not given by the file) less deep
than ``AIR_BAND_ASPECT`` of its width, the frame going on below it, dark (``room_below`` at least
``AIR_ROOM_BELOW`` band depths, ``below_lit`` under ``AIR_BELOW_LIT``; :mod:`shards.quality`), the
band fading to nothing at its bottom (``fade`` under ``AIR_FADE``) and every scan line alike
(``line_likeness``, the median correlation of a line's depth profile with the median one, at least
``AIR_LINE_LIKENESS``): the near-field arcs of a probe in air are all the heuristic finds, the field
below them holds no evidence (under a DICOM region that is mostly dark, the area found inside it is
judged so: :func:`shards.quality.frame_rejection`); *the middle of the face in air*: over the middle ``CENTRE_LINES`` of
the scan lines, the near field is bands alone (``centre_band_r2`` at least ``AIR_CENTRE_BAND_R2``)
over a field without structure (``centre_deep_structure`` under ``AIR_CENTRE_DEEP_STRUCTURE``): a
probe lifting off keeps gel contact at its ends, whose tissue would otherwise pass the frame; *a
rising noise floor*: the depth profile (median over the scan lines) climbs steadily from the face to
the bottom (``depth_rise``, its rank correlation with depth, at least ``AIR_RISE``) to
``AIR_RISE_RATIO`` times its near level (``rise_ratio``), with neither field structured (both under
``AIR_RISE_STRUCTURE``): a phased array in air shows its receiver noise amplified by the
time-gain compensation, dark at the face and brighter with depth, with no anatomy; tissue is
brightest near the face or varies with the anatomy.
Lung with A-lines has bands too, but under a chest wall whose speckle has lateral texture and
structure, and rib shadows; an eye or a bladder is dark under horizontal layers, but the tissue
around it is structured.
"""

from __future__ import annotations

import cv2
import numpy as np

from shards.thresholds import (
    AIR_BAND_ASPECT,
    AIR_BAND_R2,
    AIR_BANDS,
    AIR_BELOW_LIT,
    AIR_CENTRE_BAND_R2,
    AIR_CENTRE_DEEP_STRUCTURE,
    AIR_DEEP_STRUCTURE,
    AIR_DIM_FRACTION,
    AIR_EMPTY_LIT,
    AIR_EMPTY_STRUCTURE,
    AIR_FADE,
    AIR_FLAT_RATIO,
    AIR_FLAT_STRUCTURE,
    AIR_LINE_LIKENESS,
    AIR_LIT_FRACTION,
    AIR_NEAR_STRUCTURE,
    AIR_PURE_BAND_R2,
    AIR_RISE,
    AIR_RISE_RATIO,
    AIR_RISE_STRUCTURE,
    AIR_ROOM_BELOW,
    AIR_UNIFORM_BAND_R2,
    BAND_PEAK,
    CENTRE_LINES,
    FACE_LEVEL,
    LIT_AREA_LEVEL,
    NEAR_FIELD,
    SECTOR_TOP,
)


def _column_lines(f: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear and convex arrays: each column shifted up to its first lit pixel (the transducer face:
    the hull of a convex probe's arc is flat on top, the arc itself is not)."""
    h = m.shape[0]
    lit = m & (cv2.blur(f, (3, 3)) > FACE_LEVEL)
    top = np.where(lit.any(0), lit.argmax(0), np.where(m.any(0), m.argmax(0), 0))
    rows = np.arange(h)[:, None] + top[None, :]
    inside = rows < h
    rows = np.minimum(rows, h - 1)
    cols = np.broadcast_to(np.arange(m.shape[1])[None, :], rows.shape)
    return f[rows, cols], inside & m[rows, cols]


def _sector_lines(f: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phased arrays: polar resampling around the apex (the middle of the top row)."""
    ys, xs = np.nonzero(m)
    top = ys.min()
    xa, ya = float(xs[ys == top].mean()), float(top)
    ang = np.arctan2(xs - xa, np.maximum(ys - ya, 1e-3))
    lo, hi = float(ang.min()), float(ang.max())
    depth = int(np.ceil(np.hypot(xs - xa, ys - ya).max())) + 1
    lines = max(4, int(m.shape[1]))
    theta = np.linspace(lo, hi, lines, dtype=np.float32)[None, :]
    r = np.arange(depth, dtype=np.float32)[:, None]
    mx = (xa + r * np.sin(theta)).astype(np.float32)
    my = (ya + r * np.cos(theta)).astype(np.float32)
    d = cv2.remap(f, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    v = cv2.remap(m.astype(np.uint8), mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT) > 0
    return d, v


def scan_lines(small: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scan area in scan-line coordinates: (image[depth, line] float32, valid[depth, line])."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    m = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    f = small[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
    widths = m.sum(1)
    top = m[: max(1, len(widths) // 20)]
    narrow = widths[: top.shape[0]].max() < SECTOR_TOP * widths.max()
    # a sector's top is its apex, in the middle; a convex band's (a smile) is an end, at one side
    xs = np.flatnonzero(top.any(0))
    centred = xs.size > 0 and abs((xs[0] + xs[-1]) / 2 - (m.shape[1] - 1) / 2) < SECTOR_TOP * m.shape[1]
    return _sector_lines(f, m) if narrow and centred else _column_lines(f, m)


def _structure(smooth: np.ndarray, valid: np.ndarray) -> float:
    """Grey-level std of the smoothed image once each depth's and each line's median are taken away:
    what neither a band parallel to the face nor a line's own gain (a channel's noise streak, a rib
    shadow) explains -- the anatomy."""
    if valid.sum() < 16:
        return 0.0
    s = np.where(valid, smooth, np.nan)
    for _ in range(2):
        s = s - _valid_median(s, valid, 1)
        s = s - _valid_median(s, valid, 0)
    return float(np.std(s[valid]))


def _valid_median(s: np.ndarray, valid: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian(s, axis, keepdims=True)`` (``s`` NaN outside ``valid``), 0 where a row or
    column has no valid pixel. NaNs sort last, so each middle is read off one sort: numpy's
    nanmedian goes through masked arrays on frames this small and costs several times more."""
    n = valid.sum(axis=axis, keepdims=True)
    srt = np.sort(s, axis=axis)
    lo = np.take_along_axis(srt, np.maximum(n - 1, 0) // 2, axis=axis)
    hi = np.take_along_axis(srt, n // 2 - (n == 0), axis=axis)
    return np.where(n > 0, (lo + hi) / 2, 0).astype(s.dtype)


def _band_r2(img: np.ndarray, valid: np.ndarray) -> float:
    """Share of the variance explained by the depth profile."""
    v = img[valid]
    if v.size <= 16 or v.var() <= 1e-6:
        return 0.0
    depth = np.broadcast_to(np.arange(valid.shape[0])[:, None], valid.shape)[valid]
    profile = np.bincount(depth, weights=v) / np.maximum(np.bincount(depth), 1)
    return float(1.0 - (v - profile[depth]).var() / v.var())


def _bands(img: np.ndarray, valid: np.ndarray, cut: int) -> int:
    """Bright bands parallel to the face in the near field: peaks of its depth profile standing
    ``BAND_PEAK`` of the profile's range above its median, at least 3 rows apart. A probe in air
    shows several (the face's reverberations), a phantom's membrane or the skin line one."""
    near = np.where(valid[:cut], img[:cut], np.float32(np.nan))
    profile = _valid_median(near, valid[:cut], 1)[:, 0].astype(np.float32)
    if profile.size < 5:
        return 0
    profile = np.convolve(profile, np.ones(3) / 3, mode="same")
    level = np.median(profile) + BAND_PEAK * (profile.max() - np.median(profile))
    peaks, last = 0, -10
    for d in range(1, profile.size - 1):
        if profile[d] >= level and profile[d] >= profile[d - 1] and profile[d] > profile[d + 1] and d - last >= 3:
            peaks, last = peaks + 1, d
    return peaks


def _alike(img: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """(``line_likeness``: median over the scan lines of the correlation of a line's depth profile with
    the median one -- in air every line sees the same thing --; ``fade``: the deepest fifth's median
    level over the brightest level of the upper half of that profile)."""
    profile = _valid_median(np.where(valid, img, np.float32(np.nan)), valid, 1)
    rows = np.flatnonzero(valid.any(1))
    if rows.size < 10:
        return 0.0, 1.0
    p = profile[rows[0] : rows[-1] + 1, 0]
    fade = float(np.median(p[-max(1, p.size // 5) :]) / max(float(p[: p.size // 2 + 1].max()), 1.0))
    n = valid.sum(0)
    w = valid.astype(np.float32)
    a, b = np.where(valid, img, 0), np.where(valid, profile, 0) * w
    ma, mb = a.sum(0) / np.maximum(n, 1), b.sum(0) / np.maximum(n, 1)
    da, db = (a - ma) * w, (b - mb) * w
    den = np.sqrt((da * da).sum(0) * (db * db).sum(0))
    ok = (n >= 8) & (den > 1e-6)
    corr = (da * db).sum(0)[ok] / den[ok]
    return (float(np.median(corr)) if corr.size else 0.0), fade


def _rise(smooth: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """(``depth_rise``: rank correlation of the depth profile -- the median over the scan lines at
    each depth where at least half of them are valid -- with depth; ``rise_ratio``: its mean level
    from 0.6 of the depth down over that of its top fifth)."""
    n = valid.sum(1)
    rows = np.flatnonzero(n >= 0.5 * n.max()) if n.any() else np.zeros(0, int)
    if rows.size < 10:
        return 0.0, 1.0
    profile = _valid_median(np.where(valid, smooth, np.float32(np.nan)), valid, 1)[rows, 0]
    k = profile.size
    near, deep = float(profile[: max(1, k // 5)].mean()), float(profile[int(0.6 * k) :].mean())
    ranks = np.argsort(np.argsort(profile, kind="stable")).astype(np.float64)
    corr = np.corrcoef(ranks, np.arange(k, dtype=np.float64))[0, 1]
    return (float(corr) if np.isfinite(corr) else 0.0), deep / max(near, 1.0)


def thin_band(values: dict) -> bool:
    """The scan area is a thin band at the top of a frame that goes on, dark, below it (module doc)."""
    return (
        values.get("band_aspect", 1.0) < AIR_BAND_ASPECT
        and values.get("room_below", 0.0) >= AIR_ROOM_BELOW
        and values.get("below_lit", 1.0) < AIR_BELOW_LIT
    )


def _middle_lines(valid: np.ndarray) -> slice:
    """The middle ``CENTRE_LINES`` of the scan lines (a probe lifted off the skin keeps gel contact at
    its ends longest), as a slice of columns: measured on the slice, not a mask, it costs half."""
    cols = np.flatnonzero(valid.any(0))
    if not cols.size:
        return slice(0, 0)
    skip = int(cols.size * (1 - CENTRE_LINES) / 2)
    return slice(int(cols[skip]), int(cols[cols.size - 1 - skip]) + 1)


def tissue_measures(small: np.ndarray, mask: np.ndarray, band: bool = False) -> dict:
    """The measures of the module doc for a working frame and its scan-area mask; ``line_likeness``
    and ``fade`` only for a ``band`` (:func:`thin_band`: they judge nothing else), ``depth_rise`` and
    ``rise_ratio`` only for a frame without structure."""
    img, valid = scan_lines(small, mask)
    depth = int(np.flatnonzero(valid.any(1))[-1]) + 1 if valid.any() else 1
    cut = max(4, int(depth * NEAR_FIELD))
    near, deep = valid.copy(), valid.copy()
    near[cut:], deep[:cut] = False, False
    b3 = cv2.blur(img, (3, 3))
    b5 = cv2.blur(img, (5, 5))
    inner_x, inner_y = near[:, 1:] & near[:, :-1], near[1:] & near[:-1]
    dx = float(np.abs(np.diff(b3, axis=1))[inner_x].mean()) if inner_x.any() else 0.0
    dy = float(np.abs(np.diff(b3, axis=0))[inner_y].mean()) if inner_y.any() else 0.0
    alike = dict(zip(("line_likeness", "fade"), (round(v, 3) for v in _alike(b3, valid)))) if band else {}
    mid = _middle_lines(valid)
    near_structure = round(_structure(b5[:cut], near[:cut]), 2)
    deep_structure = round(_structure(b5[cut:], deep[cut:]), 2)
    rise = {}
    if max(near_structure, deep_structure) < AIR_RISE_STRUCTURE:  # judges nothing else: spare the sort
        rise = dict(zip(("depth_rise", "rise_ratio"), (round(v, 3) for v in _rise(b5, valid))))
    return {
        **alike,
        **rise,
        "centre_band_r2": round(_band_r2(b3[:, mid], near[:, mid]), 3),
        "centre_deep_structure": round(_structure(b5[cut:, mid], deep[cut:, mid]), 2),
        "band_r2": round(_band_r2(b3, near), 3),
        "near_bands": _bands(b3, near, cut),
        "lateral_ratio": round(dx / dy, 3) if dy > 1e-6 else 1.0,
        "lit_fraction": round(float((b5[valid] > LIT_AREA_LEVEL).mean()), 3) if valid.any() else 0.0,
        "near_structure": near_structure,
        "deep_structure": deep_structure,
    }


def in_air(values: dict) -> bool:
    """Any signature of a probe in air or an empty frame (module doc)."""
    # dark and without structure: a dark frame of anatomy (low gain, a dark preset) keeps its structure
    empty = values["lit_fraction"] < AIR_EMPTY_LIT and values["deep_structure"] < AIR_DEEP_STRUCTURE
    uniform = (
        values["near_structure"] < AIR_NEAR_STRUCTURE
        and values["deep_structure"] < AIR_DEEP_STRUCTURE
        and (
            (values["band_r2"] >= AIR_UNIFORM_BAND_R2 and values["near_bands"] >= AIR_BANDS)
            or values["lateral_ratio"] < AIR_FLAT_RATIO
            or values["lit_fraction"] < AIR_DIM_FRACTION
            or values["near_structure"] < AIR_FLAT_STRUCTURE
        )
    )
    bands_over_empty = (
        values["band_r2"] > AIR_BAND_R2
        and (values["lit_fraction"] < AIR_LIT_FRACTION or values["band_r2"] >= AIR_PURE_BAND_R2)
        and values["deep_structure"] < AIR_EMPTY_STRUCTURE
    )
    # the middle of the face in air, gel contact left only at its ends
    centre_in_air = (
        values["centre_band_r2"] >= AIR_CENTRE_BAND_R2 and values["centre_deep_structure"] < AIR_CENTRE_DEEP_STRUCTURE
    )
    band_at_face = (
        thin_band(values)
        and values.get("fade", 1.0) < AIR_FADE
        and values.get("line_likeness", 0.0) >= AIR_LINE_LIKENESS
    )
    # receiver noise under the time-gain compensation: dark at the face, brighter with depth
    rising = (
        values.get("depth_rise", 0.0) >= AIR_RISE
        and values.get("rise_ratio", 1.0) >= AIR_RISE_RATIO
        and max(values["near_structure"], values["deep_structure"]) < AIR_RISE_STRUCTURE
    )
    return bool(empty or uniform or bands_over_empty or centre_in_air or band_at_face or rising)
