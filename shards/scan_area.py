"""Find the scan area of a B-mode frame: the beam-formed image inside the black surround or the
user interface of a device screen.

Rule (docs/data.md "Cleaning rules"; every threshold in :mod:`shards.thresholds`), on a copy reduced
to <= ``WORK_SIDE`` px:
1. *core*: where more than ``CORE_MIN_DENSITY`` of a 7x7 window is above ``CORE_LEVEL``, the grey
   level varies (5x5 std above ``CORE_MIN_STD``: speckle; flat toolbars and bars do not) and the
   pixel is not in a black gap, opened with a 5x5 square -- burned-in text, depth ticks and
   calipers are thin or sparse and vanish. Coloured pixels are no evidence (B-mode is grey; in a
   tinted frame, B-mode shown through a colour map, only the pixels off its map: :mod:`shards.tint`), and
   grey fills (nearly every pixel of a 7x7 window equal to its neighbours exactly: the panels of a
   grey software screen) and large flat white fields (a figure's page, a light interface) are no lit
   path in steps 2 and 3;
2. *pieces*: the largest piece of the core and the pieces of at least ``PIECE_MIN_SHARE`` of it that
   are joined to it through lit pixels, or lie across a black band within its columns (an
   anechoic globe spanning the width, the near-field bands of a probe in air, the far wall under a
   vessel crossing a linear image: same side edges, nothing beside it), never a toolbar or ECG strip
   under it nor a wider band over it (a header bar with text). For a clip, pieces that
   never change across its frames are user interface (:mod:`shards.clip_mask`);
3. growth into sparsely lit pixels (an attenuated far field, dim fan edges) connected to the core
   within 1/5 of the frame, never through bright pixels outside the core (annotations);
4. the scan area is the convex hull of that.
Linear (rectangle) and convex/sector (fan) scan areas are both convex, so the hull restores dark
anatomy touching the edge that a threshold would cut away, while annotations outside the hull are
dropped. A DICOM region is the scan area, unless it covers ``LOOSE_REGION`` of the frame: then it
holds the user interface too (some devices give the whole screen but its header) and only bounds
the heuristic.
Written here because no library in the stack detects an ultrasound scan area; OpenCV supplies the
filters, morphology, connected components and hull.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from shards.components import components
from shards.thresholds import (
    BAR_REACH,
    BAR_RUN,
    CORE_LEVEL,
    CORE_MAX_FLAT,
    CORE_MIN_DENSITY,
    CORE_MIN_STD,
    DIM_LEVEL,
    FILL_SAME,
    LIT_LEVEL,
    LOOSE_REGION,
    PIECE_COLUMNS,
    PIECE_EDGES,
    PIECE_MIN_MOVING,
    PIECE_MIN_SHARE,
    REGION_FILL,
    WHITE_FILL,
    WHITE_LEVEL,
    WORK_SIDE,
)
from shards.tint import coloured, off_map, tint_map

SQUARE3 = np.ones((3, 3), np.uint8)
SQUARE5 = np.ones((5, 5), np.uint8)


@dataclass
class ScanArea:
    small_mask: np.ndarray  # bool, at the working resolution (every ``step``-th pixel)
    step: int
    shape: tuple[int, int]  # full-resolution (height, width)
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), full resolution
    exact: bool = False  # given by the file (a DICOM region): the whole box is the scan area
    source: str = "heuristic"  # heuristic | clip | dicom_region
    # mask_in_bbox per bbox: a clip's frames share one area, so its mask is upsampled once
    _in_bbox: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def mask(self) -> np.ndarray:
        """Full-resolution mask (nearest-neighbour upsampling of the working mask)."""
        h, w = self.shape
        return np.repeat(np.repeat(self.small_mask, self.step, axis=0), self.step, axis=1)[:h, :w]

    @property
    def fraction(self) -> float:
        return float(self.small_mask.mean()) if self.small_mask.size else 0.0

    @property
    def pixels(self) -> int:
        """Pixels of the scan area at the native resolution."""
        return int(np.count_nonzero(self.small_mask)) * self.step * self.step

    def mask_in_bbox(self) -> np.ndarray:
        """The full-resolution mask inside ``bbox`` only (cheap: never builds the whole frame), read-only:
        it is computed once per ``bbox``."""
        key = (self.bbox, self.exact)
        if key not in self._in_bbox:
            self._in_bbox.clear()
            self._in_bbox[key] = self._upsampled_in_bbox()
            self._in_bbox[key].flags.writeable = False
        return self._in_bbox[key]

    def _upsampled_in_bbox(self) -> np.ndarray:
        x0, y0, x1, y1 = self.bbox
        if self.exact:
            return np.ones((y1 - y0, x1 - x0), bool)
        s = self.step
        sub = self.small_mask[y0 // s : (y1 - 1) // s + 1, x0 // s : (x1 - 1) // s + 1]
        full = np.repeat(np.repeat(sub, s, axis=0), s, axis=1)
        return np.ascontiguousarray(full[y0 - (y0 // s) * s :, x0 - (x0 // s) * s :][: y1 - y0, : x1 - x0])


def work_step(shape: tuple[int, ...]) -> int:
    return max(1, int(np.ceil(max(shape[0], shape[1]) / WORK_SIDE)))


def _empty(shape: tuple[int, int], step: int, small_shape: tuple[int, int]) -> ScanArea:
    return ScanArea(np.zeros(small_shape, bool), step, shape, (0, 0, 0, 0))


def region_area(gray: np.ndarray, region: tuple[int, int, int, int]) -> ScanArea:
    """The scan area given exactly by a (DICOM) region box: the whole rectangle."""
    h, w = gray.shape
    step = work_step(gray.shape)
    sh, sw = gray[::step, ::step].shape
    x0, y0, x1, y1 = region
    mask = np.zeros((sh, sw), bool)
    mask[
        y0 // step : max(y0 // step + 1, (y1 + step - 1) // step),
        x0 // step : max(x0 // step + 1, (x1 + step - 1) // step),
    ] = True
    return ScanArea(mask, step, (h, w), (int(x0), int(y0), int(x1), int(y1)), exact=True, source="dicom_region")


def working_copy(gray: np.ndarray, rgb: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Every ``step``-th pixel, coloured pixels set to 0 (B-mode is grey: colour is no evidence), or in
    a tinted frame (B-mode shown through a colour map) the pixels off its map."""
    step = work_step(gray.shape)
    small = gray[::step, ::step]
    if rgb is not None:
        rgb = rgb[::step, ::step]
        col = coloured(rgb)
        tint = tint_map(rgb, small > LIT_LEVEL) if col.any() else None
        small = np.where(col if tint is None else off_map(rgb, tint), 0, small).astype(np.uint8)
    return np.ascontiguousarray(small), step


