"""Calipers drawn faint: a ``+`` or ``x`` in a light grey barely above the tissue (step 4 of
:mod:`shards.annotations`).

Many scanners draw their calipers grey, not white, and a crop enlarged for a dataset (DDTI's nodule
crops) blurs them further: their strokes stand 20-60 grey levels above the tissue, under the stroke
rule's ``MARK_LEVEL`` and ``MARK_CONTRAST``, so they never become pieces to be told apart by shape.
What no speckle and no tissue has is the caliper's own shape: four arms at right angles, each of
them, along its whole length, brighter than the tissue on both its sides. So a caliper is looked
for as that shape:

1. candidates: centres whose four arms (the stretch ``FAINT_ARM_TEST`` out that every shape has)
   stand out in the white top-hat, grown by a pixel (an arm may step off its line by one): at
   least ``FAINT_PRE`` on every arm pixel, one erosion per orientation, level/plumb or diagonal;
2. at each candidate, for each shape of ``FAINT_SHAPES`` (how far an arm starts and ends from the
   centre: a gap in the middle or none), each arm's faintest pixel (taken across the arm's width)
   minus the brighter of the two parallel lines ``FAINT_SIDE`` pixels beside it; the caliper's
   contrast is the lowest of its four arms, at least ``FAINT_CONTRAST``;
3. a caliper is drawn in one colour, brighter than the tissue around it: its four arms' mean levels
   differ by less than that contrast (bright streaks crossing in a kidney's speckle stand as high,
   22-34, with arms 48-74 apart), and their middle level lies ``FAINT_ABOVE`` over the upper
   quartile of the other pixels in its box (the crosses that fine-grained speckle makes between its
   dark dots: -7 to 1).

Per candidate only the arms' pixels are read; the whole-crop work is one dilation and two erosions
(hand-written is only what OpenCV has no call for: the per-arm test at a few dozen points).
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

from shards.thresholds import FAINT_ABOVE, FAINT_ARM_TEST, FAINT_CONTRAST, FAINT_PRE, FAINT_SHAPES, FAINT_SIDE

Box = tuple[int, int, int, int]
_ARMS = {False: ((1, 0), (-1, 0), (0, 1), (0, -1)), True: ((1, 1), (1, -1), (-1, 1), (-1, -1))}


@cache
def _star(diagonal: bool, start: int, end: int) -> np.ndarray:
    """A structuring element: the four arms' pixels from ``start`` to ``end`` out from the centre."""
    k = np.zeros((2 * end + 1, 2 * end + 1), np.uint8)
    for dx, dy in _ARMS[diagonal]:
        for t in range(start, end + 1):
            k[end + t * dy, end + t * dx] = 1
    return k


def _contrast(
    gray: np.ndarray, mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, diagonal: bool, start: int, end: int
) -> np.ndarray:
    """Per centre (ys, xs), its lowest arm's contrast (module doc, step 2); -1 where that is under
    ``FAINT_CONTRAST``, its arms' mean levels differ by more than it, or a side line leaves the scan
    area (step 3). A centre leaves as soon as one arm fails: in speckle tens of thousands of centres
    pass the top-hat pre-test and nearly all fail on their first arm. Pixels are gathered by flat
    index (centres lie ``reach`` inside the crop: no arm wraps a row)."""
    w = gray.shape[1]
    flat, inside_area = gray.ravel(), mask.ravel()
    ts = np.arange(start, end + 1)
    alive = np.arange(len(ys))  # the centres every arm so far has passed
    base = ys.astype(np.int64) * w + xs
    lowest = np.full(len(ys), 255, np.int16)  # per centre still alive
    means: list[np.ndarray] = []
    for dx, dy in _ARMS[diagonal]:
        p = base[alive, None] + ts * (dy * w + dx)
        s = w if dy == 0 else 1  # across a level arm: up and down; else left and right
        across = np.maximum(np.maximum(flat[p - s], flat[p]), flat[p + s])
        sides = np.maximum(flat[p + FAINT_SIDE * s].mean(axis=1), flat[p - FAINT_SIDE * s].mean(axis=1))
        inside = inside_area[p + FAINT_SIDE * s].all(axis=1) & inside_area[p - FAINT_SIDE * s].all(axis=1)
        arm = (across.min(axis=1) - sides).astype(np.int16)
        passed = inside & (arm >= FAINT_CONTRAST)
        alive, lowest = alive[passed], np.minimum(lowest[passed], arm[passed])
        means = [m[passed] for m in means] + [across[passed].mean(axis=1)]
    out = np.full(len(ys), -1, np.int16)
    out[alive] = np.where(np.ptp(np.stack(means), axis=0) <= lowest, lowest, -1)
    return out


