"""Burned-in annotations as scanners print them: text in the black margins (white/grey, sometimes
yellow), a depth scale with centimetre ticks beside the scan area, and caliper ``+`` marks with
dotted measurement lines over the scan area (on the lesion when there is one).

Text and ticks are only placed where they do not touch the scan area, so a cleaner that crops
to the scan area removes them; calipers are inside it, as in real data.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_dilation

from shards.synth.geometry import ScanGeometry

Colour = tuple[int, int, int]
YELLOW: Colour = (235, 215, 40)

PROBES = {
    "breast": ["L12-5", "L18-4", "ML6-15", "14L5"],
    "thyroid": ["L12-5", "L15-7io", "eL18-4", "L11-3"],
    "cardiac": ["P4-2", "S5-1", "M5Sc", "X5-1"],
    "fetal": ["C5-1", "C6-2", "RAB4-8", "C9-2"],
    "musculoskeletal": ["L18-4", "L15-7io", "HL9-4", "SL15-4"],
    "liver": ["C5-1", "C6-2", "C1-6", "CA541"],
}
LABELS = {
    "breast": ["BREAST", "LT BREAST", "RT BREAST", "BR 10:00", "SMALL PARTS"],
    "thyroid": ["THYROID", "THY TRV", "RT LOBE", "LT LOBE", "NECK"],
    "cardiac": ["ADULT ECHO", "A4C", "CARDIAC", "TTE"],
    "fetal": ["OB", "OB 2/3", "FETAL HEAD", "BPD"],
    "musculoskeletal": ["MSK", "SHOULDER", "ACHILLES", "KNEE LONG"],
    "liver": ["ABDOMEN", "LIVER", "RUQ", "ABD GEN"],
}
SITES = ["ST. MARY HOSP", "RADIOLOGY 2", "IMAGING CTR", "ANON", "US ROOM 3", "GEN HOSPITAL", "CLINIC B"]


@lru_cache(maxsize=1)
def font() -> ImageFont.ImageFont:
    """PIL's built-in bitmap font: no font files, identical rendering everywhere."""
    return ImageFont.load_default_imagefont()


class Canvas:
    """An RGB drawing surface that remembers whether anything non-grey was drawn."""

    def __init__(self, image: np.ndarray, scan_mask: np.ndarray):
        rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
        self.img = Image.fromarray(np.ascontiguousarray(rgb))
        self.draw = ImageDraw.Draw(self.img)
        self.keepout = binary_dilation(scan_mask, iterations=2)
        self.coloured = image.ndim == 3
        self.h, self.w = scan_mask.shape
        self.boxes: list[tuple[int, int, int, int]] = []  # text already drawn: never overprint it

    def free(self, box: tuple[int, int, int, int]) -> bool:
        x0, y0, x1, y1 = box
        if x0 < 0 or y0 < 0 or x1 > self.w or y1 > self.h or x1 <= x0 or y1 <= y0:
            return False
        if any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in self.boxes):
            return False
        return not self.keepout[y0:y1, x0:x1].any()

    def text(
        self, xy: tuple[int, int], s: str, fill: Colour, anchor_right: bool = False
    ) -> tuple[int, int, int, int] | None:
        """Draw ``s`` at ``xy`` (top-left, or top-right if ``anchor_right``) if it stays clear of the
        scan area and of earlier text; return its box, or None if it was not drawn."""
        x0, y0, x1, y1 = self.draw.textbbox((0, 0), s, font=font())
        x, y = xy
        if anchor_right:
            x -= x1
        box = (x + x0, y + y0, x + x1 + 1, y + y1 + 1)
        if not self.free(box):
            return None
        self.draw.text((x, y), s, fill=fill, font=font())
        self.coloured |= len(set(fill)) > 1
        self.boxes.append(box)
        return box

    def array(self) -> np.ndarray:
        a = np.asarray(self.img)
        return a.copy() if self.coloured else a[:, :, 0].copy()


def _grey(rng: np.random.Generator) -> Colour:
    v = 255 if rng.random() < 0.5 else int(rng.integers(160, 231))
    return (v, v, v)


