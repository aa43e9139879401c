"""One scan area per clip, found from the clip's first frames and applied to every frame of it.

The frames of a clip share one probe, one depth and one screen layout, so they share one scan area
and one crop. It is found on the median of the first ``CLIP_MASK_FRAMES`` sampled frames (the
evidence of a single frame, steadied: a blank or lifted-probe frame does not move it) with the rule
of :mod:`shards.scan_area`, where pixels that never change across those frames are user interface:
with at least ``CLIP_MIN_FRAMES`` frames, a core piece with less than ``PIECE_MIN_MOVING`` of its
pixels changing by more than ``MOTION_LEVEL`` grey levels is left out while another piece changes
(the cue of sonocrop and EchoNet's masking). A clip held still changes nowhere and keeps every
piece. Memory: the buffered frames (``CLIP_MASK_FRAMES`` at most), never the clip.
"""

from __future__ import annotations

import numpy as np

from shards.decode import to_gray
from shards.scan_area import (
    ScanArea,
    find_scan_area,
    loose_region,
    outside_zeroed,
    region_area,
    within_region,
    working_copy,
)
from shards.thresholds import CLIP_MIN_FRAMES, LIT_LEVEL, MOTION_LEVEL


def clip_scan_area(frames: list[np.ndarray], region: tuple[int, int, int, int] | None = None) -> ScanArea:
    """The scan area of a clip from its first frames (``HxW`` or ``HxWx3`` uint8, one size); the DICOM
    ``region`` when the file gives one that is not loose (:func:`shards.scan_area.within_region`)."""
    if region is not None and not loose_region(region, frames[0].shape):
        return region_area(to_gray(frames[0]), region)
    grays = [outside_zeroed(to_gray(f), region) for f in frames]
    smalls, step = [], 1
    for f, g in zip(frames, grays):
        small, step = working_copy(g, f if f.ndim == 3 else None)
        smalls.append(small)
    stack = np.stack(smalls)
    evidence = np.median(stack, axis=0).astype(np.uint8)
    moving = None
    if len(frames) >= CLIP_MIN_FRAMES:
        moving = (stack.max(0).astype(np.int16) - stack.min(0)) > MOTION_LEVEL

    def lit_full(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.any([g[y0:y1, x0:x1] > LIT_LEVEL for g in grays], axis=0)

    area = find_scan_area(evidence, step, lit_full, grays[0].shape, moving)
    area.source = "clip"
    return area if region is None else within_region(area, region, grays[0])
