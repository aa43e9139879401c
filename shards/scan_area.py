"""Find the scan area of a B-mode frame: the beam-formed image inside the black surround.

Rule (documented in the README, "Cleaning rules"), on a copy reduced to <= 256 px:
1. *core*: where more than ``min_density`` of a 7x7 window is above ``core_level`` and the pixel is
   not in a black gap, opened with a 5x5 square — burned-in text, depth ticks and calipers are thin
   or sparse and vanish; pieces of at least 10 % of the largest are kept (fluid can split a fan);
2. growth: the core extends into sparsely lit pixels (above ``lit_level``: an attenuated far field,
   dim fan edges) connected to it, within 1/5 of the frame, never through pixels brighter than
   ``DIM_LEVEL`` outside the core (annotations) or their JPEG halo;
3. the scan area is the convex hull of that.
Linear (rectangle) and convex/sector (fan) scan areas are both convex, so the hull restores dark
anatomy touching the edge (cysts, chambers, shadows) that a plain threshold would cut away, while
annotations outside the hull are dropped. Written here because no library in the stack detects an
ultrasound scan area; skimage/scipy supply the morphology.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

WORK_SIDE = 256
CORE_MIN_STD = 2.5  # grey-level std in 5x5 windows: speckle (even smoothed, dark) lies well above
DIM_LEVEL = 100  # far-field speckle the core misses is darker than this; annotations are brighter


@dataclass
class ScanArea:
    small_mask: np.ndarray  # bool, at the working resolution (every ``step``-th pixel)
    step: int
    shape: tuple[int, int]  # full-resolution (height, width)
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), full resolution
    exact: bool = False  # given by the file (a DICOM region): the whole box is the scan area

    @property
    def mask(self) -> np.ndarray:
        """Full-resolution mask (nearest-neighbour upsampling of the working mask)."""
        h, w = self.shape
        return np.repeat(np.repeat(self.small_mask, self.step, axis=0), self.step, axis=1)[:h, :w]

    @property
    def fraction(self) -> float:
        return float(self.small_mask.mean()) if self.small_mask.size else 0.0

    def mask_in_bbox(self) -> np.ndarray:
        """The full-resolution mask inside ``bbox`` only (cheap: never builds the whole frame)."""
        x0, y0, x1, y1 = self.bbox
        if self.exact:
            return np.ones((y1 - y0, x1 - x0), bool)
        s = self.step
        sub = self.small_mask[y0 // s : (y1 - 1) // s + 1, x0 // s : (x1 - 1) // s + 1]
        full = np.repeat(np.repeat(sub, s, axis=0), s, axis=1)
        return full[y0 - (y0 // s) * s :, x0 - (x0 // s) * s :][: y1 - y0, : x1 - x0]


def _empty(gray: np.ndarray, step: int, small_shape: tuple[int, int]) -> ScanArea:
    return ScanArea(np.zeros(small_shape, bool), step, gray.shape, (0, 0, 0, 0))


def region_area(gray: np.ndarray, region: tuple[int, int, int, int]) -> ScanArea:
    """The scan area given exactly by a (DICOM) region box: the whole rectangle."""
    h, w = gray.shape
    step = max(1, int(np.ceil(max(h, w) / WORK_SIDE)))
    sh, sw = gray[::step, ::step].shape
    x0, y0, x1, y1 = region
    mask = np.zeros((sh, sw), bool)
    mask[
        y0 // step : max(y0 // step + 1, (y1 + step - 1) // step),
        x0 // step : max(x0 // step + 1, (x1 + step - 1) // step),
    ] = True
    return ScanArea(mask, step, (h, w), (int(x0), int(y0), int(x1), int(y1)), exact=True)


def coloured(rgb: np.ndarray, chroma: int = 40) -> np.ndarray:
    """Pixels whose channels differ by more than ``chroma`` levels (UI colour, Doppler, ECG traces)."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    return (np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)) > chroma


