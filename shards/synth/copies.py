"""What a real copy of an image goes through -- re-encoding, resizing, re-cropping -- to plant copies
that the copy matching (:mod:`shards.match`) must find, in its tests and in ``bench/decontam.py``."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """``x`` saved as a JPEG at ``quality`` and decoded again."""
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def resize(x: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """``x`` scaled by ``fx`` across and ``fy`` down (bicubic), at least 16 px a side."""
    h, w = x.shape[:2]
    size = (max(16, int(w * fx)), max(16, int(h * fy)))
    return np.asarray(Image.fromarray(x).resize(size, Image.Resampling.BICUBIC))


def crop(x: np.ndarray, left: float, top: float, right: float, bottom: float) -> np.ndarray:
    """``x`` without the given shares of its width/height at each side."""
    h, w = x.shape[:2]
    return x[int(top * h) : h - int(bottom * h), int(left * w) : w - int(right * w)]
