"""Annotations inside the scan area: find the marks a scanner or a reader drew, and remove them.

Marks -- calipers (``+``, ``x``), dotted measurement lines, text, arrows, body marks and other
drawn lines -- are strokes one to three pixels wide, drawn in one colour (white, grey, yellow,
green, cyan...) over the speckle. Speckle and tissue are band-limited by the imaging system, so
neither has strokes that thin, that bright against their surround and that regular in shape.
Detection, in the crop at the native resolution (thresholds in :mod:`shards.thresholds`):

1. stroke pixels: a white top-hat (the pixel minus the 5x5 opening) of at least
   ``MARK_CONTRAST`` at a grey level of at least ``MARK_LEVEL`` (thin and bright), kept where they
   are in their piece's one drawing colour or brighter (speckle and tissue touching a mark, darker
   than it, are peeled off; a stroke's own overshoot and highlights stay on it), or a
   colour off the frame's grey-to-colour map (:func:`shards.tint.residual_colour`: B-mode is
   grey);
2. their connected pieces are told apart by shape (:mod:`shards.mark_shapes`): a cross is a
   caliper, a closed outline a body mark, a long thin stroke a line or an arrow (a head at one
   end), glyphs side by side on one baseline text, and small dots evenly spaced along a line a
   dotted line. Pieces that are none of these (speckle grains, tissue edges) are not marks, nor is
   a short faint line running with the tissue's grain (a fibre), nor a line at a level the tissue
   itself reaches that stands little above it (a saturated fascia: :mod:`shards.grain`);
3. text and arrows are looked for again among the grey stroke pieces before peeling: an anti-aliased
   font or arrow spreads its edges over many grey levels, and peeling breaks it into bits (read as
   dots or nothing). Unpeeled, each glyph must be at most ``GLYPH_ASPECT`` as wide as tall and stand
   ``TEXT_CLEAR_STEP`` above their surround (a bright fascia broken into streaks is neither), and an
   arrow stand as clear, its head at one end of a straight shaft (a bright line without one may be
   a pleura or a needle: it must be found in one colour, step 2);
4. calipers drawn too faint for step 1 (a light grey ``+`` or ``x``, or one blurred by an enlarged
   crop) are looked for by their shape alone: four arms at right angles, each brighter along its
   whole length than the tissue on both its sides (:mod:`shards.faint_calipers`).

A line or dotted line running along the scan area's edge (``EDGE_SHARE`` of its pixels within 2 px
of it) is the image's outline, and a level one in the top ``FACE_ZONE`` of the depth is the skin or
transducer-face echo: neither is a mark. Nor is a device's scale: a level or plumb line or arrow
within ``EDGE_BAND`` of the crop's short side from the edge (a ruler; its ticks make arrowheads),
or ``TICKS_MIN`` or more short lines of a like length standing on one border (its ticks). Each
mark is a kind and a box; ``inpaint`` fills the mark pixels (grown by ``MARK_GROW`` to take the halo
of anti-aliasing and compression) with OpenCV's Telea inpainting.

A frame whose short side is under ``MARK_MIN_FRAME`` (EchoNet-Dynamic's 112 px clips, thumbnails)
was resampled far below its screen's size: its marks shrank below the sizes above and its anatomy
(a skull's arc, a valve, the near field) took them, so only coloured marks are looked for there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from shards.components import components
from shards.faint_calipers import faint_calipers
from shards.grain import bright_streaks, is_fibre
from shards.mark_shapes import Piece, find_marks, find_text, glyph_sized, line_kind, middle
from shards.thresholds import (
    BLACK_LEVEL,
    BODY_MARK_MAX,
    EDGE_BAND,
    EDGE_SHARE,
    FACE_ZONE,
    GLYPH_ASPECT,
    GLYPH_STEP,
    INPAINT_RADIUS,
    LINE_MIN,
    MARK_CONTRAST,
    MARK_GROW,
    MARK_LEVEL,
    MARK_MIN_FRAME,
    PLATEAU_TOL,
    RULER_ASPECT,
    STROKE_WIDTH,
    TEXT_CLEAR_STEP,
    TEXT_MIN_GLYPHS,
    TICKS_MIN,
)

KINDS = ("caliper", "dotted_line", "text", "arrow", "body_mark", "line")


@dataclass
class Mark:
    kind: str  # one of KINDS
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in the image it was found in
    mask: np.ndarray  # bool, the box's size: the mark's pixels


def white_tophat(gray: np.ndarray) -> np.ndarray:
    """Each pixel minus the opening of its 5x5 square: what stands out of the surround in strokes
    narrower than 5 pixels."""
    return cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, np.ones((5, 5), np.uint8))


def stroke_pixels(gray: np.ndarray, mask: np.ndarray, tophat: np.ndarray | None = None) -> np.ndarray:
    """Thin bright pixels inside ``mask`` (step 1 of the module doc; the coloured ones come apart)."""
    tophat = white_tophat(gray) if tophat is None else tophat
    return (tophat >= MARK_CONTRAST) & (gray >= MARK_LEVEL) & mask


def _step(gray: np.ndarray, mask: np.ndarray, labels: np.ndarray, k: int, box: tuple[int, int, int, int]) -> float:
    """Piece ``k``'s middle grey level minus that of the ring just outside it (its pixels whose 3x3
    neighbourhood's highest label is ``k``), or 0 without a ring. A drawn stroke stands on the
    tissue as a step; a bright tissue streak fades into its surround. Measured in the piece's box
    grown by 2 pixels (the ring lies within 1), so its cost follows the piece, not the frame."""
    x0, y0, x1, y1 = box
    h, w = labels.shape
    ys, xs = slice(max(y0 - 2, 0), min(y1 + 2, h)), slice(max(x0 - 2, 0), min(x1 + 2, w))
    lab, g = labels[ys, xs], gray[ys, xs]
    ring = cv2.dilate(lab.astype(np.float32), np.ones((3, 3), np.uint8)) == k
    ring &= (lab == 0) & mask[ys, xs]
    if not ring.any():
        return 0.0
    return float(middle(g[lab == k]) - middle(g[ring]))


def peel(strokes: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """Stroke pixels at their piece's drawing colour or brighter: a mark is drawn in one grey level
    (its piece's most common one, within ``PLATEAU_TOL``); speckle touching it is darker. Pixels
    above that level stay: JPEG overshoot and anti-aliasing highlights brighten a white stroke
    where its arms meet, and peeling them cut letters and caliper arms apart (BUSI's "RT": a T in
    two pieces; 9 of 45 downsized BUSI caliper frames)."""
    n, labels = cv2.connectedComponents(strokes.astype(np.uint8), connectivity=8)
    if n <= 1:
        return strokes
    lab, val = labels[strokes], gray[strokes].astype(np.int64)
    hist = np.bincount(lab * 256 + val, minlength=n * 256).reshape(n, 256)
    # each level's count summed over +-PLATEAU_TOL levels (a box filter along every row at once)
    t = PLATEAU_TOL
    run = np.cumsum(np.pad(hist, ((0, 0), (t + 1, t))), axis=1)
    mode = (run[:, 2 * t + 1 :] - run[:, : -2 * t - 1]).argmax(axis=1)
    keep = val >= mode[lab] - PLATEAU_TOL
    out = np.zeros_like(strokes)
    out[strokes] = keep
    return out


def _pieces(
    strokes: np.ndarray,
    col: np.ndarray,
    gray: np.ndarray,
    mask: np.ndarray,
    sized: Callable[[int, int], bool] | None = None,
) -> list[Piece]:
    """The connected pieces of ``strokes``, the coloured and the grey apart (a coloured mark over bright
    tissue would take in the tissue's bright pixels touching it); only those whose box ``sized(w, h)``
    accepts, when given."""
    grey = _labelled(strokes & ~col, col, gray, mask, sized)
    return grey + _labelled(strokes & col, col, gray, mask, sized) if col.any() else grey


def _labelled(
    strokes: np.ndarray,
    col: np.ndarray,
    gray: np.ndarray,
    mask: np.ndarray,
    sized: Callable[[int, int], bool] | None,
    among: np.ndarray | None = None,
) -> list[Piece]:
    """The pieces of ``strokes`` (those ``sized`` accepts; holding a pixel of ``among``, when given)."""
    n, labels, stats = components(strokes)
    hit = None if among is None else np.bincount(labels[among & strokes], minlength=n) > 0
    pieces = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if (sized is not None and not sized(w, h)) or (hit is not None and not hit[k]):
            continue
        box = (x, y, x + w, y + h)
        comp = labels[y : y + h, x : x + w] == k
        values = gray[y : y + h, x : x + w][comp]
        coloured = int(col[y : y + h, x : x + w][comp].sum()) >= 0.5 * area
        pieces.append(Piece(k, box, area, comp, values, coloured, _step(gray, mask, labels, k, box)))
    return pieces


def grey_searched(frame_shape: tuple[int, ...]) -> bool:
    """Whether grey marks are looked for in a frame of this shape (``MARK_MIN_FRAME``: the module doc)."""
    return min(frame_shape[:2]) >= MARK_MIN_FRAME


def detect_marks(gray: np.ndarray, mask: np.ndarray, col: np.ndarray | None = None, grey: bool = True) -> list[Mark]:
    """The marks inside ``mask`` of a grayscale image; ``col``: its coloured pixels
    (:func:`shards.tint.residual_colour`), when it came from a colour frame. ``grey=False``: the
    coloured marks only (a frame resampled far below its screen's size: ``MARK_MIN_FRAME``)."""
    col = np.zeros(mask.shape, bool) if col is None else col & mask
    if grey:
        tophat = white_tophat(gray)
        marks = _stroke_marks(stroke_pixels(gray, mask, tophat), col, gray, mask)
        marks += [
            Mark("caliper", box, m)
            for box, m in faint_calipers(gray, mask, tophat)
            if not any(_overlap(t.box, box) for t in marks)
        ]
    else:
        marks = _stroke_marks(np.zeros(mask.shape, bool), col, gray, mask) if col.any() else []
    if not any(m.kind in ("line", "dotted_line", "arrow") for m in marks):
        return marks  # most frames: no line to check, no erosion of the whole crop
    return _without_outlines(marks, mask, gray)


def _stroke_marks(raw: np.ndarray, col: np.ndarray, gray: np.ndarray, mask: np.ndarray) -> list[Mark]:
    """The marks made of stroke pixels ``raw`` (steps 1-3 of the module doc)."""
    strokes = peel(raw, gray) | col
    if not strokes.any():
        return []
    # Every kind of mark is made of drawn pieces only (coloured, or a step above their surround), so
    # the speckle grains among the pieces are left out before the shapes are compared; the glyphs of
    # text may stand a little lower as a group (mark_shapes.text_groups).
    drawn = [p for p in _pieces(strokes, col, gray, mask) if p.drawn or p.step >= GLYPH_STEP]
    # a short faint streak running with the tissue's grain is a fibre, and a line no brighter than the
    # tissue standing little above it a saturated fascia, not a drawn line (shards.grain)
    streaks = bright_streaks(drawn, gray, mask, raw)
    drawn = [p for p in drawn if id(p) not in streaks and not is_fibre(gray, mask, p)]
    marks = [Mark(kind, box, m) for kind, box, m in find_marks(drawn)]
    return _unpeeled(raw & ~col, strokes, col, gray, mask, marks)


def _footprint(black: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The pieces of ``black`` (inside ``mask``) that reach the mask's top: the footprint of an
    endocavity probe, whose concave face the convex hull closes over. Their border is the transducer
    face; a black cyst lies deeper, under tissue."""
    top = np.zeros(mask.shape, bool)
    cols = np.flatnonzero(mask.any(axis=0))
    top[mask[:, cols].argmax(axis=0), cols] = True
    return _reaching(black, top)


def _reaching(pixels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The connected pieces of ``pixels`` holding a pixel of ``seeds``."""
    if not (pixels & seeds).any():
        return np.zeros(pixels.shape, bool)
    n, labels = cv2.connectedComponents(pixels.astype(np.uint8), connectivity=4)
    hit = np.zeros(n, bool)
    hit[labels[pixels & seeds]] = True
    hit[0] = False
    return hit[labels]


def _without_outlines(marks: list[Mark], mask: np.ndarray, gray: np.ndarray) -> list[Mark]:
    """``marks`` less the lines that are the scan area's outline, the skin echo or a device's scale."""
    # A line along the scan area's edge is its outline (a sector's side, the transducer face), not a
    # mark; the crop's border is an edge too (zero padding: erosion's default border keeps the mask).
    # A level line or arrow a little further in is a device's ruler (its ticks make the arrowheads).
    depth = _edge_depth(mask)
    band = max(2, int(EDGE_BAND * min(mask.shape)))
    edge, ruler = mask & (depth <= 2), mask & (depth <= band)
    face = _face_zone(mask)
    ticks = _ticks(marks, mask.shape, band)

    def outline(i: int, m: Mark, edge: np.ndarray) -> bool:
        if m.kind not in ("line", "dotted_line", "arrow"):
            return False
        return (m.kind != "arrow" and (_along(edge, m) or _at_face(face, m) or i in ticks)) or (
            _straight(m) and _along(ruler, m)
        )

    keep = [(i, m) for i, m in enumerate(marks) if not outline(i, m, edge)]
    if not any(m.kind in ("line", "dotted_line") for _, m in keep):
        return [m for _, m in keep]
    # The image's own edge lies inside the mask where black reaches the mask's edge: the margin the
    # working resolution adds round a sector's rim (a few pixels), and the footprint of an endocavity
    # probe (its face echo follows the arc, as deep as a flat face's zone).
    black = mask & (cv2.medianBlur(gray, 5) <= BLACK_LEVEL)
    for out, zone in (
        (_reaching(black & (depth <= band), depth <= 1), 2),
        (_footprint(black, mask), max(4, int(FACE_ZONE * mask.shape[0]))),
    ):
        if out.any():
            near = cv2.dilate(out.astype(np.uint8), np.ones((2 * zone + 1, 2 * zone + 1), np.uint8)) > 0
            edge = edge | (mask & ~out & near)
    return [m for i, m in keep if not outline(i, m, edge)]


def _unpeeled(
    grey: np.ndarray, peeled: np.ndarray, col: np.ndarray, gray: np.ndarray, mask: np.ndarray, marks: list[Mark]
) -> list[Mark]:
    """``marks`` with the text and arrows found among the grey stroke pieces before peeling (``grey``).
    An anti-aliased font (most scanners' today) or arrow spreads its edges over many grey levels and
    peeling breaks it into bits, which may have been read as other marks; unpeeled, each glyph or
    arrow is one piece again. A mark already found stays as it was. Coloured pieces are never
    peeled: the first pass saw them whole."""
    if not (grey & ~peeled).any():
        return marks  # nothing was peeled: the first pass saw these very pieces
    # held to more than a peeled glyph: a glyph or two wide, standing clear of the tissue (a bright
    # fascia broken into a row of streaks is neither)
    pieces = [p for p in _labelled(grey, col, gray, mask, _narrow_glyph) if p.step >= TEXT_CLEAR_STEP]
    found = find_text(pieces) if len(pieces) >= TEXT_MIN_GLYPHS else []
    # an anti-aliased arrow comes apart the same way (its shaft in dashes, its head in bits); whole,
    # standing as clear of the tissue, its head at one end of a straight shaft says it is drawn
    for p in _labelled(grey, col, gray, mask, _line_sized, among=grey & ~peeled):  # pieces peeling broke
        if p.step >= TEXT_CLEAR_STEP and line_kind(p, anti_aliased=True) == "arrow":
            found.append(("arrow", *_whole(p)))
    for kind, box, m in found:
        if any((t.kind == kind and _overlap(t.box, box)) or _inside(box, t.box) for t in marks):
            continue  # found already, or a part of a mark found (a letter of a line of text)
        marks = [t for t in marks if not _inside(t.box, box)] + [Mark(kind, box, m)]
    return marks


def _line_sized(w: int, h: int) -> bool:
    return bool(np.hypot(w, h) >= LINE_MIN) and max(w, h) <= 4 * BODY_MARK_MAX


def _whole(p: Piece) -> tuple[tuple[int, int, int, int], np.ndarray]:
    return p.box, p.comp


def _narrow_glyph(w: int, h: int) -> bool:
    return glyph_sized(w, h) and w <= GLYPH_ASPECT * h


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]


def _edge_depth(mask: np.ndarray) -> np.ndarray:
    """Per pixel of ``mask``, how many pixels in from its edge or the image's border (chessboard
    distance: ``<= b`` is what a ``(2b+1)`` square erosion removes), one pass for every band."""
    padded = np.pad(mask, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_C, 3)[1:-1, 1:-1]


def _straight(m: Mark) -> bool:
    """Level or plumb: a ruler along the border (a measurement line across the image is drawn anywhere)."""
    x0, y0, x1, y1 = m.box
    w, h = x1 - x0, y1 - y0
    return max(w, h) >= RULER_ASPECT * max(1, min(w, h))


def _ticks(marks: list[Mark], shape: tuple[int, int], band: int) -> set[int]:
    """Short lines standing on one border of the crop (starting within ``band`` pixels of it), at
    least ``TICKS_MIN`` of a like length: the ticks of a device's scale (a caliper's arm or a cut
    label stands there alone)."""
    h, w = shape
    sides: dict[str, list[tuple[int, int]]] = {}
    for i, m in enumerate(marks):
        x0, y0, x1, y1 = m.box
        if m.kind != "line":
            continue
        for side, touches, length, across in (
            ("top", y0 <= band, y1 - y0, x1 - x0),
            ("bottom", y1 >= h - band, y1 - y0, x1 - x0),
            ("left", x0 <= band, x1 - x0, y1 - y0),
            ("right", x1 >= w - band, x1 - x0, y1 - y0),
        ):
            if touches and length > across:
                sides.setdefault(side, []).append((i, length))
    out: set[int] = set()
    for row in sides.values():
        lengths = sorted(n for _, n in row)
        if len(row) >= TICKS_MIN and lengths[-1] <= 2 * lengths[len(lengths) // 2]:
            out |= {i for i, _ in row}
    return out


def _along(edge: np.ndarray, m: Mark) -> bool:
    x0, y0, x1, y1 = m.box
    return int((edge[y0:y1, x0:x1] & m.mask).sum()) >= EDGE_SHARE * int(m.mask.sum())


def _face_zone(mask: np.ndarray) -> np.ndarray:
    """Per column, the last row of the transducer-face zone: the scan area's top row at that column
    plus ``FACE_ZONE`` of its depth (at least 4 px); -1 where the column is outside the area."""
    rows = mask.any(axis=0)
    top = np.where(rows, mask.argmax(axis=0), -1)
    return np.where(rows, top + max(4, int(FACE_ZONE * mask.shape[0])), -1)


def _at_face(face: np.ndarray, m: Mark) -> bool:
    """A level line in the face zone is the skin or transducer-face echo (a linear array's first
    bright row), as straight and thin as a drawn line; measurement lines lie deeper."""
    x0, y0, x1, y1 = m.box
    return y1 - y0 <= STROKE_WIDTH and x1 - x0 > y1 - y0 and float(np.mean(y1 - 1 <= face[x0:x1])) >= 0.8


def marks_mask(shape: tuple[int, int], marks: list[Mark], grow: int = MARK_GROW) -> np.ndarray:
    """The pixels of ``marks`` in an image of ``shape``, grown by ``grow`` pixels."""
    out = np.zeros(shape, np.uint8)
    for m in marks:
        x0, y0, x1, y1 = m.box
        out[y0:y1, x0:x1] |= m.mask.astype(np.uint8)
    if grow > 0:
        out = cv2.dilate(out, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return out > 0


def inpaint(gray: np.ndarray, marks: list[Mark]) -> np.ndarray:
    """``gray`` with the marks' pixels filled from their surround (OpenCV's Telea inpainting)."""
    if not marks:
        return gray
    holes = marks_mask(gray.shape, marks).astype(np.uint8)
    return cv2.inpaint(gray, holes, INPAINT_RADIUS, cv2.INPAINT_TELEA)
