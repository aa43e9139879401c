"""What every reader returns and how it fails (the options it takes: :class:`shards.options.SourceOptions`).

A reader turns one input file into a :class:`Media`: a single image or a clip (multi-frame DICOM,
video, 2D+t sequence, volume, array), whose frames are yielded *already sampled* and one at a
time, so a long clip never sits in memory. Pixels come out as ``HxW`` (grayscale) or ``HxWx3``
(colour, to be judged by the colour rule) uint8 arrays, after the format's own photometric rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
    reject: ReadError | None = None  # this frame alone cannot be used (``pixels`` is empty); the clip goes on


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


@dataclass(frozen=True)
class Levels:
    """How one image's or clip's pixel values map to uint8: ``(value - lo) * 255 / span``, clipped.

    Found once per clip (:func:`levels_of` over its sampled frames), so every frame of a clip is
    scaled alike and a dark frame stays dark beside a bright one."""

    lo: float = 0.0
    span: float = 255.0  # 0: a constant image (black)
    integer: bool = True  # integers are scaled with floor division (exact for span 255: kept as is)


def levels_of(arrays: Iterable[np.ndarray], bits: int | None = None) -> Levels:
    """The documented uint8 rule (docs/data.md "Readers") over every array given.

    Integers: shifted by their minimum when it is negative; kept as they are when no value exceeds
    255, otherwise scaled by the largest value of ``bits`` bits (DICOM's BitsStored) or, without
    it, of the smallest bit depth that holds the largest value (12-bit data in uint16 is scaled
    by 4095, not 65535). Floats (finite values only): in [0, 1] times 255, otherwise min-max."""
    lo = hi = None
    integer = True
    for arr in arrays:
        if np.issubdtype(arr.dtype, np.floating):
            integer = False
            arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            continue
        a_lo, a_hi = float(arr.min()), float(arr.max())
        lo = a_lo if lo is None else min(lo, a_lo)
        hi = a_hi if hi is None else max(hi, a_hi)
    if lo is None or hi is None:
        return Levels(0.0, 255.0 if integer else 0.0, integer)
    if integer:
        shift = min(0, int(lo))
        top = int(hi) - shift
        if top <= 255:
            return Levels(shift, 255.0)
        full = (1 << (bits or top.bit_length())) - 1
        return Levels(shift, float(max(full, top)))
    if lo >= 0 and hi <= 1:
        return Levels(0.0, 1.0, False)
    return Levels(lo, max(hi - lo, 0.0), False)


def to_uint8(arr: np.ndarray, bits: int | None = None, levels: Levels | None = None) -> np.ndarray:
    """Integer/float pixels -> uint8 by ``levels`` (a clip's, from :func:`levels_of`; without
    them, this array's own). uint8 is kept, bool is 0/255. Floats holding NaN or infinity raise
    :class:`ReadError` ``non_finite``: never silently turned into black pixels (a clip's reader
    rejects that frame alone)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if not np.issubdtype(arr.dtype, np.integer):
        a = np.asarray(arr, np.float64)
        finite = np.isfinite(a)
        if not finite.all():
            raise ReadError("non_finite", f"{(~finite).sum()} of {a.size} pixels are NaN or infinite")
    levels = levels or levels_of([arr], bits)
    if levels.span <= 0:
        return np.zeros(arr.shape, np.uint8)
    if np.issubdtype(arr.dtype, np.integer) and levels.integer:
        a = arr.astype(np.int64) - int(levels.lo)
        return np.clip(a * 255 // int(levels.span), 0, 255).astype(np.uint8)
    a = (np.asarray(arr, np.float64) - levels.lo) * (255.0 / levels.span)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def converted(arr: np.ndarray, index: int, levels: Levels | None = None, bits: int | None = None) -> Frame:
    """One decoded frame as a :class:`Frame`; a frame with NaN or infinite pixels becomes a
    rejected frame (``non_finite``) so that the clip's other frames are still read."""
    try:
        return Frame(as_frame_pixels(to_uint8(arr, bits, levels)), index)
    except ReadError as exc:
        if exc.reason != "non_finite":
            raise
        return Frame(np.zeros((0, 0), np.uint8), index, exc)


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
