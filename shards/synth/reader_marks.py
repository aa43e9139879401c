"""Marks drawn by another hand than :mod:`shards.synth.marks`: the way a reader or a script draws them
with OpenCV, to measure the annotation finder on strokes it was not tuned on (bench/annotations.py
``--hand reader``).

Each planting draws one of each kind in one colour (white, light grey or one of six colours), one
thickness (1 or 2 px) and one line type (anti-aliased or not): a ``+``/``x`` marker
(``cv2.drawMarker``, 8-20 px), a dotted line at any angle, a word or measurement in one of four
Hershey faces, an arrow in any direction (``cv2.arrowedLine``) and a measurement ellipse, solid or
dotted with its dots spaced by angle (as ``cv2.ellipse2Poly`` spaces its points). A dot one pixel
wide is drawn as one pixel: OpenCV's anti-aliased circle of radius 0 is a pixel at level 4.
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]
KINDS = ("caliper", "dotted_line", "text", "arrow", "ellipse")
COLOURS = {
    "white": (255, 255, 255),
    "grey": (225, 225, 225),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "red": (255, 0, 0),
    "magenta": (255, 0, 255),
    "orange": (255, 160, 0),
}
WORDS = ("Lt Lobe", "SAG", "TRANS", "3.2 cm", "D1 1.24cm", "RIGHT KIDNEY", "Liver", "A", "GB", "Dist 2.05 cm")
FACES = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX)


def _place(rng: np.random.Generator, mask: np.ndarray, taken: np.ndarray, w: int, h: int) -> tuple[int, int] | None:
    """Top-left corner of a free ``w`` x ``h`` box (3 px margin) inside ``mask``, or None."""
    ys, xs = np.nonzero(mask)
    for _ in range(60):
        i = int(rng.integers(ys.size))
        x, y = int(xs[i]) - w // 2, int(ys[i]) - h // 2
        x0, y0, x1, y1 = x - 3, y - 3, x + w + 3, y + h + 3
        inside = x0 >= 0 and y0 >= 0 and x1 <= mask.shape[1] and y1 <= mask.shape[0]
        if inside and mask[y0:y1, x0:x1].all() and not taken[y0:y1, x0:x1].any():
            return x, y
    return None


def _dot(img: np.ndarray, x: float, y: float, colour, thick: int, line: int) -> None:
    cv2.circle(img, (int(x), int(y)), thick - 1, colour, -1, line if thick > 1 else cv2.LINE_8)


def _draw(kind: str, img: np.ndarray, rng, mask, taken, colour, thick: int, line: int) -> Box | None:
    """Draw one mark of ``kind`` somewhere free inside ``mask``; its box, or None if none fits."""
    if kind == "caliper":
        size = int(rng.integers(8, 21))
        at = _place(rng, mask, taken, size + 2, size + 2)
        if at is None:
            return None
        shape = (cv2.MARKER_CROSS, cv2.MARKER_TILTED_CROSS)[int(rng.integers(2))]
        cv2.drawMarker(img, (at[0] + size // 2 + 1, at[1] + size // 2 + 1), colour, shape, size, thick, line)
        return (at[0], at[1], at[0] + size + 3, at[1] + size + 3)
    if kind == "dotted_line":
        length, angle = int(rng.integers(30, 100)), float(rng.uniform(0, np.pi))
        dx, dy = length * np.cos(angle), length * np.sin(angle)
        w, h = int(abs(dx)) + 8, int(abs(dy)) + 8
        at = _place(rng, mask, taken, w, h)
        if at is None:
            return None
        x0, y0 = at[0] + 4 + max(0, int(-dx)), at[1] + 4
        n = length // int(rng.integers(4, 8))
        for k in range(n + 1):
            _dot(img, x0 + dx * k / n, y0 + dy * k / n, colour, thick, line)
        return (at[0], at[1], at[0] + w, at[1] + h)
    if kind == "text":
        s, face = str(rng.choice(WORDS)), FACES[int(rng.integers(len(FACES)))]
        scale = float(rng.uniform(0.8, 1.6) if face == cv2.FONT_HERSHEY_PLAIN else rng.uniform(0.4, 1.0))
        (tw, th), base = cv2.getTextSize(s, face, scale, thick)
        at = _place(rng, mask, taken, tw + 2, th + base + 2)
        if at is None:
            return None
        cv2.putText(img, s, (at[0] + 1, at[1] + th + 1), face, scale, colour, thick, line)
        return (at[0], at[1], at[0] + tw + 3, at[1] + th + base + 3)
    if kind == "arrow":
        length, angle = int(rng.integers(20, 50)), float(rng.uniform(0, 2 * np.pi))
        dx, dy = length * np.cos(angle), length * np.sin(angle)
        w, h = int(abs(dx)) + 10, int(abs(dy)) + 10
        at = _place(rng, mask, taken, w, h)
        if at is None:
            return None
        start = (at[0] + 5 + max(0, int(-dx)), at[1] + 5 + max(0, int(-dy)))
        tip = (int(start[0] + dx), int(start[1] + dy))
        cv2.arrowedLine(img, start, tip, colour, thick, line, 0, float(rng.uniform(0.2, 0.4)))
        return (at[0], at[1], at[0] + w, at[1] + h)
    a, b = int(rng.integers(15, 45)), int(rng.integers(10, 30))  # a measurement ellipse
    at = _place(rng, mask, taken, 2 * a + 4, 2 * b + 4)
    if at is None:
        return None
    cx, cy = at[0] + a + 2, at[1] + b + 2
    if rng.random() < 0.5:
        cv2.ellipse(img, (cx, cy), (a, b), 0, 0, 360, colour, thick, line)
    else:
        for t in np.arange(0, 2 * np.pi, 6.0 / max(a, b)):
            _dot(img, cx + a * np.cos(t), cy + b * np.sin(t), colour, thick, line)
    return (at[0], at[1], at[0] + 2 * a + 5, at[1] + 2 * b + 5)


def plant(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, grey_only: bool = False
) -> tuple[np.ndarray, list[tuple[str, Box]]]:
    """``image`` (HxW uint8 grey) with one mark of each of ``KINDS`` drawn inside ``mask`` in one
    colour, thickness and line type; returns the new image (HxW when the colour is grey, else HxWx3)
    and ``(kind, box)`` for each mark drawn."""
    name = str(rng.choice(["white", "grey"] if grey_only else list(COLOURS)))
    colour, thick = COLOURS[name], int(rng.choice([1, 1, 2]))
    line = cv2.LINE_AA if rng.random() < 0.5 else cv2.LINE_8
    img = np.stack([image] * 3, -1)
    taken = np.zeros(mask.shape, bool)
    truth: list[tuple[str, Box]] = []
    for kind in KINDS:
        box = _draw(kind, img, rng, mask, taken, colour, thick, line)
        if box is not None:
            x0, y0, x1, y1 = box
            taken[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4] = True
            truth.append((kind, box))
    return (img[..., 0].copy() if name in ("white", "grey") else img), truth