def _flat(small: np.ndarray, tol: int = 1) -> np.ndarray:
    """1.0 where a working pixel is within ``tol`` grey levels of its right and lower neighbours (a flat fill)."""
    s = small.astype(np.int16)
    flat = np.zeros(small.shape, np.float32)
    flat[:-1, :-1] = (np.abs(s[:-1, :-1] - s[:-1, 1:]) <= tol) & (np.abs(s[:-1, :-1] - s[1:, :-1]) <= tol)
    return flat


def _bars(small: np.ndarray) -> np.ndarray:
    """User-interface bars: rows flat (+-1 grey level) over ``BAR_RUN`` working pixels at a grey level
    (not black, not saturated; no row of speckle is that flat), widened by ``BAR_REACH`` rows so that
    the text lines between them go too."""
    s = small.astype(np.int16)
    flat = np.zeros(small.shape, np.uint8)
    flat[:, :-1] = (np.abs(s[:, 1:] - s[:, :-1]) <= 1) & (s[:, :-1] > LIT_LEVEL) & (s[:, :-1] < WHITE_LEVEL)
    runs = cv2.morphologyEx(flat, cv2.MORPH_OPEN, np.ones((1, BAR_RUN), np.uint8))
    return cv2.dilate(runs, np.ones((2 * BAR_REACH + 1, 1), np.uint8)) > 0


