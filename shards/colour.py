"""The colour rule: colour Doppler is a filled coloured area over tissue; annotations are strokes.

Measured in the scan area at the native resolution (docs/data.md "Cleaning rules"; thresholds in
:mod:`shards.thresholds`):

1. *coloured* pixels: the channel spread of a pixel's colour is above ``CHROMA``; in a tinted
   frame (B-mode shown through a colour map, :mod:`shards.tint`) the pixels off the frame's own
   grey-to-colour map, so the tint is grey while Doppler and coloured marks stand out (and grey
   marks where the map gives colour, for the annotation finder; flow is judged on coloured ones);
2. *filled* areas: coloured pixels surviving a 3x3 opening -- text, calipers, dotted and drawn
   lines, box outlines are strokes one or two pixels wide and vanish;
3. *flow*: a filled area whose colours span a colour map -- hue spread above ``FLOW_HUE_SPREAD``
   degrees with brightness varying too (value spread above ``FLOW_MAP_VALUE_SPREAD``) or hues
   running unbroken over ``FLOW_HUE_RUN`` degrees (:func:`_hue_run`: an aliased jet), or mostly
   red/orange or blue hues graded in brightness (value spread above ``FLOW_VALUE_SPREAD``: a
   velocity or power map) -- or any filled area covering ``FLOW_LARGE`` of the scan area (it hides
   the tissue). A filled area of one flat colour, or two touching (a red and a yellow trace), is
   a mark (an arrowhead, an icon, a caliper dot), and a mark never rejects a frame; so are the
   words of one line of bold text (:func:`text_words`), and a filled area at the top of the scan
   area (``BADGE_TOP``) or on its edge ringed by the display's black (:func:`_on_black`): a mode
   badge, a legend or a maker's logo the interface draws beside the image (Butterfly's blue "B"
   disc, EchoNous Kosmos's orange logo by the sector's apex), where flow lies over tissue (even on
   the edge: a colour box at the top of the tissue, the scan area found ending at it). A drawn
   outline is a mark too (:func:`is_stroke`: at most ``CONTOUR_WIDTH`` px wide, ``CONTOUR_LENGTH``
   widths long, one curve going round a region).

``colour_fraction`` is the share of the scan area's lit pixels that are flow; above
``COLOUR_FLOW`` the frame is ``colour``. ``colour_outside`` keeps the rule for what a Doppler screen
shows beside the image -- its velocity-scale legend, a colour M-mode panel (coloured textured pixels
outside the scan area, in blobs whose hues span a map: at least ``OUTSIDE_HUE_SPREAD``, over more
than ``COLOUR_OUTSIDE`` of the frame); the interface's coloured text and logos, one hue blended
with their bar or the black around them, are graded in brightness like a map but never in hue. Written here because
no library tells Doppler from annotations; OpenCV gives the colour space, morphology and components.
"""

from __future__ import annotations

import cv2
import numpy as np

from shards.components import components
from shards.decode import to_gray
from shards.scan_area import ScanArea
from shards.thresholds import (
    BADGE_BLACK,
    BADGE_BLACK_SHARE,
    BADGE_RING,
    BADGE_TOP,
    CHROMA,
    COLOUR_FLOW,
    COLOUR_LIT_LEVEL,
    COLOUR_OUTSIDE,
    COLOUR_TEXT_ALIGN,
    COLOUR_TEXT_GAP,
    COLOUR_TEXT_HEIGHT,
    COLOUR_TEXT_SIZES,
    COLOUR_TEXT_WORD,
    CONTOUR_CHORD,
    CONTOUR_ENDS,
    CONTOUR_LENGTH,
    CONTOUR_WIDTH,
    FLOW_HUE_BIN,
    FLOW_HUE_BIN_SHARE,
    FLOW_HUE_RUN,
    FLOW_HUE_SPREAD,
    FLOW_HUES,
    FLOW_LARGE,
    FLOW_MAP_VALUE_SPREAD,
    FLOW_MIN_PIXELS,
    FLOW_SATURATION,
    FLOW_VALUE_SPREAD,
    OUTSIDE_COLOUR_SHARE,
    OUTSIDE_HUE_SPREAD,
    OUTSIDE_TEXTURE_STD,
)
from shards.tint import coloured, hue_spread, off_map, residual_colour, tint_map

