"""A tinted frame: B-mode shown through a colour map (a sepia obstetric preset, a printed or
re-encoded figure), whose colours are its grey levels' own -- evidence of tissue, not of colour
Doppler or of a drawn mark -- and the pixels off that map, which are.

A frame is tinted when most lit pixels carry some chroma, all of one hue (each pixel's hue weighed by
its chroma); its map is the median colour of each band of ``TINT_BAND`` grey levels. Shared by the
scan-area finder (:mod:`shards.scan_area`: a tinted frame's tissue is scan) and the colour rule and
annotation finder (:mod:`shards.colour`). Written here because no library models a display's
grey-to-colour map; numpy does the arithmetic.
"""

from __future__ import annotations

import numpy as np

from shards.thresholds import CHROMA, TINT_BAND, TINT_CHROMA, TINT_GREY, TINT_HUE_SPREAD


def coloured(rgb: np.ndarray, chroma: int = CHROMA) -> np.ndarray:
    """Pixels whose channels differ by more than ``chroma`` levels (UI colour, Doppler, ECG traces)."""
    return _spread([rgb[..., i].astype(np.int16) for i in range(3)]) > chroma


def _planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(luma, and each channel minus it) as int16 planes (per-plane arithmetic: numpy's axis=2
    reductions are several times slower). The weighted sum reaches 65,280: summed as int16 it would
    wrap for every pixel brighter than 127."""
    r, g, b = (rgb[..., i].astype(np.uint16) for i in range(3))
    luma = ((r * 77 + g * 150 + b * 29) >> 8).astype(np.int16)
    r, g, b = (c.astype(np.int16) for c in (r, g, b))
    return luma, r - luma, g - luma, b - luma


def _spread(planes: list[np.ndarray]) -> np.ndarray:
    """Channel spread (max - min) of per-channel planes."""
    r, g, b = planes
    return np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)


def _tinted(offsets: list[np.ndarray]) -> bool:
    """A colour map over the whole image: most lit pixels carry some chroma, all of one hue. Each
    pixel's hue counts by its chroma: a dim pixel's few levels of chroma give it a hue at random
    (sepia obstetric maps, printed or re-encoded: 22-46 degrees unweighted, 8-22 weighted; a Doppler
    frame's red and blue stay apart either way)."""
    r, g, b = offsets
    chroma = _spread(offsets)
    if chroma.size == 0 or np.median(chroma) < TINT_CHROMA:
        return False
    sel = chroma >= TINT_CHROMA
    hue = np.arctan2(np.sqrt(3.0) * (g[sel] - b[sel]), 2.0 * r[sel] - g[sel] - b[sel])
    return hue_spread(np.degrees(hue), chroma[sel]) < TINT_HUE_SPREAD


def tint_map(rgb: np.ndarray, mask: np.ndarray, step: int = 1) -> np.ndarray | None:
    """The colour a tinted frame (:func:`_tinted`) gives each band of ``TINT_BAND`` grey levels
    (3 x bands, each channel minus the luma), or None for a frame that is not tinted.

    The colour of each band is the median over every ``step``-th pixel of ``mask``: a large Doppler
    or marker area dominating a few grey bands must not become the frame's own colour."""
    luma, *offsets = _planes(rgb[::step, ::step])
    sel = mask[::step, ::step]
    sampled = [off[sel].astype(np.float32) for off in offsets]
    if not sel.any() or not _tinted(sampled):
        return None
    expected = np.zeros((3, 256 // TINT_BAND + 1), np.int16)
    bands = luma[sel] // TINT_BAND
    order = np.argsort(bands, kind="stable")
    keys, starts = np.unique(bands[order], return_index=True)
    for c, off in enumerate(sampled):
        expected[c, keys] = [int(np.median(ch)) for ch in np.split(off[order], starts[1:])]
    return expected


def off_map(rgb: np.ndarray, tint: np.ndarray | None) -> np.ndarray:
    """Pixels coloured beyond the colour ``tint`` (:func:`tint_map`) gives their grey level; every
    coloured pixel when there is no tint.

    Along the tint's own hue, printing and re-encoding move an edge's colour between grey and the
    map's deepest shade (chroma bled from a neighbour), so only what lies beyond counts there: a hue
    off the tint's (red, blue, green, yellow off a sepia's), a shade deeper than the map ever gives,
    the opposite hue (cyan on sepia), or grey where the map gives colour (a white or grey mark)."""
    if tint is None:
        return coloured(rgb, CHROMA)
    luma, *offsets = _planes(rgb)
    band = luma // TINT_BAND
    res = [(off - tint[c][band]).astype(np.float32) for c, off in enumerate(offsets)]
    axis = tint.astype(np.float32).sum(axis=1)  # the tint's direction, over the grey levels it covers
    norm = float(np.linalg.norm(axis))
    if norm == 0:
        return _spread(res) > CHROMA
    axis /= norm
    along = res[0] * axis[0] + res[1] * axis[1] + res[2] * axis[2]
    off = _spread([r - along * a for r, a in zip(res, axis)]) > CHROMA
    # the same thresholds along the tint: a shade's channel spread is its length times the axis's
    unit = float(axis.max() - axis.min())
    shade = offsets[0] * axis[0] + offsets[1] * axis[1] + offsets[2] * axis[2]
    deepest = float((axis @ tint.astype(np.float32)).max())
    off |= ((shade - deepest) * unit > CHROMA) | (-shade * unit > CHROMA)
    off |= (_spread(offsets) <= TINT_GREY) & (_spread(list(tint))[band] > CHROMA)
    return off


def residual_colour(rgb: np.ndarray, mask: np.ndarray, step: int = 1) -> np.ndarray:
    """Pixels of ``mask`` coloured beyond the colour the frame gives their grey level (step 1 of the
    module doc; the frame's tint measured on every ``step``-th pixel of ``mask``)."""
    return off_map(rgb, tint_map(rgb, mask, step)) & mask


def hue_spread(hue_deg: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Circular standard deviation of hues in degrees (each weighted by ``weight``, when given)."""
    a = np.deg2rad(hue_deg)
    r = float(np.hypot(np.average(np.cos(a), weights=weight), np.average(np.sin(a), weights=weight)))
    return float(np.rad2deg(np.sqrt(-2.0 * np.log(min(max(r, 1e-9), 1.0)))))