def detect_scan_area(
    gray: np.ndarray,
    lit_level: int = 2,
    core_level: int = 16,
    min_density: float = 0.5,
    rgb: np.ndarray | None = None,
) -> ScanArea:
    """Scan-area mask and bounding box of a grayscale uint8 frame (empty bbox when none).

    With ``rgb`` (the colour frame ``gray`` came from), coloured pixels are not evidence of a scan
    area: B-mode is grey, so coloured UI (header bars, icons, ECG traces) stays out of the crop,
    while a colour-Doppler box lies inside the grey tissue around it and so inside the hull.
    """
    h, w = gray.shape
    step = max(1, int(np.ceil(max(h, w) / WORK_SIDE)))
    small = gray[::step, ::step]
    if rgb is not None:
        small = np.where(coloured(rgb[::step, ::step]), 0, small).astype(np.uint8)
    lit = small > lit_level
    # Core: densely lit, thick regions (speckle); text and tick strokes are sparse or thin.
    # (core_level sits above JPEG ringing, which otherwise makes a block of text look densely lit)
    dense = (small > core_level).astype(np.float32)
    core = ndimage.uniform_filter(dense, size=7, mode="constant") > min_density
    # The window also spans the black gap between a text line and the image; cut such gaps out.
    core &= ndimage.binary_closing(dense > 0, structure=np.ones((3, 3), bool))
    # Speckle is textured; flat fills (toolbars, buttons, bars of UI, a frozen blank field) are not.
    f = small.astype(np.float32)
    mean = ndimage.uniform_filter(f, 5)
    var = ndimage.uniform_filter(f * f, 5) - mean * mean
    core &= ndimage.maximum_filter(var > CORE_MIN_STD**2, size=5)
    core = ndimage.binary_opening(core, structure=np.ones((5, 5), bool))
    labels, n = ndimage.label(core)
    if n == 0:
        return _empty(gray, step, small.shape)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    # Dark bands (fluid, shadows) can split one scan area into several large pieces.
    keep = np.flatnonzero(sizes >= 0.1 * sizes.max())
    if keep.size > 1:
        # ... but only pieces joined to the largest through lit pixels: a black gap (not fluid, which
        # holds noise) separates the image from UI panels and toolbars beside it.
        # A piece across a black band in the same columns (an anechoic globe or bladder spanning the
        # whole width) is still image, unless it is a thin strip under it (a toolbar or ECG trace).
        joined, _ = ndimage.label(ndimage.binary_closing(lit, structure=np.ones((3, 3), bool)) | core)
        big = int(np.argmax(sizes))
        main = joined[labels == big][0]
        boxes = ndimage.find_objects(labels)
        mx0, mx1 = boxes[big - 1][1].start, boxes[big - 1][1].stop

        def belongs(k: int) -> bool:
            if k == big or (joined[labels == k] == main).any():
                return True
            ys, xs = boxes[k - 1]
            w, h = xs.stop - xs.start, ys.stop - ys.start
            overlap = max(0, min(xs.stop, mx1) - max(xs.start, mx0))
            above = ys.stop <= boxes[big - 1][0].start  # near-field bands sit above; toolbars, ECG below
            return overlap >= 0.5 * w and (h >= 0.25 * w or above)

        keep = np.array([k for k in keep if belongs(int(k))])
    core = np.isin(labels, keep)
    # Grow back into sparsely lit, dim tissue (an attenuated far field) that touches the core;
    # burned-in text and ticks are bright, so they cannot serve as a bridge, nor their JPEG halo.
    bright_outside = (small >= DIM_LEVEL) & ~core
    dim = lit & ~ndimage.maximum_filter(bright_outside, size=9)
    lit_closed = ndimage.binary_closing(dim, structure=np.ones((3, 3), bool)) | core
    lab2, _ = ndimage.label(lit_closed)
    region = np.isin(lab2, np.unique(lab2[core]))
    # Restrict the growth to a band around the core so overlays reached through it stay out.
    region &= ndimage.maximum_filter(core, size=2 * (WORK_SIDE // 5) + 1)
    hull = convex_hull_image(region, offset_coordinates=False)
    rows, cols = np.flatnonzero(hull.any(1)), np.flatnonzero(hull.any(0))
    # Coarse box, then tightened to pixels lit at full resolution (the upsampled edge is a staircase).
    y0, y1 = rows[0] * step, min(h, (rows[-1] + 1) * step)
    x0, x1 = cols[0] * step, min(w, (cols[-1] + 1) * step)
    area = ScanArea(hull, step, (h, w), (int(x0), int(y0), int(x1), int(y1)))
    lit_full = area.mask_in_bbox() & (gray[y0:y1, x0:x1] > 0)
    ys, xs = np.flatnonzero(lit_full.any(1)), np.flatnonzero(lit_full.any(0))
    if ys.size == 0:
        return _empty(gray, step, small.shape)
    area.bbox = (int(x0 + xs[0]), int(y0 + ys[0]), int(x0 + xs[-1] + 1), int(y0 + ys[-1] + 1))
    return area


def crop_to_scan_area(gray: np.ndarray, area: ScanArea) -> np.ndarray:
    """Crop to the scan area's bounding box and blank everything outside the scan area."""
    x0, y0, x1, y1 = area.bbox
    out = gray[y0:y1, x0:x1].copy()
    out[~area.mask_in_bbox()] = 0
    return out
