"""Is this frame a copy of that image? Local features, then a geometric and a pixel check.

A copy of an evaluation image can reach a corpus under another name, re-encoded, resized (the
aspect ratio too), mirrored, cut to another crop of the same scan, and through the shards' own
cleaning (scan-area crop, letterbox, resize). A global perceptual hash does not survive a crop
(measured on real frames: 2 % cut from each side moves a 256-bit pHash by 38 bits, 5 % by 85, as
far as distinct frames), so matching uses local features instead:

1. *canonical view*: both sides go through the shard cleaning's geometry: scan-area crop with the
   surround blanked, square letterbox, ``MATCH_SIDE`` px (:func:`canonical`); a shard sample is
   already in this form;
2. *keypoints*: ORB (OpenCV), a scale pyramid of binary descriptors (:func:`features`); a mirrored
   copy is found by also querying the mirrored frame;
3. *geometry*: correspondences (descriptors within ``MAX_HAMMING`` bits) must agree on one
   axis-aligned scale-and-shift map (x and y scaled apart: resizing may change the aspect ratio),
   found by RANSAC (:func:`fit_map`), with at least ``MIN_INLIERS`` inliers;
4. *pixels*: under that map the two images must correlate (NCC at least ``MIN_NCC`` on 64 px
   thumbnails) over an overlap covering at least ``MIN_OVERLAP`` of one of them
   (:func:`verify`), which rejects images that share only burned-in text or a ruler.

The thresholds sit between measured distributions (docs/data.md "Evaluation overlap"; the bench is
``bench/decontam.py``). Finding candidates among many reference images is :mod:`shards.copyindex`.
Written here because no library in the stack matches copies under crops: OpenCV supplies ORB,
NumPy the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from shards.clean import letterbox
from shards.decode import to_gray
from shards.scan_area import crop_to_scan_area, detect_scan_area
from shards.thresholds import MIN_SCAN_SIDE

MATCHER = 1  # version of the matching rules: a change that alters which frames match bumps it
MATCH_SIDE = 256  # canonical side, pixels (the default shard size)
THUMB = 128  # side of the thumbnails the pixel check compares
DETAIL_SIGMA = 3.0  # px at THUMB: the blur subtracted to keep the fine structure
EDGE = 7  # px at THUMB: the scan-area edge left out of the pixel check
N_FEATURES = 300  # ORB keypoints per image
MAX_HAMMING = 64  # of 256 bits: correspondences further apart are not counted
TOLERANCE = 4.0  # pixels at MATCH_SIDE: a correspondence within this of the map is an inlier
MIN_INLIERS = 8
MIN_NCC = 0.6
MIN_OVERLAP = 0.5  # of the smaller scan area
CONTENT_LEVEL = 2  # thumbnail pixels above this are scan area (the letterbox and surround are 0)
SCALE_RANGE = (0.25, 4.0)  # accepted scale between copies, per axis
MAX_ASPECT_CHANGE = 2.0  # accepted ratio of the x and y scales
RANSAC_TRIALS = 256
MIN_SPAN = 16.0  # px at MATCH_SIDE: a pair of points this far apart (per axis) or more proposes a map
REFITS = 3


@dataclass(frozen=True)
class Features:
    xy: np.ndarray  # float32 [n, 2] keypoint positions at MATCH_SIDE
    desc: np.ndarray  # uint8 [n, 32] ORB descriptors (256 bits)


@dataclass(frozen=True)
class Map:
    """``reference = scale * query + shift``, per axis (x, y)."""

    sx: float
    sy: float
    tx: float
    ty: float


@dataclass(frozen=True)
class Verdict:
    inliers: int
    ncc: float
    overlap: float
    map: Map | None

    @property
    def copy(self) -> bool:
        return self.inliers >= MIN_INLIERS and self.ncc >= MIN_NCC and self.overlap >= MIN_OVERLAP


def canonical(pixels: np.ndarray) -> np.ndarray:
    """``HxW`` or ``HxWx3`` uint8 -> the shard cleaning's view at ``MATCH_SIDE``: scan-area crop
    (surround blanked), square letterbox, resize. A frame without a usable scan area is letterboxed
    whole (an evaluation image the cleaning rules would reject is still matched)."""
    gray = to_gray(pixels)
    area = detect_scan_area(gray, rgb=pixels if pixels.ndim == 3 else None)
    x0, y0, x1, y1 = area.bbox
    crop = crop_to_scan_area(gray, area) if min(x1 - x0, y1 - y0) >= MIN_SCAN_SIDE else gray
    return resized(letterbox(crop))


def resized(gray: np.ndarray, side: int = MATCH_SIDE) -> np.ndarray:
    if gray.shape == (side, side):
        return gray
    return np.asarray(Image.fromarray(gray).resize((side, side), Image.Resampling.BILINEAR))


def thumbnail(canon: np.ndarray) -> np.ndarray:
    """The ``THUMB`` px view the pixel check compares (box filter: every pixel counts)."""
    return np.asarray(Image.fromarray(canon).resize((THUMB, THUMB), Image.Resampling.BOX))


_ORB = None


def stretched(canon: np.ndarray) -> np.ndarray:
    """Scan-area grey levels stretched from their 1st-99th percentile to 0-255: a dark or low-gain
    copy yields as many keypoints as a bright one (descriptors compare pixels, so they keep)."""
    inside = canon[canon > 0]
    if inside.size == 0:
        return np.ascontiguousarray(canon)
    lo, hi = np.percentile(inside, [1, 99])
    if hi <= lo:
        return np.ascontiguousarray(canon)
    out = np.clip((canon.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    return np.where(canon > 0, out, 0).astype(np.uint8)


def features(canon: np.ndarray) -> Features:
    """ORB keypoints and descriptors of a canonical view (deterministic)."""
    global _ORB
    import cv2

    if _ORB is None:
        cv2.setNumThreads(1)  # one thread per worker process; the build runs many
        # Low FAST threshold and small patches: B-mode is low-contrast and a copy may be small.
        _ORB = cv2.ORB_create(
            nfeatures=N_FEATURES, scaleFactor=1.2, nlevels=8, edgeThreshold=15, patchSize=15, fastThreshold=5
        )
    kps, desc = _ORB.detectAndCompute(stretched(canon), None)
    if desc is None or not kps:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
    return Features(np.array([k.pt for k in kps], np.float32), desc)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between rows of two uint8 descriptor arrays of the same shape."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int32)


def fit_map(p: np.ndarray, q: np.ndarray, seed: int = 0) -> tuple[int, Map | None]:
    """The axis-aligned scale-and-shift map ``q ~ s * p + t`` most correspondences agree on
    (RANSAC over pairs, seeded: the same input gives the same map); returns (inliers, map)."""
    n = len(p)
    if n < 2:
        return 0, None
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, n, RANSAC_TRIALS), rng.integers(0, n, RANSAC_TRIALS)
    dp = p[i] - p[j]
    ok = (np.abs(dp) > MIN_SPAN).all(axis=1)  # close points give a noisy scale
    i, j, dp = i[ok], j[ok], dp[ok]
    s = (q[i] - q[j]) / dp
    lo, hi = SCALE_RANGE
    ratio = s[:, 0] / np.where(s[:, 1] == 0, np.inf, s[:, 1])
    ok = (s > lo).all(axis=1) & (s < hi).all(axis=1) & (ratio < MAX_ASPECT_CHANGE) & (ratio > 1 / MAX_ASPECT_CHANGE)
    s, i = s[ok], i[ok]
    if len(s) == 0:
        return 0, None
    t = q[i] - s * p[i]
    err = np.abs(s[:, None, :] * p[None] + t[:, None, :] - q[None])  # [trial, point, axis]
    inl = (err < TOLERANCE).all(axis=2)
    best = int(np.argmax(inl.sum(axis=1)))
    m = Map(float(s[best, 0]), float(s[best, 1]), float(t[best, 0]), float(t[best, 1]))
    for _ in range(REFITS):  # a pair's map is rough; least squares through its inliers is not
        m = _refit(p[_inliers(p, q, m)], q[_inliers(p, q, m)]) or m
    return int(_inliers(p, q, m).sum()), m


def _inliers(p: np.ndarray, q: np.ndarray, m: Map) -> np.ndarray:
    return (np.abs(p * [m.sx, m.sy] + [m.tx, m.ty] - q) < TOLERANCE).all(axis=1)


def _refit(p: np.ndarray, q: np.ndarray) -> Map | None:
    """Least-squares scale and shift per axis through the inliers (None when they are degenerate)."""
    if len(p) < 3 or np.ptp(p[:, 0]) < MIN_SPAN or np.ptp(p[:, 1]) < MIN_SPAN:
        return None
    (sx, tx), (sy, ty) = (np.polyfit(p[:, k], q[:, k], 1) for k in (0, 1))
    return Map(float(sx), float(sy), float(tx), float(ty))


def detail(thumb: np.ndarray) -> np.ndarray:
    """The thumbnail's fine structure (the image less its blur): what two copies share and two
    distinct frames of the same anatomy do not (their coarse brightness pattern is alike)."""
    import cv2

    f = thumb.astype(np.float32)
    return f - cv2.GaussianBlur(f, (0, 0), DETAIL_SIGMA)


def correlate(query_thumb: np.ndarray, ref_thumb: np.ndarray, m: Map) -> tuple[float, float]:
    """(NCC of the fine structure, overlap) of the reference pulled onto the query through ``m``:
    NCC over the pixels where both show scan area (away from its edge); overlap as the larger share
    of either image's scan area."""
    import cv2

    k = THUMB / MATCH_SIDE
    # query thumbnail pixel u -> canonical (u + 0.5) / k - 0.5 -> reference s * x + t -> its thumbnail
    cx = 0.5 * m.sx * (1 - k) + k * m.tx + 0.5 * k - 0.5
    cy = 0.5 * m.sy * (1 - k) + k * m.ty + 0.5 * k - 0.5
    ax = np.array([[m.sx, 0.0, cx], [0.0, m.sy, cy]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    pulled = cv2.warpAffine(ref_thumb.astype(np.float32), ax, (THUMB, THUMB), flags=flags, borderValue=0)
    pulled_detail = cv2.warpAffine(detail(ref_thumb), ax, (THUMB, THUMB), flags=flags, borderValue=0)
    inside = cv2.warpAffine(
        np.ones(ref_thumb.shape, np.uint8), ax, (THUMB, THUMB), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    )
    qc = query_thumb > CONTENT_LEVEL
    both = qc & (pulled > CONTENT_LEVEL) & (inside > 0)
    ref_area = max(1.0, float((ref_thumb > CONTENT_LEVEL).sum()))
    overlap = max(both.sum() / max(1, int(qc.sum())), min(1.0, both.sum() * m.sx * m.sy / ref_area))
    # the blur mixes in the black surround near the scan area's edge: compare inside it only
    core = cv2.erode(both.astype(np.uint8), np.ones((EDGE, EDGE), np.uint8)) > 0
    if core.sum() < 64:
        return 0.0, float(overlap)
    a, b = detail(query_thumb)[core].astype(np.float64), pulled_detail[core].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return (float((a * b).sum() / den) if den > 0 else 0.0), float(overlap)


def verify(p: np.ndarray, q: np.ndarray, query_thumb: np.ndarray, ref_thumb: np.ndarray) -> Verdict:
    """The geometric and pixel check of correspondences ``p`` (query) -> ``q`` (reference)."""
    inliers, m = fit_map(p, q)
    if m is None or inliers < MIN_INLIERS:
        return Verdict(inliers, 0.0, 0.0, m)
    ncc, overlap = correlate(query_thumb, ref_thumb, m)
    return Verdict(inliers, ncc, overlap, m)