SQUARE3 = np.ones((3, 3), np.uint8)


def colour_fraction(rgb: np.ndarray) -> float:
    """Fraction of non-black pixels whose channels differ by more than ``CHROMA`` levels."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    hi = np.maximum(np.maximum(r, g), b)
    lo = np.minimum(np.minimum(r, g), b)
    lit = hi > COLOUR_LIT_LEVEL
    n = int(np.count_nonzero(lit))
    return float(np.count_nonzero((hi - lo > CHROMA) & lit) / n) if n else 0.0


def _is_flow(hue: np.ndarray, value: np.ndarray) -> bool:
    """One filled coloured area (its saturated inner pixels): a colour map (flow) or one flat colour
    (a mark)? (step 3)."""
    if hue.size < FLOW_MIN_PIXELS:
        return False
    spread = float(np.percentile(value, 90) - np.percentile(value, 10))
    if hue_spread(hue) > FLOW_HUE_SPREAD and (spread > FLOW_MAP_VALUE_SPREAD or _hue_run(hue) >= FLOW_HUE_RUN):
        return True
    in_map = np.zeros(hue.shape, bool)
    for lo, hi in FLOW_HUES:
        in_map |= (hue >= lo) & (hue <= hi) if lo <= hi else (hue >= lo) | (hue <= hi)
    return bool(in_map.mean() >= 0.5 and spread > FLOW_VALUE_SPREAD)


def is_stroke(comp: np.ndarray) -> bool:
    """Is the filled piece ``comp`` (bool, its box) a drawn outline -- thicker than the opening, long
    and thin, one curve round a region -- rather than flow? Width ``2 x area / perimeter`` (holes'
    rims counted: a closed outline), length ``perimeter / 2``; one curve: its skeleton ends at most
    ``CONTOUR_ENDS`` times (a tree of thin vessels ends at every branch); round a region: closed, or
    its farthest ends at most ``CONTOUR_CHORD`` of its length apart (a vessel runs on)."""
    contours, _ = cv2.findContours(comp.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    if perimeter <= 0:
        return False
    width = 2.0 * float(np.count_nonzero(comp)) / perimeter
    if width > CONTOUR_WIDTH or perimeter / 2.0 < CONTOUR_LENGTH * max(width, 1.0):
        return False
    from skimage.morphology import skeletonize  # imported here: only a thin, long piece needs it

    skeleton = skeletonize(comp).astype(np.uint8)
    neighbours = cv2.filter2D(skeleton, -1, np.ones((3, 3), np.float32), borderType=cv2.BORDER_CONSTANT) - 1
    ys, xs = np.nonzero((neighbours == 1) & (skeleton > 0))
    if len(ys) > CONTOUR_ENDS:
        return False
    chord = max((np.hypot(ys[i] - ys[j], xs[i] - xs[j]) for i in range(len(ys)) for j in range(i)), default=0.0)
    return chord <= CONTOUR_CHORD * int(skeleton.sum())


def _hue_run(hue: np.ndarray) -> int:
    """Degrees of the longest unbroken run of hues, in ``FLOW_HUE_BIN``-degree bins each holding at
    least ``FLOW_HUE_BIN_SHARE`` of the pixels: a map graded in hue alone (an aliased jet, blue to
    cyan at full brightness) runs on; two flat marks touching (a red and a yellow trace) are two bins."""
    bins = np.bincount((hue // FLOW_HUE_BIN).astype(np.int64) % (360 // FLOW_HUE_BIN), minlength=360 // FLOW_HUE_BIN)
    held = bins >= FLOW_HUE_BIN_SHARE * hue.size
    if held.all():
        return 360
    run = best = 0
    for h in np.concatenate([held, held]):  # twice round: a run may cross 0 degrees
        run = run + 1 if h else 0
        best = max(best, run)
    return best * FLOW_HUE_BIN


def text_words(stats: np.ndarray) -> set[int]:
    """Filled pieces (``components`` stats rows) that are words of one line of bold coloured text:
    two or more of a text's height side by side on one baseline (ending on the same rows), of like
    heights (capitals beside numerals or small letters). The 3x3
    opening keeps bold glyphs, and chroma subsampling grades their colour like a flow map's."""
    lo, hi = COLOUR_TEXT_HEIGHT
    x, y, w, h = (stats[1:, i].astype(np.int64) for i in range(4))
    cand = np.flatnonzero((h >= lo) & (h <= hi) & (w <= COLOUR_TEXT_WORD * h))
    if cand.size < 2:
        return set()
    # compare each piece only with those ending within COLOUR_TEXT_ALIGN rows of it (sorted by bottom
    # row, the baseline): a Doppler frame's many speckled pieces never make an n x n table
    order = cand[np.argsort((y + h)[cand], kind="stable")]
    x, y, w, h = x[order], y[order], w[order], h[order]
    bottom = y + h
    words: set[int] = set()
    ends = np.searchsorted(bottom, bottom + COLOUR_TEXT_ALIGN, side="right")
    for i in range(order.size):
        j = np.arange(i + 1, ends[i])
        if not j.size:
            continue
        gap = np.maximum(x[j] - (x[i] + w[i]), x[i] - (x[j] + w[j]))
        ok = (np.maximum(h[i], h[j]) <= COLOUR_TEXT_SIZES * np.minimum(h[i], h[j])) & (gap >= 0)
        ok &= gap <= COLOUR_TEXT_GAP * np.maximum(h[i], h[j])
        if ok.any():
            words.update(int(k) + 1 for k in (order[i], *order[j[ok]]))
    return words


