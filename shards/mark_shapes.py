"""Tell marks from speckle by the shape of their stroke pieces (step 2 of :mod:`shards.annotations`).

A *piece* is a connected group of stroke pixels. Marks are built from thin strokes (at most
``STROKE_WIDTH`` pixels wide) in regular shapes; speckle grains and tissue edges are compact blobs
or irregular. In order:

- *caliper*: a cross -- nearly all pixels on one row and one column (``+``) or on the two diagonals
  (``x``) through its middle, each arm spanning most of the box -- or short bars around an empty
  centre (arms at most ``ARM_MAX`` long; one vertical arm may be a stub or missing when the left and
  right ones match);
- *body mark*: a closed thin outline (a hole inside) at most ``BODY_MARK_MAX`` pixels across; a
  larger closed outline (a box) is a *line*;
- *arrow* / *line*: a long (at least ``LINE_MIN`` pixels along its axis, in any direction) thin
  straight stroke (or one drawn two pixels thick: :func:`_drawn_stroke`); an arrow is one whose
  width across its axis grows at one end (the head); a curved one (a trace) is a *line* when it is
  longer still (``TRACE_MIN`` pixels over ``TRACE_SPAN``) and at most ``TRACE_WIDTH`` wide;
- *text*: glyphs -- pieces ``GLYPH_MIN``-``GLYPH_MAX`` pixels tall in strokes at most ``GLYPH_STROKE``
  wide (bold scanner fonts are wider than other marks' strokes) -- side by side on one baseline, of
  one height or two (lower case and capitals), at least ``TEXT_MIN_GLYPHS`` of them (``TEXT_ASPECT``
  wider than tall: two capitals; its glyphs at most ``GLYPH_ASPECT`` wide per height in the middle),
  in one colour (``TEXT_PLATEAU``), drawn as a group
  (their middle step; small text over bright tissue may stand only ``TEXT_FAINT_STEP`` above it when
  ``TEXT_FAINT_GLYPHS`` line up);
- *dotted line*: at least ``DOTS_MIN`` small dots evenly spaced (at most ``DOT_SPACING`` apart)
  along a straight line, or ``CURVE_DOTS_MIN`` along a smooth curve bending one way (an ellipse
  measured dotted: :func:`dotted_curves`);
- any other coloured stroke (at most ``COLOUR_STROKE_MAX`` pixels wide) of at least ``COLOUR_MARK_MIN``
  pixels is a *line* (B-mode is grey; a wide coloured area is a tint's highlight, not a drawn stroke).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.spatial import cKDTree

from shards.thresholds import (
    ARM_MAX,
    BODY_MARK_MAX,
    COLOUR_MARK_MIN,
    COLOUR_STROKE_MAX,
    CURVE_BEND,
    CURVE_DOTS_MIN,
    CURVE_GAP_RATIO,
    CURVE_TURN,
    CURVE_TURN_NOISE,
    CURVE_TWIN,
    DOT_MAX,
    DOT_SPACING,
    DOTS_MIN,
    GLYPH_ASPECT,
    GLYPH_MAX,
    GLYPH_MIN,
    GLYPH_STEP,
    GLYPH_STROKE,
    LINE_MIN,
    LINE_PLATEAU,
    LINE_WOBBLE,
    MARK_STEP,
    PLATEAU_TOL,
    STROKE_WIDTH,
    TEXT_ASPECT,
    TEXT_FAINT_GLYPHS,
    TEXT_FAINT_STEP,
    TEXT_MIN_GLYPHS,
    TEXT_PLATEAU,
    THICK_CORE,
    THICK_HALF,
    THICK_SHARE,
    TRACE_MIN,
    TRACE_SPAN,
    TRACE_WIDTH,
)

Box = tuple[int, int, int, int]


@dataclass
class Piece:
    index: int
    box: Box  # x0, y0, x1, y1 (exclusive)
    area: int
    comp: np.ndarray  # bool, the box's size
    values: np.ndarray  # grey levels of its pixels
    coloured: bool = False
    step: float = 255.0  # grey level above its surround (see shards.annotations._step)
    used: bool = field(default=False)

    @property
    def drawn(self) -> bool:
        """Stands on its surround as a drawn stroke does: coloured, or a step of ``MARK_STEP``."""
        return self.coloured or self.step >= MARK_STEP

    @property
    def w(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def h(self) -> int:
        return self.box[3] - self.box[1]


def _thin(p: Piece, width: int = STROKE_WIDTH) -> bool:
    """Every pixel within ``width / 2`` of the piece's edge: a stroke, not a blob."""
    padded = np.pad(p.comp.astype(np.uint8), 1)
    return float(cv2.distanceTransform(padded, cv2.DIST_L2, 3).max()) <= width / 2 + 0.5


