"""Reject frames that are not B-mode ultrasound (documented rules; docs/data.md "Cleaning rules").

Judged on the scan area's box reduced to <= ``WORK_SIDE`` px (every ``step``-th pixel: the
statistics are the same, the cost does not grow with the frame, and a small scan on a wide screen
is seen in as much detail as a large one); thresholds in :mod:`shards.thresholds`.

- ``no_tissue``: a frozen blank frame (the frame, or the scan area, with a grey-level std below
  ``MIN_STD``), or a probe in air (:mod:`shards.tissue`; under a DICOM region that is mostly dark,
  also the area found inside the region).
- ``too_small``: a scan area under ``MIN_SCAN_SIDE`` native pixels a side or ``MIN_SCAN_PIXELS``
  native pixels (an absolute size: a scan of 150 x 300 pixels on a 1280 x 720 device screen is a
  fine image, whatever share of the screen it covers).
- ``not_ultrasound``: most of the scan area in strong colour (``saturated``, more than
  ``MAX_SATURATED``: logos, colour graphics; colour Doppler is judged before it); no scan area at
  all; a bright area (more than ``MAX_BRIGHT_FRACTION`` above 200: documents, screenshots, white
  pages); no speckle inside it (median local coefficient of variation below ``MIN_SPECKLE_CV``:
  smooth photos, gradients, drawings); texture without grain (``grain``, neighbouring native pixels correlated less than
  ``MIN_GRAIN``: pixel noise, which has the variation of speckle but not the size of its grains).
The colour rule is :mod:`shards.colour`.
"""

from __future__ import annotations

import cv2
import numpy as np

from shards.scan_area import ScanArea, detect_scan_area, outside_zeroed
from shards.thresholds import (
    AIR_REGION_LIT,
    AIR_REGION_LOWER_LIT,
    BRIGHT_LEVEL,
    GRAIN_LIT_LEVEL,
    GRAIN_SIDE,
    LIT_AREA_LEVEL,
    MAX_BRIGHT_FRACTION,
    MAX_SATURATED,
    MIN_GRAIN,
    MIN_MEASURED_PIXELS,
    MIN_SCAN_PIXELS,
    MIN_SCAN_SIDE,
    MIN_SPECKLE_CV,
    MIN_STD,
    SATURATED_VALUE,
    SATURATION,
    SPECKLE_LIT_LEVEL,
    WORK_SIDE,
)
from shards.tissue import in_air, thin_band, tissue_measures


def speckle_cv(gray: np.ndarray, mask: np.ndarray) -> float:
    """Median local coefficient of variation (7x7 windows) over lit pixels of ``mask``."""
    g = gray.astype(np.float32)
    mean = cv2.blur(g, (7, 7), borderType=cv2.BORDER_REFLECT)
    sq = cv2.blur(g * g, (7, 7), borderType=cv2.BORDER_REFLECT)
    std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    sel = mask & (mean > SPECKLE_LIT_LEVEL)
    if sel.sum() < MIN_MEASURED_PIXELS:
        return 0.0
    return float(np.median(std[sel] / mean[sel]))


def saturated(rgb: np.ndarray, area: ScanArea) -> float:
    """Share of the scan area (of the frame when none was found) in strong colour: HSV saturation
    above ``SATURATION`` and value above ``SATURATED_VALUE``, at the working resolution. The scan
    area, not the frame: a grey scan pasted on a coloured slide is a scan."""
    small = np.ascontiguousarray(rgb[:: area.step, :: area.step])
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    strong = (hsv[..., 1] > SATURATION) & (hsv[..., 2] > SATURATED_VALUE)
    inside = area.small_mask[: strong.shape[0], : strong.shape[1]]
    return float(strong[inside].mean()) if inside.any() else float(strong.mean())


def graphic_rejection(rgb: np.ndarray, gray: np.ndarray, area: ScanArea) -> tuple[str | None, dict]:
    """``not_ultrasound`` for a scan area mostly in strong colour (module doc), with its measure; a
    blank frame, whatever its colour, is left to the blank-frame rule (``no_tissue``)."""
    if float(gray[:: area.step, :: area.step].std()) < MIN_STD:
        return None, {}
    values = {"saturated": round(saturated(rgb, area), 3)}
    return ("not_ultrasound" if values["saturated"] > MAX_SATURATED else None), values


def grain(gray: np.ndarray, area: ScanArea) -> float:
    """The larger of the across and down correlations of neighbouring native pixels of the scan area,
    over pairs inside it and lit (their mean above 20), taken on a grid of at most ``GRAIN_SIDE``
    rows and columns: the working copy's every ``step``-th pixel would hide the grain it measures."""
    x0, y0, x1, y1 = area.bbox
    box = gray[y0:y1, x0:x1].astype(np.float32)
    mask = area.mask_in_bbox()
    s = max(1, int(np.ceil(max(box.shape) / GRAIN_SIDE)))
    best = 0.0
    for a, b, ma, mb in (
        (box[::s, :-1:s], box[::s, 1::s], mask[::s, :-1:s], mask[::s, 1::s]),
        (box[:-1:s, ::s], box[1::s, ::s], mask[:-1:s, ::s], mask[1::s, ::s]),
    ):
        n = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
        a, b = a[: n[0], : n[1]], b[: n[0], : n[1]]
        sel = ma[: n[0], : n[1]] & mb[: n[0], : n[1]] & (a + b > GRAIN_LIT_LEVEL)
        if sel.sum() < MIN_MEASURED_PIXELS:
            continue
        u, v = a[sel] - a[sel].mean(), b[sel] - b[sel].mean()
        den = float(np.sqrt((u * u).sum() * (v * v).sum()))
        best = max(best, float((u * v).sum()) / den if den > 0 else 0.0)
    return best


