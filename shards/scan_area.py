"""Find the scan area of a B-mode frame: the beam-formed image inside the black surround.

Rule (documented in the README, "Cleaning rules"): on a copy reduced to <= 256 px, smooth with a
5x5 box filter, threshold at ``threshold`` gray levels, open with a 5x5 square to detach burned-in
text, depth ticks and thin lines, keep the largest connected component and take its convex hull.
Linear (rectangle) and convex/sector (fan) scan areas are both convex, so the hull restores dark
anatomy touching the edge (cysts, chambers, shadows) that a plain threshold would cut away, while
annotations outside the hull are dropped. Written here because no library in the stack detects an
ultrasound scan area; skimage/scipy supply the morphology.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

WORK_SIDE = 256


@dataclass
class ScanArea:
    mask: np.ndarray  # bool HxW, full resolution
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), full resolution

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def detect_scan_area(gray: np.ndarray, threshold: int = 12) -> ScanArea:
    """Scan-area mask and bounding box of a grayscale uint8 frame (empty bbox when none)."""
    h, w = gray.shape
    step = max(1, int(np.ceil(max(h, w) / WORK_SIDE)))
    small = gray[::step, ::step].astype(np.float32)
    smooth = ndimage.uniform_filter(small, size=5, mode="constant")
    mask = smooth > threshold
    mask = ndimage.binary_opening(mask, structure=np.ones((5, 5), bool))
    labels, n = ndimage.label(mask)
    if n == 0:
        return ScanArea(np.zeros((h, w), bool), (0, 0, 0, 0))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    hull = convex_hull_image(largest)
    # The 5x5 box filter spread the lit area by 2 work pixels; take one back, keeping a 1 px margin
    # so the crop never eats into the image.
    hull = ndimage.binary_erosion(hull, iterations=1)
    full = np.repeat(np.repeat(hull, step, axis=0), step, axis=1)[:h, :w]
    ys, xs = np.nonzero(full)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return ScanArea(full, bbox)


def crop_to_scan_area(gray: np.ndarray, area: ScanArea) -> np.ndarray:
    """Crop to the scan area's bounding box and blank everything outside the scan area."""
    x0, y0, x1, y1 = area.bbox
    out = gray[y0:y1, x0:x1].copy()
    out[~area.mask[y0:y1, x0:x1]] = 0
    return out
