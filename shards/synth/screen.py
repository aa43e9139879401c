"""A device screen around a scan: the image a scanner exports when its scan area is a small part of
a wide display (the case of issue 17: a 150 x 300 px linear scan on a 1280 x 720 screen).

The scan (any grey image, real or synthetic) is resized into a box in the middle of a black screen;
around it the user interface a scanner draws: patient/date/site text in the top-left, probe and
acoustic-output text in the top-right, a parameter column on the left, a depth scale with ticks
beside the scan, a grey-scale bar on the right and a grey tool bar with labels at the bottom. The
interface is the same on every frame of a clip; only the scan changes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from shards.synth.overlays import font

SCREEN = (720, 1280)  # height, width
Box = tuple[int, int, int, int]


def scan_box(scan_size: tuple[int, int], screen: tuple[int, int] = SCREEN) -> Box:
    """Where a scan of ``scan_size`` (height, width) sits: the middle of the screen, a little high."""
    (h, w), (sh, sw) = scan_size, screen
    x0, y0 = (sw - w) // 2, max(40, (sh - h) // 2 - 20)
    return (x0, y0, x0 + w, y0 + h)


def interface(rng: np.random.Generator, box: Box, screen: tuple[int, int] = SCREEN) -> np.ndarray:
    """The screen's user interface alone (HxW uint8 grey), kept clear of the scan ``box``."""
    sh, sw = screen
    img = Image.new("L", (sw, sh), 0)
    d = ImageDraw.Draw(img)
    grey = int(rng.integers(170, 256))
    for i, s in enumerate(["MSK  12cm", f"ID {rng.integers(10**5, 10**6)}", "2024/05/17 10:42:03"]):
        d.text((12, 8 + 14 * i), s, fill=grey, font=font())
    for i, s in enumerate(["L12-3", f"MI {rng.uniform(0.3, 1.2):.1f}  TIs {rng.uniform(0.1, 0.9):.1f}"]):
        d.text((sw - 130, 8 + 14 * i), s, fill=grey, font=font())
    for i, s in enumerate(["2D", f"G {rng.integers(30, 70)}", f"DR {rng.integers(50, 80)}", "FR 24Hz"]):
        d.text((12, 120 + 14 * i), s, fill=grey, font=font())
    x0, y0, x1, y1 = box
    for k, y in enumerate(range(y0, y1, max(8, (y1 - y0) // 12))):  # depth scale
        d.line([(x1 + 8, y), (x1 + (14 if k % 2 == 0 else 11), y)], fill=grey)
    for y in range(200, 456):  # grey-scale bar
        d.line([(sw - 40, y), (sw - 28, y)], fill=int((455 - y) * 255 / 255))
    d.rectangle([0, sh - 44, sw, sh], fill=48)  # tool bar with labels
    for i, s in enumerate(["FREEZE", "GAIN", "DEPTH", "MEASURE", "SAVE"]):
        d.text((40 + 160 * i, sh - 28), s, fill=220, font=font())
    return np.asarray(img)


def on_screen(scan: np.ndarray, ui: np.ndarray, box: Box) -> np.ndarray:
    """``scan`` resized into ``box`` of the interface ``ui``."""
    x0, y0, x1, y1 = box
    out = ui.copy()
    out[y0:y1, x0:x1] = np.asarray(Image.fromarray(scan).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
    return out