def _drawn_stroke(p: Piece) -> bool:
    """A line's or outline's stroke: thin (:func:`_thin`), or drawn two pixels thick -- 3-4 px wide,
    wider where strokes meet (an arrow's head on its shaft) -- with nearly every pixel
    (``THICK_SHARE``) within ``THICK_HALF`` of the edge and none deeper than ``THICK_CORE``. Speckle
    grains and tissue edges that pass the other tests are blobs."""
    d = cv2.distanceTransform(np.pad(p.comp.astype(np.uint8), 1), cv2.DIST_L2, 3)
    d = d[d > 0]
    if float(d.max()) <= STROKE_WIDTH / 2 + 0.5:  # thin, as _thin measures it
        return True
    return float(np.quantile(d, THICK_SHARE)) <= THICK_HALF and float(d.max()) <= THICK_CORE


def _arms(c: np.ndarray, r: int, k: int) -> list[int]:
    """Lengths of the four arms (left, right, up, down) from the crossing (r, k) along row r and column k."""
    out = []
    for line, at in ((c[r, :k][::-1], 0), (c[r, k + 1 :], 0), (c[:r, k][::-1], 0), (c[r + 1 :, k], 0)):
        run = at
        for v in line:
            if not v:
                break
            run += 1
        out.append(run)
    return out


def is_cross(p: Piece) -> bool:
    """A caliper: ``+`` (four arms along one row and one column) or ``x`` (along both diagonals)."""
    w, h = p.w, p.h
    if not (5 <= max(w, h) <= 41 and 0.5 <= w / h <= 2.0) or p.area > 0.5 * w * h or not p.drawn:
        return False
    c = p.comp
    rows, cols = np.flatnonzero(c.sum(1) >= 0.7 * w), np.flatnonzero(c.sum(0) >= 0.7 * h)
    plus = False
    if rows.size and cols.size and rows.size <= STROKE_WIDTH and cols.size <= STROKE_WIDTH:
        r, k = int(rows.mean().round()), int(cols.mean().round())
        near = np.zeros_like(c)
        near[max(0, rows[0] - 1) : rows[-1] + 2, :] = True
        near[:, max(0, cols[0] - 1) : cols[-1] + 2] = True
        arms = _arms(c, r, k)
        plus = c[near].sum() >= 0.85 * p.area and min(arms) >= 2 and max(arms) <= 2.5 * max(min(arms), 1) + 1
    if plus:
        return True
    diag = np.zeros_like(c)
    side = min(w, h)
    for i in range(side):
        for j in (i, side - 1 - i):
            diag[max(0, i - 1) : i + 2, max(0, j - 1) : j + 2] = True
    ends = (c[:2, :2].any(), c[:2, -2:].any(), c[-2:, :2].any(), c[-2:, -2:].any())
    return bool(abs(w - h) <= 1 and c[diag[:h, :w]].sum() >= 0.9 * p.area and all(ends))


def hole_area(p: Piece) -> int:
    """Pixels the piece encloses (0: an open stroke)."""
    inv = 1 - np.pad(p.comp.astype(np.uint8), 1)
    _, labels = cv2.connectedComponents(inv, connectivity=4)
    return int((labels > 1).sum())  # label 1 is the outside (the padding); every other one a hole


def _has_hole(p: Piece) -> bool:
    return hole_area(p) > 0


def middle(values: np.ndarray) -> int:
    """The middle value (index ``len // 2`` once sorted); 0 for none."""
    if not len(values):
        return 0
    k = len(values) // 2
    return int(np.partition(values, k)[k])