def area_copy(gray: np.ndarray, area: ScanArea) -> tuple[np.ndarray, np.ndarray]:
    """The scan area's box and mask reduced to <= ``WORK_SIDE`` px: the rules see the same detail in
    a 150 x 300 scan on a wide screen as in a scan filling its frame."""
    x0, y0, x1, y1 = area.bbox
    step = max(1, int(np.ceil(max(x1 - x0, y1 - y0) / WORK_SIDE)))
    return gray[y0:y1:step, x0:x1:step], area.mask_in_bbox()[::step, ::step]


def _room_below(gray: np.ndarray, area: ScanArea) -> dict:
    """A scan area found (not given by the file) as a thin band at the top of a frame that goes on,
    dark, below it -- the near-field arcs of a probe in air, the fan below them holding no evidence:
    ``band_aspect`` (depth / width), ``room_below`` (frame below it, in band depths) and ``below_lit``
    (share of the working pixels there in its columns above ``LIT_AREA_LEVEL``)."""
    if area.exact:
        return {}
    x0, y0, x1, y1 = area.bbox
    below = gray[y1 :: area.step, x0 : x1 : area.step]
    return {
        "band_aspect": round((y1 - y0) / max(x1 - x0, 1), 3),
        "room_below": round((gray.shape[0] - y1) / max(y1 - y0, 1), 2),
        "below_lit": round(float((below > LIT_AREA_LEVEL).mean()) if below.size else 0.0, 4),
    }


def frame_rejection(gray: np.ndarray, area: ScanArea, known_grain: float | None = None) -> tuple[str | None, dict]:
    """(rejection reason or None, measured values) for a grayscale frame and its scan area
    (``known_grain``: :func:`grain` of these very pixels, when the caller has it)."""
    small = gray[:: area.step, :: area.step]
    x0, y0, x1, y1 = area.bbox
    values: dict = {"std": round(float(small.std()), 2), "scan_pixels": area.pixels, "scan_side": min(x1 - x0, y1 - y0)}
    if values["std"] < MIN_STD:
        return "no_tissue", values  # a frozen blank frame
    if not area.small_mask.any():
        return "not_ultrasound", values  # no scan area at all
    if values["scan_side"] < MIN_SCAN_SIDE or values["scan_pixels"] < MIN_SCAN_PIXELS:
        return "too_small", values
    box, mask = area_copy(gray, area)
    inside = box[mask]
    values["scan_std"] = round(float(inside.std()), 2)
    if values["scan_std"] < MIN_STD:
        return "no_tissue", values
    values["bright_fraction"] = round(float((inside > BRIGHT_LEVEL).mean()), 4)
    if values["bright_fraction"] > MAX_BRIGHT_FRACTION:
        return "not_ultrasound", values
    values["speckle_cv"] = round(speckle_cv(box, mask), 4)
    if values["speckle_cv"] < MIN_SPECKLE_CV:
        return "not_ultrasound", values
    values.update(_room_below(gray, area))
    values.update(tissue_measures(box, mask, thin_band(values)))
    if in_air(values):
        return "no_tissue", values
    values["grain"] = round(grain(gray, area) if known_grain is None else known_grain, 3)
    if values["grain"] < MIN_GRAIN:
        return "not_ultrasound", values
    if area.exact and values["lit_fraction"] < AIR_REGION_LIT and _lower_third_lit(box, mask) < AIR_REGION_LOWER_LIT:
        return _band_in_region(gray, area, values)
    return None, values


def _lower_third_lit(box: np.ndarray, mask: np.ndarray) -> float:
    """Share of the lower third of a working copy lit (5x5 mean above ``LIT_AREA_LEVEL``): a cheap
    first look, on pixels at hand, before the area inside a region is looked for."""
    low = slice(2 * box.shape[0] // 3, None)
    lit = cv2.blur(box[low].astype(np.float32), (5, 5)) > LIT_AREA_LEVEL
    sel = mask[low]
    return float(lit[sel].mean()) if sel.any() else 0.0


def _band_in_region(gray: np.ndarray, area: ScanArea, values: dict) -> tuple[str | None, dict]:
    """A region given by the file, mostly dark: the scan area found inside it, when that is a thin
    band at its top over the rest of it, dark (:func:`shards.tissue.thin_band`, room measured to
    the region's bottom), is judged as if the file had given no region -- the near-field arcs of a
    probe in air framed by a region that holds the whole image field (Philips CX50, Mindray DC-30)."""
    field = outside_zeroed(gray, area.bbox)[: area.bbox[3]]
    inner = detect_scan_area(field)
    if not inner.small_mask.any():
        return None, values
    reason, band = frame_rejection(field, inner)
    if reason != "no_tissue" or not thin_band(band):
        return None, values
    return reason, {**values, **{f"found_{k}": v for k, v in band.items()}}


def ultrasound_rejection(gray: np.ndarray, area: ScanArea) -> str | None:
    """The rejection reason for a grayscale frame and its scan area, or None to keep it."""
    return frame_rejection(gray, area)[0]
