"""Annotations planted on an image, with where each one went: the ground truth that measures the
annotation detector (bench/annotations.py, tests) on real frames.

Drawn as scanners and readers draw them: caliper ``+``/``x`` (arms 3-8 px, 1 px thick), a dotted
measurement line between two calipers, one to three words of text (PIL's bitmap font, or OpenCV's
Hershey font at small scales), an arrow, a body mark (a small outline with a probe bar) and a box
outline; in white, light grey (215-255: scanners draw marks brighter than the tissue) or a colour
(yellow, green, cyan). Each mark lies inside ``mask``
(the scan area) and keeps clear of the others.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw

from shards.synth.overlays import font

KINDS = ("caliper", "dotted_line", "text", "arrow", "body_mark", "line")
COLOURS = {"white": (255, 255, 255), "yellow": (235, 215, 40), "green": (60, 220, 60), "cyan": (60, 215, 230)}
WORDS = ("RT", "LT", "LOBE", "TRV", "SAG", "BREAST", "AXILLA", "D1", "2.31cm", "LCCA", "BULB", "KIDNEY", "1", "2")
Box = tuple[int, int, int, int]


def _colour(rng: np.random.Generator, grey_only: bool) -> tuple[int, int, int]:
    if grey_only or rng.random() < 0.6:
        v = 255 if rng.random() < 0.6 else int(rng.integers(215, 250))  # scanners draw marks near white
        return (v, v, v)
    return COLOURS[str(rng.choice(["yellow", "green", "cyan"]))]


def _free(mask: np.ndarray, taken: np.ndarray, box: Box) -> bool:
    x0, y0, x1, y1 = box
    h, w = mask.shape
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h or x1 <= x0 or y1 <= y0:
        return False
    return bool(mask[y0:y1, x0:x1].all() and not taken[y0:y1, x0:x1].any())


def _caliper(d: ImageDraw.ImageDraw, x: int, y: int, arm: int, fill, diagonal: bool) -> Box:
    if diagonal:
        d.line([(x - arm, y - arm), (x + arm, y + arm)], fill=fill)
        d.line([(x - arm, y + arm), (x + arm, y - arm)], fill=fill)
    else:
        d.line([(x - arm, y), (x + arm, y)], fill=fill)
        d.line([(x, y - arm), (x, y + arm)], fill=fill)
    return (x - arm, y - arm, x + arm + 1, y + arm + 1)


def _text(d: ImageDraw.ImageDraw, img: Image.Image, x: int, y: int, s: str, fill, rng) -> Box:
    if rng.random() < 0.5:
        x0, y0, x1, y1 = d.textbbox((x, y), s, font=font())
        d.text((x, y), s, fill=fill, font=font())
        return (x0, y0, x1 + 1, y1 + 1)
    scale = float(rng.uniform(0.35, 0.55))
    (tw, th), base = cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    arr = np.asarray(img).copy()
    cv2.putText(arr, s, (x, y + th), cv2.FONT_HERSHEY_SIMPLEX, scale, fill, 1, cv2.LINE_8)
    img.paste(Image.fromarray(arr))
    return (x, y, x + tw + 1, y + th + base + 1)


def _place(rng, mask, taken, w: int, h: int) -> tuple[int, int] | None:
    ys, xs = np.nonzero(mask)
    for _ in range(40):
        i = int(rng.integers(ys.size))
        x, y = int(xs[i]) - w // 2, int(ys[i]) - h // 2
        if _free(mask, taken, (x - 3, y - 3, x + w + 3, y + h + 3)):
            return x, y
    return None


def plant(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, kinds: tuple[str, ...] = KINDS, grey_only=False
) -> tuple[np.ndarray, list[tuple[str, Box]]]:
    """``image`` (HxW uint8 grey) with one mark of each of ``kinds`` drawn inside ``mask``; returns the
    new image (HxWx3 when a colour was used) and ``(kind, box)`` for each mark drawn."""
    img = Image.fromarray(np.stack([image] * 3, -1))
    d = ImageDraw.Draw(img)
    taken = np.zeros(mask.shape, bool)
    truth: list[tuple[str, Box]] = []
    for kind in kinds:
        fill = _colour(rng, grey_only)
        box = _draw(kind, d, img, rng, mask, taken, fill)
        if box is not None:
            x0, y0, x1, y1 = box
            taken[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4] = True
            truth.append((kind, box))
    out = np.asarray(img)
    grey = np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    return (out[..., 0].copy() if grey else out.copy()), truth


def _draw(kind: str, d, img, rng, mask, taken, fill) -> Box | None:
    """Draw one mark of ``kind`` somewhere free inside ``mask``; its box, or None if none fits."""
    if kind == "caliper":
        arm = int(rng.integers(3, 9))
        at = _place(rng, mask, taken, 2 * arm + 1, 2 * arm + 1)
        return None if at is None else _caliper(d, at[0] + arm, at[1] + arm, arm, fill, rng.random() < 0.3)
    if kind == "dotted_line":
        length, arm = int(rng.integers(30, 90)), int(rng.integers(3, 6))
        at = _place(rng, mask, taken, length + 2 * arm + 1, 2 * arm + 1)
        if at is None:
            return None
        x, y = at[0] + arm, at[1] + arm
        _caliper(d, x, y, arm, fill, False)
        _caliper(d, x + length, y, arm, fill, False)
        for t in range(x + 4, x + length - 2, int(rng.integers(3, 6))):
            d.point((t, y), fill=fill)
        return (x - arm, y - arm, x + length + arm + 1, y + arm + 1)
    if kind == "text":
        s = " ".join(str(w) for w in rng.choice(WORDS, size=int(rng.integers(1, 4))))
        at = _place(rng, mask, taken, 9 * len(s) + 4, 16)
        return None if at is None else _text(d, img, at[0], at[1], s, fill, rng)
    if kind == "arrow":
        length = int(rng.integers(18, 40))
        at = _place(rng, mask, taken, length + 1, length + 1)
        if at is None:
            return None
        arr = np.asarray(img).copy()
        x0, y0 = at
        cv2.arrowedLine(arr, (x0, y0), (x0 + length, y0 + length), fill, 1, cv2.LINE_8, 0, 0.35)
        img.paste(Image.fromarray(arr))
        return (x0, y0, x0 + length + 1, y0 + length + 1)
    if kind == "body_mark":
        w, h = int(rng.integers(18, 34)), int(rng.integers(14, 26))
        at = _place(rng, mask, taken, w + 1, h + 7)
        if at is None:
            return None
        x, y = at
        d.ellipse([x, y, x + w, y + h], outline=fill)
        d.line([(x + w // 4, y + h + 4), (x + 3 * w // 4, y + h + 6)], fill=fill, width=2)
        return (x, y, x + w + 1, y + h + 7)
    w, h = int(rng.integers(30, 80)), int(rng.integers(25, 60))  # a box outline (a zoom or Doppler ROI)
    at = _place(rng, mask, taken, w + 1, h + 1)
    if at is None:
        return None
    d.rectangle([at[0], at[1], at[0] + w, at[1] + h], outline=fill)
    return (at[0], at[1], at[0] + w + 1, at[1] + h + 1)


def covered(img: np.ndarray, clean: np.ndarray, box: Box, marks: list) -> bool:
    """Whether detected ``marks`` (each with a ``box``) cover at least half of the pixels the planting
    changed in ``box`` (``img`` the planted frame, ``clean`` the frame before)."""
    changed = img != (clean if img.ndim == 2 else np.stack([clean] * 3, -1))
    changed = changed if changed.ndim == 2 else changed.any(axis=2)
    hit = np.zeros(clean.shape, bool)
    for m in marks:
        hit[m.box[1] : m.box[3], m.box[0] : m.box[2]] = True
    x0, y0, x1, y1 = box
    ch = changed[y0:y1, x0:x1]
    return bool(ch.any() and (hit[y0:y1, x0:x1] & ch).sum() >= 0.5 * ch.sum())