def plateau(values: np.ndarray, tol: int = PLATEAU_TOL) -> float:
    """Share of grey levels within ``tol`` of the most common one: a stroke drawn in one colour
    holds most of its piece (the rest: tissue pixels touching it), a tissue streak spreads out."""
    counts = np.bincount(values.astype(np.int64), minlength=256)
    window = np.convolve(counts, np.ones(2 * tol + 1), mode="same")
    return float(window.max() / max(values.size, 1))


def _axes(p: Piece) -> tuple[np.ndarray, np.ndarray]:
    """(the piece's pixels as centred (x, y) points, its principal axes: column 1 along, 0 across)."""
    ys, xs = np.nonzero(p.comp)
    pts = np.stack([xs, ys], 1).astype(np.float32)
    pts -= pts.mean(0)
    return pts, np.linalg.eigh(pts.T @ pts)[1]


def axis_angle(p: Piece) -> float:
    """Direction of the piece's principal axis, degrees in [0, 180)."""
    vx, vy = _axes(p)[1][:, 1]
    return float(np.degrees(np.arctan2(vy, vx)) % 180)


def _axis_profile(p: Piece) -> tuple[float, np.ndarray, float]:
    """(length along the principal axis, width across it in 8 bins along it, std of the bins' centres)."""
    pts, vecs = _axes(p)
    along, across = pts @ vecs[:, 1], pts @ vecs[:, 0]
    length = float(along.max() - along.min()) + 1
    bins = np.clip(((along - along.min()) / length * 8).astype(int), 0, 7)
    present = [b for b in range(8) if (bins == b).any()]
    widths = np.array([np.ptp(across[bins == b]) + 1 if (bins == b).any() else 0 for b in range(8)])
    centres = np.array([np.median(across[bins == b]) for b in present])
    return length, widths, float(centres[1:-1].std()) if len(centres) > 3 else 0.0


def _trace(p: Piece) -> bool:
    """A drawn curve (a traced outline, a free-hand line): long, and at most ``TRACE_WIDTH`` pixels
    wide everywhere; tissue edges that long are wider somewhere or break up into grains."""
    return p.area >= TRACE_MIN and max(p.w, p.h) >= TRACE_SPAN and _thin(p, TRACE_WIDTH)


def line_kind(p: Piece, anti_aliased: bool = False) -> str | None:
    """``line`` or ``arrow`` for a long, thin, straight stroke in one colour, ``line`` for a drawn curve
    (:func:`_trace`), else None. ``anti_aliased``: a piece not peeled to its drawing colour (its edges
    spread over many grey levels, so one colour says nothing), taken only as an arrow -- a head at
    one end of a straight shaft is drawn; a bright line alone may be a pleura or a needle."""
    if np.hypot(p.w, p.h) < LINE_MIN or not p.drawn or not _drawn_stroke(p):  # the box's diagonal: any direction
        return None
    if not p.coloured and not anti_aliased and plateau(p.values) < LINE_PLATEAU:
        return None
    length, widths, wobble = _axis_profile(p)
    core = float(np.median(widths[2:6]))
    if length < LINE_MIN or core > STROKE_WIDTH + 1 or (wobble > LINE_WOBBLE and not p.coloured):
        return "line" if _trace(p) and not anti_aliased else None
    # the head's base is its widest: it may lie one bin in from the tip
    ends = max(widths[:2].max(), widths[-2:].max())
    if ends >= 2.5 * max(core, 1.0) and ends >= 5:
        return "arrow"
    return None if anti_aliased else "line"


def _glyph(p: Piece) -> bool:
    return glyph_sized(p.w, p.h) and _thin(p, GLYPH_STROKE)


def text_groups(pieces: list[Piece]) -> list[list[Piece]]:
    """Glyphs (and the dots of ``i``, ``:`` beside them) side by side on one baseline."""
    cand = [
        p
        for p in pieces
        if not p.used and (p.drawn or p.step >= GLYPH_STEP) and (max(p.w, p.h) <= DOT_MAX or _glyph(p))
    ]
    cand.sort(key=lambda p: p.box[0])
    groups: list[list[Piece]] = []
    for p in cand:
        for g in groups:
            last = g[-1]
            top, bot = min(q.box[1] for q in g), max(q.box[3] for q in g)
            h = bot - top
            overlap = min(bot, p.box[3]) - max(top, p.box[1])
            if p.box[0] - last.box[2] <= max(3, 2 * h) and overlap >= 0.5 * min(h, p.h):
                g.append(p)
                break
        else:
            groups.append([p])
    return [g for g in groups if _is_text(g)]


