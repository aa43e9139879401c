"""One decoded frame -> one cleaned, fixed-size grayscale sample (or the reason it was rejected).

Order: 8-bit single channel (colour kept aside) -> scan area (given for the frames of a clip: one
per clip, :mod:`shards.clip_mask`; otherwise found in the frame, inside the DICOM region when the
file gives one: :mod:`shards.scan_area`) -> colour judged *inside the scan area*, on filled areas
only (:mod:`shards.colour`) -> not-ultrasound / no-tissue rules (:mod:`shards.quality`) -> crop to
the scan area with the surround blanked (overlays outside it removed) -> annotations inside it
found (:mod:`shards.annotations`) and kept, inpainted or the frame dropped, as the source says ->
square letterbox -> resize -> encode (PNG, JPEG or raw: :mod:`shards.codec`) -> hashes. Every
rejection carries the rule's measured values, which the build writes to ``rejects.jsonl``; every
sample carries ``annotations``, the marks found as ``{kind, box}`` in the output image's pixels.

Aspect rule (docs/data.md "Cleaning rules"): the crop is padded with black to a square -- width
padding split evenly left/right, height padding added at the bottom so the transducer stays at the
top -- then resized to ``size`` x ``size``. Nothing is cut off and the pixel aspect ratio is
preserved."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import imagehash
import numpy as np
from PIL import Image

from shards.annotations import Mark, detect_marks, grey_searched, inpaint
from shards.codec import Codec
from shards.colour import area_colour, colour_measures, is_colour
from shards.decode import DecodeError, decode_image, to_gray
from shards.quality import frame_rejection, grain, graphic_rejection
from shards.scan_area import ScanArea, crop_to_scan_area, frame_scan_area
from shards.thresholds import MIN_GRAIN

PHASH_SIDE = 16  # 16x16 DCT = 256-bit hash; 64 bits cannot tell distinct speckle frames apart
PHASH_REDUCED_MIN = 384  # px: a frame is box-reduced to no less than this a side before it is hashed
ACTIONS = ("keep", "inpaint", "drop")  # what becomes of a frame with annotations (per source)


@dataclass
class Cleaned:
    data: bytes  # the encoded sample image (``Codec.ext`` says which member it is)
    pixel_sha1: str  # of the cleaned pixels: exact-duplicate key
    phash: int  # 256-bit perceptual hash of the decoded frame: near-duplicate key
    meta: dict


@dataclass
class Rejected:
    reason: str
    values: dict = field(default_factory=dict)  # the rule's measured values (rejects.jsonl)


def letterbox(gray: np.ndarray) -> np.ndarray:
    """Pad to a square with black: width padding centred, height padding at the bottom."""
    h, w = gray.shape
    side = max(h, w)
    out = np.zeros((side, side), np.uint8)
    x0 = (side - w) // 2
    out[:h, x0 : x0 + w] = gray
    return out


def output_box(box: tuple[int, int, int, int], crop_shape: tuple[int, int], size: int) -> list[int]:
    """A box in the crop's pixels -> the same box in the output image's pixels (letterbox, resize)."""
    h, w = crop_shape
    side = max(h, w)
    x_pad, scale = (side - w) // 2, size / side
    x0, y0, x1, y1 = box
    out = [int((x0 + x_pad) * scale), int(y0 * scale), int(np.ceil((x1 + x_pad) * scale)), int(np.ceil(y1 * scale))]
    return [min(max(v, 0), size) for v in out]


def phash256(gray: np.ndarray) -> int:
    """imagehash's pHash of a frame box-reduced first to at least ``PHASH_REDUCED_MIN`` px a side: its
    Lanczos resize to 64 px costs 4.2 ms on a 1280x960 frame, 1.7 ms with the reduction (on 394 real
    frames the hash moves by 0.18 bits of 256 on average, 6 at most; a half-size copy moves it 1.2)."""
    img = Image.fromarray(gray, "L")
    factor = min(gray.shape) // PHASH_REDUCED_MIN
    if factor > 1:
        img = img.reduce(factor)
    return int(str(imagehash.phash(img, hash_size=PHASH_SIDE)), 16)


def _marks(gray: np.ndarray, area: ScanArea, col: np.ndarray | None, grained: bool) -> tuple[np.ndarray, list[Mark]]:
    """The crop (surround blanked) and the annotations found inside it (grey ones only in a frame
    large enough: :func:`shards.annotations.grey_searched`). None are sought in pixel noise (not
    ``grained``), which the rules reject: every speck of it reads as a mark (thousands a frame)."""
    crop = crop_to_scan_area(gray, area)
    if not grained:
        return crop, []
    return crop, detect_marks(crop, area.mask_in_bbox(), col, grey=grey_searched(gray.shape))


def _tissue_rules(
    gray: np.ndarray, area: ScanArea, clean_crop: np.ndarray | None, known_grain: float | None
) -> tuple[str | None, dict]:
    """The not-ultrasound and no-tissue rules, judged with the marks inpainted (they are no tissue);
    ``known_grain`` is the frame's own, reused when no mark changed its pixels."""
    if clean_crop is None or not area.small_mask.any():
        return frame_rejection(gray, area, known_grain)
    x0, y0, x1, y1 = area.bbox
    gray = gray.copy()
    gray[y0:y1, x0:x1] = np.where(area.mask_in_bbox(), clean_crop, gray[y0:y1, x0:x1])
    return frame_rejection(gray, area)