def flow_pixels(rgb: np.ndarray, col: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Pixels of filled, flow-coloured areas among the coloured pixels ``col`` (steps 2-3). Only the
    saturated pixels inside an area tell its colours (its rim blends with the tissue); an area on the
    edge of the scan area ``inside`` ringed by the display's black is the interface's (a logo, a
    legend), while one ringed by tissue is flow (a colour box at the top of the tissue)."""
    flow = np.zeros(col.shape, bool)
    if not col.any():
        return flow
    solid = cv2.morphologyEx(col.astype(np.uint8), cv2.MORPH_OPEN, SQUARE3)
    n, labels, stats = components(solid)
    if n <= 1:
        return flow
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV_FULL)
    edge = ~cv2.erode(inside.astype(np.uint8), SQUARE3, borderValue=0).astype(bool)
    words = text_words(stats[:n])
    for k in range(1, n):
        x, y, w, h = (int(v) for v in stats[k, :4])
        comp = labels[y : y + h, x : x + w] == k
        if k in words or is_stroke(comp):
            continue
        core = cv2.erode(comp.astype(np.uint8), SQUARE3, borderValue=0).astype(bool)
        px = hsv[y : y + h, x : x + w][core]
        px = px[px[:, 1] >= FLOW_SATURATION]
        large = stats[k, cv2.CC_STAT_AREA] >= FLOW_LARGE * max(int(inside.sum()), 1)
        if large or _is_flow(px[:, 0].astype(np.float32) * (360.0 / 256.0), px[:, 2].astype(np.float32)):
            on_edge = bool((comp & edge[y : y + h, x : x + w]).any())
            top = not large and y <= BADGE_TOP * rgb.shape[0]
            if (on_edge or top) and _on_black(rgb, labels, k, (x, y, w, h)):
                continue  # the interface's: a legend or logo by the scan area's edge, a badge at the top
            flow[y : y + h, x : x + w] |= comp
    return flow


def _on_black(rgb: np.ndarray, labels: np.ndarray, k: int, box: tuple[int, int, int, int]) -> bool:
    """Is filled area ``k`` ringed by the display's black (``BADGE_RING`` px around it, a share of
    ``BADGE_BLACK_SHARE`` at ``BADGE_BLACK`` or darker)? Flow over tissue is ringed by tissue."""
    x, y, w, h = box
    near, far = BADGE_RING
    ys, xs = slice(max(y - far, 0), y + h + far), slice(max(x - far, 0), x + w + far)
    piece = (labels[ys, xs] == k).astype(np.uint8)
    ring = cv2.dilate(piece, np.ones((2 * far + 1,) * 2, np.uint8)) > cv2.dilate(piece, np.ones((2 * near - 1,) * 2))
    return bool(ring.any()) and float((to_gray(rgb[ys, xs])[ring] <= BADGE_BLACK).mean()) >= BADGE_BLACK_SHARE


def area_colour(rgb: np.ndarray, area: ScanArea) -> tuple[np.ndarray, np.ndarray]:
    """(lit pixels of the scan area, its coloured pixels), both in the scan area's box."""
    x0, y0, x1, y1 = area.bbox
    box = rgb[y0:y1, x0:x1]
    lit = area.mask_in_bbox() & (np.maximum(np.maximum(box[..., 0], box[..., 1]), box[..., 2]) > COLOUR_LIT_LEVEL)
    s = area.step
    # No coloured pixel at the working resolution: nothing to look for at the native one.
    if not coloured(box[::s, ::s]).any():
        return lit, np.zeros(lit.shape, bool)
    return lit, residual_colour(box, lit, s)