def find_text(pieces: list[Piece]) -> list[tuple[str, Box, np.ndarray]]:
    """(``"text"``, box, pixels) of every line of text among the pieces."""
    return [("text", *_union(g)) for g in text_groups(pieces)]


def glyph_sized(w: int, h: int) -> bool:
    """A piece's box could hold a glyph (:func:`_glyph` before its stroke width is measured)."""
    return GLYPH_MIN <= h <= GLYPH_MAX and w <= 8 * h


def _heights(hs: np.ndarray) -> tuple[int, ...]:
    """The heights a line of glyphs may hold: its middle and tallest, and its two most common (capitals
    and lower case when the middle falls on one of them; BUSI's corner labels: a stroke beside a glyph)."""
    first = int(np.bincount(hs).argmax())
    rest = hs[np.abs(hs - first) > max(2, 0.25 * first)]
    return (int(np.median(hs)), int(hs.max()), first) + ((int(np.bincount(rest).argmax()),) if rest.size else ())


def _is_text(group: list[Piece]) -> bool:
    """Glyphs of one line of text: mostly one height (or two: lower case and capitals), one top or one
    baseline, one colour."""
    glyphs = [q for q in group if _glyph(q)]
    if not glyphs:
        return False
    width = max(q.box[2] for q in group) - min(q.box[0] for q in group)
    height = max(q.box[3] for q in group) - min(q.box[1] for q in group)
    if width < TEXT_ASPECT * height or len(glyphs) < TEXT_MIN_GLYPHS:
        return False
    if np.median([q.w / q.h for q in glyphs]) > GLYPH_ASPECT:
        return False  # a row of streaks (a bright fascia in pieces), not letters
    hs = np.array([q.h for q in glyphs])
    tops, bottoms = np.array([q.box[1] for q in glyphs]), np.array([q.box[3] for q in glyphs])
    # one height, or two: mixed-case text has its x-height and its capitals' (descenders break apart)
    near = [np.abs(hs - ref) <= max(2, 0.25 * ref) for ref in _heights(hs)]
    same_height = np.mean(np.logical_or.reduce(near)) >= 0.6
    aligned = max(np.mean(np.abs(v - np.median(v)) <= 2) for v in (tops, bottoms)) >= 0.6
    coloured = all(q.coloured for q in group)
    one_colour = coloured or plateau(np.concatenate([q.values for q in group])) >= TEXT_PLATEAU
    step = float(np.median([q.step for q in glyphs]))
    # small text over bright tissue stands lower above it: enough of it, in line, is still drawn
    drawn = coloured or step >= MARK_STEP or (step >= TEXT_FAINT_STEP and len(glyphs) >= TEXT_FAINT_GLYPHS)
    return bool(same_height and aligned and one_colour and drawn)


def dotted_lines(pieces: list[Piece]) -> list[list[Piece]]:
    """At least ``DOTS_MIN`` small dots at one spacing along a straight line."""
    dots = [p for p in pieces if not p.used and max(p.w, p.h) <= DOT_MAX and p.drawn]
    if len(dots) < DOTS_MIN:
        return []
    c = np.array([[(p.box[0] + p.box[2] - 1) / 2, (p.box[1] + p.box[3] - 1) / 2] for p in dots])
    taken = np.zeros(len(dots), bool)
    out = []
    for i in range(len(dots)):
        if taken[i]:
            continue
        d = np.hypot(*(c - c[i]).T)
        for j in np.flatnonzero((d >= 2) & (d <= DOT_SPACING) & ~taken):
            step = c[j] - c[i]
            tol = max(1.5, 0.1 * float(np.hypot(*step)))
            chain = [i, j]
            for direction in (1, -1):
                k, pos = 0, c[j] if direction == 1 else c[i]
                while k < 64:
                    pos = pos + direction * step
                    hit = np.flatnonzero(np.hypot(*(c - pos).T) <= tol)
                    if hit.size == 0:
                        break
                    chain.append(int(hit[0]))
                    k += 1
            if len(set(chain)) >= DOTS_MIN:
                taken[list(set(chain))] = True
                out.append([dots[k] for k in sorted(set(chain))])
                break
    return out