def draw_text(c: Canvas, rng: np.random.Generator, preset: str, geom: ScanGeometry) -> bool:
    """Scanner text blocks in the top, left and right margins; True if any were drawn."""
    main = _grey(rng)
    accent = YELLOW if rng.random() < 0.06 else main
    date = f"{rng.integers(2008, 2024)}/{rng.integers(1, 13):02d}/{rng.integers(1, 29):02d}"
    clock = f"{rng.integers(7, 20):02d}:{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}"
    left = [str(rng.choice(SITES)), f"ID {rng.integers(0, 10**6):06d}", f"{date} {clock}"]
    right = [
        str(rng.choice(PROBES[preset])),
        f"MI {rng.uniform(0.2, 1.4):.1f}  TIs {rng.uniform(0.1, 1.0):.1f}",
    ]
    side = [
        str(rng.choice(LABELS[preset])),
        f"G {rng.integers(30, 80)}",
        f"DR {rng.integers(45, 80)}",
        f"FR {rng.integers(8, 60)}Hz",
        f"D {geom.depth_mm / 10:.1f}cm",
    ]
    drawn = False
    y = int(rng.integers(1, 5))
    for s in left:  # top-left block
        drawn |= c.text((int(rng.integers(2, 8)), y), s, main) is not None
        y += 12
    y = int(rng.integers(1, 5))
    for s in right:  # top-right block
        drawn |= c.text((c.w - int(rng.integers(2, 8)), y), s, accent, anchor_right=True) is not None
        y += 12
    x0, y0, x1, y1 = geom.bbox()
    y = y0 + int(rng.integers(0, 20))
    for s in side:  # parameter column in the left margin (or below the top block)
        if c.text((2, y), s, accent if s == side[0] else main) is not None:
            drawn = True
            y += 12
    return drawn


def draw_depth_scale(c: Canvas, rng: np.random.Generator, geom: ScanGeometry) -> bool:
    """Centimetre ticks (5 mm minor) with labels, in the margin beside the scan area."""
    x0, y0, x1, y1 = geom.bbox()
    fill = _grey(rng)
    top = geom.row0 if geom.kind == "linear" else geom.apex_row + geom.r0
    col = x1 + 3 if x1 + 22 < c.w else x0 - 8
    if col < 2:
        return False
    px_cm = 10.0 / geom.mm_per_px
    label_every = int(np.ceil(13.0 / px_cm))
    drawn = False
    for k in range(0, int(geom.depth_mm / 5.0) + 1):
        y = int(round(top + k * px_cm / 2))
        major = k % 2 == 0
        length = 5 if major else 3
        box = (col, y, col + length, y + 1)
        if not c.free(box):
            continue
        c.draw.line([(col, y), (col + length - 1, y)], fill=fill)
        drawn = True
        if major and (k // 2) % label_every == 0 and col + 20 < c.w:
            c.text((col + 7, y - 5), str(k // 2), fill)
    return drawn


def draw_calipers(c: Canvas, rng: np.random.Generator, scan_mask: np.ndarray, lesion_mask: np.ndarray | None) -> bool:
    """One or two pairs of ``+`` marks, joined by a dotted line, across the lesion or anywhere."""
    fill = YELLOW if rng.random() < 0.1 else _grey(rng)
    pairs = []
    if lesion_mask is not None and lesion_mask.any():
        rows, cols = np.nonzero(lesion_mask)
        mid = int(np.median(rows))
        on = cols[rows == mid]
        pairs.append(((int(on.min()) - 2, mid), (int(on.max()) + 2, mid)))
        if rng.random() < 0.6:
            cm = int(np.median(cols))
            on = rows[cols == cm]
            pairs.append(((cm, int(on.min()) - 2), (cm, int(on.max()) + 2)))
    else:
        rows, cols = np.nonzero(scan_mask)
        for _ in range(int(rng.integers(1, 3))):
            i, j = rng.integers(rows.size, size=2)
            pairs.append(((int(cols[i]), int(rows[i])), (int(cols[j]), int(rows[j]))))
    arm = int(rng.integers(2, 5))
    dotted = rng.random() < 0.6
    for a, b in pairs:
        for x, y in (a, b):
            c.draw.line([(x - arm, y), (x + arm, y)], fill=fill)
            c.draw.line([(x, y - arm), (x, y + arm)], fill=fill)
        if dotted:
            n = int(max(abs(b[0] - a[0]), abs(b[1] - a[1])) // 4)
            for t in np.linspace(0.0, 1.0, max(n, 2))[1:-1]:
                c.draw.point((int(round(a[0] + t * (b[0] - a[0]))), int(round(a[1] + t * (b[1] - a[1])))), fill=fill)
    c.coloured |= len(set(fill)) > 1
    return bool(pairs)