def _fills(small: np.ndarray) -> np.ndarray:
    """Grey user-interface fills (the panels of a software screen around the image): windows where
    nearly every pixel equals its right and lower neighbours exactly, at a grey level. Smoothed or
    video-compressed speckle varies by a level or two even where it looks flat; a drawn fill does not.
    Widened over the few pixels where the window meets the image, never into the speckle core."""
    share = cv2.blur(_flat(small, tol=0), (7, 7), borderType=cv2.BORDER_REFLECT)
    fill = (share >= FILL_SAME) & (small > LIT_LEVEL) & (small < WHITE_LEVEL)
    white = (share >= FILL_SAME) & (small >= WHITE_LEVEL)
    if white.any():  # a white page or light theme (not a clipped reflector): no lit path between panels
        n, labels, stats = components(white, connectivity=4)
        big = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= WHITE_FILL * small.size)
        fill |= np.isin(labels, big[big > 0])
    return cv2.dilate(fill.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0


def _core(small: np.ndarray) -> np.ndarray:
    """Densely lit, textured, thick regions (speckle); text and tick strokes are sparse or thin."""
    dense = (small > CORE_LEVEL).astype(np.uint8)
    density = cv2.blur(dense.astype(np.float32), (7, 7), borderType=cv2.BORDER_CONSTANT)
    core = density > CORE_MIN_DENSITY
    # The window also spans the black gap between a text line and the image; cut such gaps out.
    core &= cv2.morphologyEx(dense, cv2.MORPH_CLOSE, SQUARE3) > 0
    # Speckle is textured; flat fills (toolbars, buttons, bars of UI, a frozen blank field) are not.
    f = small.astype(np.float32)
    mean = cv2.blur(f, (5, 5), borderType=cv2.BORDER_REFLECT)
    var = cv2.blur(f * f, (5, 5), borderType=cv2.BORDER_REFLECT) - mean * mean
    core &= var > CORE_MIN_STD**2
    # User-interface bars are flat fills with glyphs on them: most pixels equal their neighbours.
    core &= cv2.blur(_flat(small), (7, 7), borderType=cv2.BORDER_REFLECT) < CORE_MAX_FLAT
    return cv2.morphologyEx(core.astype(np.uint8), cv2.MORPH_OPEN, SQUARE5) > 0


def _pieces(core: np.ndarray, lit: np.ndarray, moving: np.ndarray | None) -> np.ndarray:
    """The core pieces that belong to the image (module doc, step 2)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(core.astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros_like(core)
    sizes = stats[:, cv2.CC_STAT_AREA].copy()
    sizes[0] = 0
    if moving is not None:
        moves = np.bincount(labels.ravel(), weights=moving.ravel(), minlength=n) >= PIECE_MIN_MOVING * np.maximum(
            sizes, 1
        )
        if moves[1:].any() and not moves[1:].all():
            return np.isin(labels, _moving_pieces(stats, sizes, moves))
    big = int(np.argmax(sizes))
    keep = [k for k in range(1, n) if sizes[k] >= PIECE_MIN_SHARE * sizes[big]]
    if len(keep) > 1:
        # A black gap (not fluid, which holds noise) separates the image from panels beside it.
        bridged = cv2.morphologyEx(lit.astype(np.uint8), cv2.MORPH_CLOSE, SQUARE3) > 0
        joined = cv2.connectedComponents((bridged | core).astype(np.uint8), connectivity=4)[1]
        main = joined[labels == big][0]
        keep = [k for k in keep if k == big or (joined[labels == k] == main).any() or _in_columns(stats, k, big)]
    return np.isin(labels, keep)


def _moving_pieces(stats: np.ndarray, sizes: np.ndarray, moves: np.ndarray) -> list[int]:
    """A clip: the pieces that change (sonocrop's cue: what never changes is user interface), and the
    still ones spanning their columns (the near-field bands of a probe in air are still too)."""
    big = int(np.argmax(np.where(moves, sizes, 0)))
    cand = [k for k in range(1, len(sizes)) if sizes[k] >= PIECE_MIN_SHARE * sizes[big]]
    moving = [k for k in cand if moves[k]]
    x0 = min(int(stats[k, 0]) for k in moving)
    x1 = max(int(stats[k, 0] + stats[k, 2]) for k in moving)

    def spans(k: int) -> bool:
        x, w = int(stats[k, 0]), int(stats[k, 2])
        overlap = max(0, min(x + w, x1) - max(x, x0))
        return overlap >= PIECE_COLUMNS * w and w >= PIECE_COLUMNS * (x1 - x0)

    return moving + [k for k in cand if not moves[k] and spans(k)]


def _in_columns(stats: np.ndarray, k: int, big: int) -> bool:
    """A piece across a black band within the main piece's columns: tall, above it and as wide (the
    near-field bands of a probe in air), or below it with the same side edges and nothing beside it (a
    linear image that a vessel or a cyst crosses from side to side); a text line or a header bar is
    narrower or wider, and a toolbar, an ECG or an M-mode strip under the image does not share both
    its edges or goes on beside it."""
    x, y, w, h = (int(v) for v in stats[k, :4])
    bx, by, bw, bh = (int(v) for v in stats[big, :4])
    overlap = max(0, min(x + w, bx + bw) - max(x, bx))
    if overlap < PIECE_COLUMNS * w:
        return False
    if h >= 0.25 * w or (y + h <= by and overlap >= PIECE_COLUMNS * bw):
        return True
    tol = max(2, int(PIECE_EDGES * bw))
    if y < by + bh or abs(x - bx) > tol or abs(x + w - bx - bw) > tol:
        return False
    xs, ys, ws, hs = (stats[1:, i].astype(int) for i in range(4))
    beside = (ys < y + h) & (ys + hs > y) & ((xs + ws <= bx) | (xs >= bx + bw))
    return not beside.any()


def _grow(core: np.ndarray, small: np.ndarray, lit: np.ndarray) -> np.ndarray:
    """Grow back into sparsely lit, dim tissue (an attenuated far field) that touches the core; burned-in
    text and ticks are bright, so they cannot serve as a bridge, nor their JPEG halo."""
    bright_outside = ((small >= DIM_LEVEL) & ~core).astype(np.uint8)
    dim = lit & ~(cv2.dilate(bright_outside, np.ones((9, 9), np.uint8)) > 0)
    lit_closed = (cv2.morphologyEx(dim.astype(np.uint8), cv2.MORPH_CLOSE, SQUARE3) > 0) | core
    _, lab = cv2.connectedComponents(lit_closed.astype(np.uint8), connectivity=4)
    ids = np.unique(lab[core])
    region = np.isin(lab, ids[ids > 0])
    # Restrict the growth to a band around the core so overlays reached through it stay out.
    side = 2 * (WORK_SIDE // 5) + 1
    return region & (cv2.dilate(core.astype(np.uint8), np.ones((side, side), np.uint8)) > 0)


def convex_hull(region: np.ndarray) -> np.ndarray:
    """The filled convex hull of a mask (of its outer contours' points: the same hull, far fewer points)."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = np.zeros(region.shape, np.uint8)
    if contours:
        cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate(contours)), 1)
    return hull > 0