def _chains(c: np.ndarray) -> list[list[int]]:
    """Dots linked to each of their two nearest (mutually, within ``DOT_SPACING``), as ordered chains:
    paths from one end, or cycles opened at one dot. A k-d tree keeps it linear in the dots."""
    n = len(c)
    d, near = cKDTree(c).query(c, k=3, distance_upper_bound=DOT_SPACING)
    d, near = d[:, 1:], near[:, 1:]  # the first is the dot itself
    links: list[set[int]] = [set() for _ in range(n)]
    for i in range(n):
        for dist, j in zip(d[i], near[i]):
            if np.isfinite(dist) and i in near[j]:
                links[i].add(int(j))
    seen, out = np.zeros(n, bool), []
    for start in sorted(range(n), key=lambda i: len(links[i]) != 1):  # path ends first
        if seen[start] or not links[start]:
            continue
        chain, prev, cur = [start], -1, start
        seen[start] = True
        while True:
            nxt = [j for j in links[cur] if j != prev and not seen[j]]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            seen[cur] = True
            chain.append(cur)
        out.append(chain)
    return out


def _smooth_convex(pts: np.ndarray) -> bool:
    """Dots along a chain whose gaps change slowly (``CURVE_GAP_RATIO`` at most between neighbours:
    an ellipse's dots may be spaced by angle, closer at its narrow ends) and which turn one way, at
    most ``CURVE_TURN`` degrees at each: the trace of an ellipse or an arc. A closed chain is judged
    along its path from one dot round to the last (the gap that closes it may be any)."""
    steps = np.diff(pts, axis=0)
    length = np.hypot(steps[:, 0], steps[:, 1])
    if np.abs(np.log(length[1:] / length[:-1])).max() > np.log(CURVE_GAP_RATIO):
        return False
    a, b = steps[:-1], steps[1:]
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    turn = np.degrees(np.arctan2(cross, (a * b).sum(axis=1)))
    if np.abs(turn).max() > CURVE_TURN:
        return False
    # it bends one way: whole pixels put a few degrees of noise on each turn, so a turn counts only
    # past CURVE_TURN_NOISE (a straight stretch turns neither way), and the turns add up to a bend
    bent = turn[np.abs(turn) > CURVE_TURN_NOISE]
    return bool(bent.size and (np.all(bent > 0) or np.all(bent < 0)) and abs(turn.sum()) >= CURVE_BEND)


def dotted_curves(pieces: list[Piece]) -> list[list[Piece]]:
    """At least ``CURVE_DOTS_MIN`` small dots at one spacing along a smooth curve bending one way: an
    ellipse or arc measured with a dotted trace (a head's or an abdomen's circumference), whose
    dots follow no straight line (:func:`dotted_lines`)."""
    dots = [p for p in pieces if not p.used and max(p.w, p.h) <= DOT_MAX and p.drawn]
    if len(dots) < CURVE_DOTS_MIN:
        return []
    c = np.array([[(p.box[0] + p.box[2] - 1) / 2, (p.box[1] + p.box[3] - 1) / 2] for p in dots])
    # a dot beside another (a closing dot drawn over the first, say) is one dot of the chain
    twin = np.zeros(len(c), bool)
    for _, j in cKDTree(c).query_pairs(CURVE_TWIN, output_type="ndarray"):
        twin[j] = True  # pairs come as i < j: the later dot goes
    dots, c = [p for p, t in zip(dots, twin) if not t], c[~twin]
    if len(dots) < CURVE_DOTS_MIN:
        return []
    out = []
    for chain in _chains(c):
        if len(chain) >= CURVE_DOTS_MIN and _smooth_convex(c[chain]):
            out.append([dots[k] for k in chain])
    return out