def _sample(crop: np.ndarray, size: int, codec: Codec) -> tuple[bytes, str]:
    img = Image.fromarray(letterbox(crop), "L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(img)
    return codec.encode(out), hashlib.sha1(out.tobytes()).hexdigest()


def clean_frame(
    pixels: np.ndarray,
    size: int,
    codec: Codec = Codec(),
    region: tuple[int, int, int, int] | None = None,
    area: ScanArea | None = None,
    annotations: str = "inpaint",
) -> Cleaned | Rejected:
    """Clean one decoded frame (``HxW`` or ``HxWx3`` uint8), encoded with ``codec``; never raises
    for bad pixels. ``area``: the clip's scan area; ``annotations``: keep | inpaint | drop."""
    gray = to_gray(pixels)
    rgb = pixels if pixels.ndim == 3 else None
    if area is None:
        area = frame_scan_area(gray, rgb, region)
    values: dict = {}
    col = None if rgb is None or not area.small_mask.any() else area_colour(rgb, area)
    if rgb is not None:
        values.update(colour_measures(rgb, area, *(col or (None, None))))
        if is_colour(values):
            return Rejected("colour", values)
        reason, graphic = graphic_rejection(rgb, gray, area)
        values.update(graphic)
        if reason:
            return Rejected(reason, values)
    has_area = area.small_mask.any()
    grained = grain(gray, area) if has_area else None
    crop, marks = _marks(gray, area, None if col is None else col[1], grained >= MIN_GRAIN) if has_area else (None, [])
    inpainted = inpaint(crop, marks) if marks else crop
    reason, measured = _tissue_rules(gray, area, inpainted if marks else None, grained)
    values.update(measured)
    if reason:
        return Rejected(reason, values)
    found = [{"kind": m.kind, "box": output_box(m.box, crop.shape, size)} for m in marks]
    if marks and annotations == "drop":
        return Rejected("annotated", {"kinds": sorted({m.kind for m in marks}), "annotations": found})
    if annotations == "inpaint":
        crop = inpainted
    data, sha1 = _sample(crop, size, codec)
    x0, y0, x1, y1 = area.bbox
    meta = {"crop": [x0, y0, x1, y1], "crop_source": area.source, "scale": max(x1 - x0, y1 - y0) / size}
    if not grey_searched(gray.shape):
        meta["grey_marks_searched"] = False  # too small a frame: coloured marks only
    # Hash the whole decoded frame, not the crop: re-encoded or re-scaled copies of a frame can
    # crop a pixel differently, which moves a perceptual hash more than the copy itself does.
    return Cleaned(data=data, pixel_sha1=sha1, phash=phash256(gray), meta={**meta, "annotations": found})


def clean_image(data: bytes, size: int, codec: Codec = Codec(), annotations: str = "inpaint") -> Cleaned | Rejected:
    """Clean one encoded single image (PNG, JPEG, ...); never raises for bad data."""
    try:
        dec = decode_image(data)
    except DecodeError as exc:
        return Rejected(exc.reason)
    res = clean_frame(dec.pixels, size, codec, annotations=annotations)
    if isinstance(res, Cleaned):
        res.meta = {
            "orig_size": list(dec.orig_size),
            "orig_mode": dec.orig_mode,
            "sha1": hashlib.sha1(data).hexdigest(),
            **res.meta,
        }
        res.meta.pop("scale", None)
    return res