def find_scan_area(
    small: np.ndarray, step: int, lit_full: np.ndarray | None, shape: tuple[int, int], moving: np.ndarray | None = None
) -> ScanArea:
    """The scan area from a working copy (``small``, every ``step``-th pixel of a frame of ``shape``).

    ``lit_full(y0, y1, x0, x1)`` gives the lit pixels of a full-resolution box (the coarse box is
    tightened to them); ``moving`` marks the working pixels that change across a clip."""
    bars = _bars(small)
    raw_core = _core(small) & ~bars
    lit = (small > LIT_LEVEL) & ~bars & ~(_fills(small) & ~raw_core)
    core = _pieces(raw_core, lit, moving)
    if not core.any():
        return _empty(shape, step, small.shape)
    # One working pixel wider: the core's opening and the subsampling lose the image's last pixels
    # (the box is then tightened to the lit pixels, so the black surround added here goes again).
    hull = cv2.dilate(convex_hull(_grow(core, small, lit)).astype(np.uint8), SQUARE3) > 0
    rows, cols = np.flatnonzero(hull.any(1)), np.flatnonzero(hull.any(0))
    h, w = shape
    # Coarse box, then tightened to pixels lit at full resolution (the upsampled edge is a staircase).
    y0, y1 = rows[0] * step, min(h, (rows[-1] + 1) * step)
    x0, x1 = cols[0] * step, min(w, (cols[-1] + 1) * step)
    area = ScanArea(hull, step, shape, (int(x0), int(y0), int(x1), int(y1)))
    lit_box = area.mask_in_bbox() & lit_full(y0, y1, x0, x1)
    ys, xs = np.flatnonzero(lit_box.any(1)), np.flatnonzero(lit_box.any(0))
    if ys.size == 0:
        return _empty(shape, step, small.shape)
    area.bbox = (int(x0 + xs[0]), int(y0 + ys[0]), int(x0 + xs[-1] + 1), int(y0 + ys[-1] + 1))
    return area


