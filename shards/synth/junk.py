"""Non-ultrasound frames that turn up in scraped/exported collections and a cleaner must reject:
blank or near-constant frames, document/screenshot-like white pages with text, and smooth
colourful photo-like images."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter, zoom

from shards.synth.overlays import font

JUNK_KINDS = ("blank", "document", "photo")
WORDS = (
    "patient",
    "report",
    "findings",
    "impression",
    "normal",
    "study",
    "exam",
    "date",
    "left",
    "right",
    "series",
    "image",
    "page",
    "signed",
    "radiology",
    "comparison",
    "technique",
    "history",
    "none",
)


def render_junk(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """A junk frame (uint8 grey or RGB) of ``size`` = (height, width) and which kind it is."""
    kind = str(rng.choice(JUNK_KINDS))
    h, w = size
    if kind == "blank":
        level = float(rng.choice([0.0, rng.uniform(5, 40), 128.0, rng.uniform(200, 255)]))
        img = level + rng.normal(0.0, rng.uniform(0.0, 1.5), (h, w))
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), kind
    if kind == "document":
        im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(238, 256, 3)))
        d = ImageDraw.Draw(im)
        y = 6
        if rng.random() < 0.6:  # a coloured title/tool bar
            bar = tuple(int(v) for v in rng.integers(0, 200, 3))
            d.rectangle([0, 0, w, 18], fill=bar)
            d.text((6, 4), "Report viewer", fill=(255, 255, 255), font=font())
            y = 26
        ink = tuple(int(v) for v in rng.integers(0, 70, 3))
        while y < h - 14:
            if rng.random() < 0.12:  # table rule
                d.line([(6, y + 5), (w - 6, y + 5)], fill=ink)
            else:
                n = int(rng.integers(2, max(3, w // 45)))
                d.text(
                    (8 + int(rng.integers(0, 20)), y),
                    " ".join(str(rng.choice(WORDS)) for _ in range(n)),
                    fill=ink,
                    font=font(),
                )
            y += int(rng.integers(12, 20))
        return np.asarray(im).copy(), kind
    # photo-like: smooth colour fields with soft blobs
    coarse = rng.uniform(0, 255, (max(h // 40, 2), max(w // 40, 2), 3))
    img = zoom(gaussian_filter(coarse, (1.0, 1.0, 0)), (h / coarse.shape[0], w / coarse.shape[1], 1), order=1)
    img = np.pad(img[:h, :w], ((0, max(0, h - img.shape[0])), (0, max(0, w - img.shape[1])), (0, 0)), mode="edge")
    img += rng.normal(0.0, 2.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), kind
