"""Mask-derived views of CSA-MoE-Net (paper 004, §II.A), computed at the model resolution.

- core     = image x (mask eroded ``iterations`` times with a 3x3 square): the solid lesion body;
- boundary = image x (mask dilated ``iterations`` times minus the mask): a band just outside
  the lesion edge (margin, spiculation);
- image    = the whole image.

The mask is resized to the image (nearest) before this, as in the paper. Morphology is OpenCV's;
outside the image counts as neither foreground nor background (OpenCV's border default), so a
lesion touching the edge is not eroded from that side.
"""

from __future__ import annotations

import cv2
import numpy as np

KERNEL = np.ones((3, 3), np.uint8)


def core_mask(mask: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Bool mask eroded ``iterations`` times (3x3)."""
    return cv2.erode(mask.astype(np.uint8), KERNEL, iterations=iterations).astype(bool)


def boundary_band(mask: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Bool band: mask dilated ``iterations`` times (3x3) minus the mask (outside the lesion)."""
    m = mask.astype(np.uint8)
    return cv2.dilate(m, KERNEL, iterations=iterations).astype(bool) & ~m.astype(bool)


def mask_views(image: np.ndarray, mask: np.ndarray, iterations: int = 5) -> np.ndarray:
    """``(3, H, W)`` stack of image, core and boundary views, same dtype as ``image`` (``HxW``)."""
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
    core = image * core_mask(mask, iterations).astype(image.dtype)
    band = image * boundary_band(mask, iterations).astype(image.dtype)
    return np.stack([image, core, band])