def _centre(p: Piece) -> tuple[float, float]:
    return (p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2


def _bar(p: Piece) -> bool:
    """A short solid arm of a caliper drawn as four separate bars around an empty centre."""
    long, short = max(p.w, p.h), min(p.w, p.h)
    return not p.used and p.drawn and 3 <= long <= 2 * ARM_MAX and long >= 1.5 * short and p.area >= 0.7 * p.w * p.h


def _side_arms(upright: list[Piece], cx: float, cy: float, gap: int) -> tuple[list[Piece], list[Piece]]:
    """The upright pieces centred on column ``cx`` just above and just below row ``cy`` (bars first)."""
    near = [v for v in upright if not v.used and abs(_centre(v)[0] - cx) <= 1]
    return [v for v in near if 0 <= cy - v.box[3] <= gap], [v for v in near if 0 <= v.box[1] - cy <= gap]


def split_crosses(pieces: list[Piece]) -> list[list[Piece]]:
    """Calipers drawn as bars -- left, right, above, below -- around an empty centre. Two calipers a
    wall's thickness apart cut each other's facing arm short (an ATL intima-media pair), so one
    vertical arm may be a stub or missing when the other is a bar and the left and right ones match."""
    hor = [p for p in pieces if _bar(p) and p.w > p.h]
    # candidate vertical arms, stubs included, solid bars first
    upright = [v for v in pieces if v.drawn and v.h >= v.w and max(v.w, v.h) <= 2 * ARM_MAX]
    upright.sort(key=lambda v: not _bar(v))
    out = []
    for a in hor:
        for b in hor:
            gap = b.box[0] - a.box[2]
            if a.used or b.used or not 1 <= gap <= ARM_MAX or abs(_centre(a)[1] - _centre(b)[1]) > 1:
                continue
            up, down = _side_arms(upright, (a.box[2] + b.box[0]) / 2, _centre(a)[1], gap)
            arms = up[:1] + down[:1]
            four = len(arms) == 2 and all(_bar(v) for v in arms)
            three = any(_bar(v) for v in arms) and abs(a.w - b.w) <= 1
            if not (four or three):
                continue
            group = [a, b, *arms]
            for q in group:
                q.used = True
            out.append(group)
    return out


def _union(group: list[Piece]) -> tuple[Box, np.ndarray]:
    x0, y0 = min(p.box[0] for p in group), min(p.box[1] for p in group)
    x1, y1 = max(p.box[2] for p in group), max(p.box[3] for p in group)
    m = np.zeros((y1 - y0, x1 - x0), bool)
    for p in group:
        m[p.box[1] - y0 : p.box[3] - y0, p.box[0] - x0 : p.box[2] - x0] |= p.comp
        p.used = True
    return (x0, y0, x1, y1), m


def _boxy(p: Piece) -> bool:
    """A rectangle outline: nearly every pixel on the box's border."""
    c = p.comp
    border = np.zeros_like(c)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    return c[border].sum() >= 0.9 * p.area


def outline_kind(p: Piece) -> str | None:
    """A closed thin outline in one colour: a box (``line``) or a body mark."""
    if max(p.w, p.h) < 12 or not p.drawn or not _has_hole(p) or not _drawn_stroke(p):
        return None
    if not p.coloured and plateau(p.values) < LINE_PLATEAU:
        return None
    return "line" if _boxy(p) or max(p.w, p.h) > BODY_MARK_MAX else "body_mark"


def find_marks(pieces: list[Piece]) -> list[tuple[str, Box, np.ndarray]]:
    """(kind, box, pixels) of every mark among the pieces (module doc, in that order)."""
    out = [("caliper", *_union([p])) for p in pieces if is_cross(p)]
    out += [("caliper", *_union(g)) for g in split_crosses(pieces)]
    out += find_text(pieces)
    for p in pieces:
        kind = None if p.used else (outline_kind(p) or line_kind(p))
        if kind:
            out.append((kind, *_union([p])))
    out += [("dotted_line", *_union(g)) for g in dotted_curves(pieces)]  # before straight runs of its dots
    out += [("dotted_line", *_union(g)) for g in dotted_lines(pieces)]
    for p in pieces:
        if not p.used and p.coloured and p.area >= COLOUR_MARK_MIN and _thin(p, COLOUR_STROKE_MAX):
            out.append(("line", *_union([p])))
    return out
