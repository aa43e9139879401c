"""What every reader returns and how it fails (the options it takes: :class:`shards.options.SourceOptions`).

A reader turns one input file into a :class:`Media`: a single image or a clip (multi-frame DICOM,
video, 2D+t sequence, volume, array), whose frames are yielded *already sampled* and one at a
time, so a long clip never sits in memory. Pixels come out as ``HxW`` (grayscale) or ``HxWx3``
(colour, to be judged by the colour rule) uint8 arrays, after the format's own photometric rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

HEAD_BYTES = 512  # a format is told from this many first bytes (shards.readers.detect)


class ReadError(Exception):
    """Carries the rejection reason (``empty_file``, ``truncated``, ``unreadable``, ``undecodable``...)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Frame:
    pixels: np.ndarray  # HxW or HxWx3 uint8
    index: int  # position in the clip (0 for a single image)


@dataclass
class Media:
    """One decoded input: its frames (sampled, lazily) and what is known about it."""

    frames: Iterator[Frame]
    multi: bool  # a clip: its frames carry ``clip`` and ``frame``
    family: str  # image | dicom | video | volume | array
    orig_mode: str
    orig_size: tuple[int, int] | None = None  # (width, height)
    n_frames: int | None = None  # frames in the clip (None: unknown until decoded)
    fps: float | None = None
    region: tuple[int, int, int, int] | None = None  # DICOM B-mode region (x0, y0, x1, y1), exclusive
    spacing_mm: tuple[float, float] | None = None  # original mm per pixel (x, y)
    meta: dict = field(default_factory=dict)  # allow-listed attributes copied to every sample


def to_uint8(arr: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Integer/float pixels -> uint8 by the documented rule (docs/data.md "Readers").

        uint8 is kept. Wider integers are scaled by the largest value their bit depth allows
        (``bits``, else the dtype's) when any value exceeds 255 -- the same rule as 16-bit PNGs --
        and kept as they are otherwise; signed data is shifted by its minimum first. Floats in [0, 1]
        are multiplied by 255; other floats are min-max scaled. Floats holding NaN or infinity raise
    :class:`ReadError` ``non_finite`` (the build counts them under that reason).
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        a = arr.astype(np.int64)
        lo = int(a.min(initial=0))
        if lo < 0:
            a = a - lo
        top = int(a.max(initial=0))
        if top <= 255:
            return a.astype(np.uint8)
        nbits = bits or arr.dtype.itemsize * 8
        scale = (1 << nbits) - 1
        if top > scale:
            scale = top
        return np.clip(a * 255 // scale, 0, 255).astype(np.uint8)
    a = np.asarray(arr, np.float64)
    finite = np.isfinite(a)
    if not finite.all():  # a corrupt or masked array: never silently turned into black pixels
        raise ReadError("non_finite", f"{1 - finite.mean():.2%} of the pixels are NaN or infinite")
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1:
        return np.round(a * 255).astype(np.uint8)
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def as_frame_pixels(arr: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 uint8 -> HxW or HxWx3 (alpha dropped, grey stored as RGB made grey)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha
        arr = arr[..., 0]
    if arr.ndim == 3:
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
            arr = arr[..., 0]
    return np.ascontiguousarray(arr)
