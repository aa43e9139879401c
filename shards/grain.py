"""Tissue that passes for drawn lines: fibres running with the grain, and streaks as bright as the tissue.

Muscle fascicles, aponeuroses, tendon fibres and organ capsules are thin bright streaks that, over a
short stretch, look like a drawn line: straight, thin and a step above the tissue beside them. What
gives them away is their surround: they lie in a texture of like streaks, or along one interface,
all running one way. A drawn line is laid over whatever lies beneath it, usually across it. The
grain is measured with the structure tensor of the neighbourhood (``GRAIN_WINDOW`` pixels each side
of the streak, the streak itself left out): its coherence (0 for isotropic speckle, 1 for parallel
streaks) and its direction. Only streaks short and faint enough to be tissue are judged
(``FIBRE_LEN``, ``FIBRE_STEP``); a long or bright line is drawn, whatever it runs along.
A contrast-stretched frame (a dataset's own preprocessing, a high-dynamic-range preset) saturates
its fascia: thin, straight and at the very level a white mark is drawn in, so their one colour says
nothing. There a white line (``BRIGHT_LINE_LEVEL`` or brighter) must stand out more
(``BRIGHT_LINE_STEP``) when the tissue itself reaches its level in more than ``BRIGHT_TISSUE_SHARE``
of its pixels.
Written here because no library in the stack tells a drawn stroke from a tissue streak; OpenCV
supplies the gradients.
"""

from __future__ import annotations

import cv2
import numpy as np

from shards.mark_shapes import Piece, axis_angle, hole_area, line_kind, middle
from shards.thresholds import (
    BRIGHT_LINE_LEVEL,
    BRIGHT_LINE_STEP,
    BRIGHT_TISSUE_SHARE,
    FIBRE_LEN,
    FIBRE_STEP,
    GRAIN_ANGLE,
    GRAIN_COHERENCE,
    GRAIN_WINDOW,
    PLATEAU_TOL,
)


def grain(gray: np.ndarray, mask: np.ndarray, p: Piece) -> tuple[float, float]:
    """(coherence, direction in degrees [0, 180)) of the texture around piece ``p``, the piece and
    a 4-pixel margin around it left out."""
    x0, y0, x1, y1 = p.box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    h, w = gray.shape
    r = GRAIN_WINDOW + 2  # the Sobel and blur margins
    ys, xs = slice(max(0, cy - r), min(h, cy + r)), slice(max(0, cx - r), min(w, cx + r))
    g = cv2.GaussianBlur(gray[ys, xs].astype(np.float32), (0, 0), 1.5)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    weight = mask[ys, xs].astype(np.float32)
    streak = np.zeros(weight.shape, np.uint8)
    streak[y0 - ys.start : y1 - ys.start, x0 - xs.start : x1 - xs.start] = p.comp
    weight[cv2.dilate(streak, np.ones((9, 9), np.uint8)) > 0] = 0
    jxx, jyy, jxy = (float((weight * a * b).sum()) for a, b in ((gx, gx), (gy, gy), (gx, gy)))
    if jxx + jyy <= 1e-6:
        return 0.0, 0.0
    coherence = float(np.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy))
    # the gradient's mean direction is across the streaks; the grain runs at right angles to it
    return coherence, float((np.degrees(0.5 * np.arctan2(2 * jxy, jxx - jyy)) + 90) % 180)


def is_fibre(gray: np.ndarray, mask: np.ndarray, p: Piece) -> bool:
    """A short, faint grey line in a coherent texture running its way: a tissue fibre (module doc)."""
    if p.coloured or max(p.w, p.h) >= FIBRE_LEN or p.step >= FIBRE_STEP or line_kind(p) is None:
        return False
    coherence, direction = grain(gray, mask, p)
    off = abs((direction - axis_angle(p) + 90) % 180 - 90)
    return coherence >= GRAIN_COHERENCE and off <= GRAIN_ANGLE


def tissue_reach(gray: np.ndarray, mask: np.ndarray, strokes: np.ndarray) -> np.ndarray:
    """Per grey level, the share of the tissue inside ``mask`` at that level or brighter; stroke pixels
    and the pixel around them are no tissue."""
    rim = cv2.dilate(strokes.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    hist = np.bincount(gray[mask & ~rim], minlength=256).astype(np.float64)
    return np.cumsum(hist[::-1])[::-1] / max(hist.sum(), 1.0)


def _white(p: Piece) -> int:
    """The piece's middle grey level when it is a grey stroke white enough and standing low enough to
    be a saturated fascia, else 0."""
    if p.coloured or p.step >= BRIGHT_LINE_STEP:
        return 0
    level = middle(p.values)
    return level if level >= BRIGHT_LINE_LEVEL else 0


def bright_streaks(pieces: list[Piece], gray: np.ndarray, mask: np.ndarray, strokes: np.ndarray) -> set[int]:
    """The ``id`` of each of ``pieces`` that is an open white grey line at a level the tissue itself
    reaches, standing less than ``BRIGHT_LINE_STEP`` above its surround: a saturated fascia (module
    doc). ``strokes``: the frame's stroke pixels (no tissue). The tissue's levels are counted only
    when a piece could be one."""
    white = [(p, level) for p in pieces if (level := _white(p))]
    if not white:
        return set()
    reach = tissue_reach(gray, mask, strokes)
    # a closed outline (a box, a traced ellipse) enclosing more than its own pixels is drawn; a
    # fascia's loops close round a pixel or two
    return {
        id(p)
        for p, level in white
        if reach[level - PLATEAU_TOL] >= BRIGHT_TISSUE_SHARE and line_kind(p) is not None and hole_area(p) < p.area
    }