def _outside(small: np.ndarray, mask: np.ndarray) -> float:
    """Share of the frame covered by flow-coloured, textured areas outside the scan area (a velocity
    legend, colour M-mode): coloured pixels whose 5x5 neighbourhood varies in grey level, opened 3x3,
    in areas whose colours are a map spanning hues (UI text on a coloured bar is one hue). In a tinted
    frame the tint is grey here too: its grey-level bar and any tissue beyond the area found are
    drawn through the same map (sepia obstetric screens: 0.3-1.6 % of the frame otherwise)."""
    col = off_map(small, tint_map(small, mask))
    g = small.astype(np.float32).mean(axis=2)
    c = col.astype(np.float32)
    wc = cv2.blur(c, (5, 5))
    m1 = cv2.blur(g * c, (5, 5)) / np.maximum(wc, 1e-6)
    m2 = cv2.blur(g * g * c, (5, 5)) / np.maximum(wc, 1e-6)
    std = np.sqrt(np.maximum(m2 - m1 * m1, 0.0))
    textured = (col & (wc > OUTSIDE_COLOUR_SHARE) & (std > OUTSIDE_TEXTURE_STD) & ~mask).astype(np.uint8)
    textured = cv2.morphologyEx(textured, cv2.MORPH_OPEN, SQUARE3)
    n, labels, stats = components(textured)
    if n <= 1:
        return 0.0
    hsv = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2HSV_FULL)
    area = 0
    for k in range(1, n):
        px = hsv[labels == k]
        px = px[px[:, 1] >= FLOW_SATURATION]
        hue = px[:, 0].astype(np.float32) * (360.0 / 256.0)
        if _is_flow(hue, px[:, 2].astype(np.float32)) and hue_spread(hue) >= OUTSIDE_HUE_SPREAD:
            area += int(stats[k, cv2.CC_STAT_AREA])
    return area / textured.size


def colour_measures(rgb: np.ndarray, area: ScanArea, lit: np.ndarray | None, col: np.ndarray | None) -> dict:
    """``colour_fraction`` (flow in the scan area) and ``colour_outside`` (see the module doc);
    ``lit`` and ``col`` as :func:`area_colour` gives them."""
    small = rgb[:: area.step, :: area.step]
    if not area.small_mask.any() or lit is None or col is None:
        return {"colour_fraction": round(colour_fraction(small), 4), "colour_outside": 0.0}
    x0, y0, x1, y1 = area.bbox
    box = rgb[y0:y1, x0:x1]
    n = int(np.count_nonzero(lit))
    # flow is coloured: a grey or pale pixel off a tinted frame's map is a drawn mark's (off_map)
    flow = int(np.count_nonzero(flow_pixels(box, col & coloured(box, CHROMA), area.mask_in_bbox()))) if n else 0
    return {
        "colour_fraction": round(flow / n, 5) if n else 0.0,
        "colour_outside": round(_outside(small, area.small_mask), 4),
    }


def is_colour(values: dict) -> bool:
    return values["colour_fraction"] > COLOUR_FLOW or values["colour_outside"] > COLOUR_OUTSIDE