def _above_tissue(gray: np.ndarray, mask: np.ndarray, y: int, x: int, diagonal: bool, start: int, end: int) -> bool:
    """The arms' middle level at least ``FAINT_ABOVE`` over the upper quartile of the rest of the box
    (within ``FAINT_SIDE`` of the arms' ends), scan area only (module doc, step 3)."""
    r = end + FAINT_SIDE
    box = (slice(y - r, y + r + 1), slice(x - r, x + r + 1))
    arms = np.zeros((2 * r + 1,) * 2, np.uint8)
    arms[FAINT_SIDE:-FAINT_SIDE, FAINT_SIDE:-FAINT_SIDE] = _star(diagonal, start, end)
    near = cv2.dilate(arms, np.ones((3, 3), np.uint8)) > 0
    drawn, rest = gray[box][arms > 0], gray[box][~near & mask[box]]
    return rest.size > 0 and float(np.median(drawn)) - float(np.percentile(rest, 75)) >= FAINT_ABOVE


def faint_calipers(gray: np.ndarray, mask: np.ndarray, tophat: np.ndarray) -> list[tuple[Box, np.ndarray]]:
    """(box, pixels) of each faint caliper inside ``mask`` of ``gray`` (``tophat``: its white top-hat
    with the 5x5 square, as the stroke rule takes it)."""
    h, w = gray.shape
    reach = max(end for _, end in FAINT_SHAPES) + FAINT_SIDE + 1
    if min(h, w) <= 2 * reach:
        return []
    grown = cv2.dilate(tophat, np.ones((3, 3), np.uint8))
    found: list[tuple[int, int, int, bool, int, int]] = []  # (contrast, y, x, diagonal, start, end)
    for diagonal in (False, True):
        test = cv2.erode(grown, _star(diagonal, *FAINT_ARM_TEST), borderValue=0)
        pts = cv2.findNonZero(cv2.threshold(test, FAINT_PRE - 1, 255, cv2.THRESH_BINARY)[1])
        if pts is None:
            continue
        xs, ys = pts.reshape(-1, 2).T
        keep = (xs >= reach) & (xs < w - reach) & (ys >= reach) & (ys < h - reach) & mask[ys, xs]
        ys, xs = ys[keep], xs[keep]
        for start, end in FAINT_SHAPES:
            c = _contrast(gray, mask, ys, xs, diagonal, start, end)
            hit = c >= FAINT_CONTRAST
            found += [(int(v), int(y), int(x), diagonal, start, end) for v, y, x in zip(c[hit], ys[hit], xs[hit])]
    out: list[tuple[Box, np.ndarray]] = []
    taken: list[tuple[int, int, int]] = []
    for _, y, x, diagonal, start, end in sorted(found, reverse=True):  # strongest first; one per caliper
        if any(abs(y - ty) <= te and abs(x - tx) <= te for ty, tx, te in taken):
            continue
        if _above_tissue(gray, mask, y, x, diagonal, start, end):
            taken.append((y, x, end))
            pixels = cv2.dilate(_star(diagonal, 0, end), np.ones((3, 3), np.uint8)) > 0
            out.append(((x - end, y - end, x + end + 1, y + end + 1), pixels))
    return out