def detect_scan_area(gray: np.ndarray, rgb: np.ndarray | None = None) -> ScanArea:
    """Scan-area mask and bounding box of a grayscale uint8 frame (empty bbox when none).

    With ``rgb`` (the colour frame ``gray`` came from), coloured pixels are not evidence of a scan
    area: coloured UI (header bars, icons, ECG traces) stays out of the crop, while a colour-Doppler
    box lies inside the grey tissue around it and so inside the hull.
    """
    small, step = working_copy(gray, rgb)
    return find_scan_area(small, step, lambda y0, y1, x0, x1: gray[y0:y1, x0:x1] > LIT_LEVEL, gray.shape)


def outside_zeroed(gray: np.ndarray, region: tuple[int, int, int, int] | None) -> np.ndarray:
    """``gray`` with everything outside ``region`` set to 0 (the frame itself when there is none)."""
    if region is None:
        return gray
    x0, y0, x1, y1 = region
    out = np.zeros_like(gray)
    out[y0:y1, x0:x1] = gray[y0:y1, x0:x1]
    return out


def loose_region(region: tuple[int, int, int, int], shape: tuple[int, ...]) -> bool:
    """A region covering ``LOOSE_REGION`` of the frame or more holds the screen's user interface too
    (some devices give the whole screen but its header); a smaller one is where the image is."""
    x0, y0, x1, y1 = region
    return (x1 - x0) * (y1 - y0) >= LOOSE_REGION * shape[0] * shape[1]


def within_region(area: ScanArea, region: tuple[int, int, int, int], gray: np.ndarray) -> ScanArea:
    """The scan area given a DICOM region: the region itself, unless it is loose (:func:`loose_region`);
    then the area found inside it (the region itself when that area fills it, or none was found)."""
    if not loose_region(region, gray.shape):
        return region_area(gray, region)
    x0, y0, x1, y1 = region
    a0, b0, a1, b1 = area.bbox
    inside = max(0, min(a1, x1) - max(a0, x0)) * max(0, min(b1, y1) - max(b0, y0))
    if not area.small_mask.any() or inside >= REGION_FILL * (x1 - x0) * (y1 - y0):
        return region_area(gray, region)
    return area


def frame_scan_area(
    gray: np.ndarray, rgb: np.ndarray | None = None, region: tuple[int, int, int, int] | None = None
) -> ScanArea:
    """The scan area of one frame: the DICOM ``region`` when the file gives one (:func:`within_region`),
    otherwise the heuristic."""
    if region is not None and not loose_region(region, gray.shape):
        return region_area(gray, region)
    area = detect_scan_area(outside_zeroed(gray, region), rgb)
    return area if region is None else within_region(area, region, gray)


def crop_to_scan_area(gray: np.ndarray, area: ScanArea) -> np.ndarray:
    """Crop to the scan area's bounding box and blank everything outside the scan area."""
    x0, y0, x1, y1 = area.bbox
    out = gray[y0:y1, x0:x1].copy()
    out[~area.mask_in_bbox()] = 0
    return out
