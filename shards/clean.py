"""One decoded frame -> one cleaned, fixed-size grayscale sample (or the reason it was rejected).

Order: 8-bit single channel (colour kept aside) -> scan area (a DICOM B-mode region when the file
gives one, otherwise the heuristic of :mod:`shards.scan_area`, which ignores coloured pixels and UI
bands) -> colour judged *inside the scan area* -> not-ultrasound / no-tissue rules -> crop to the
scan area with the surround blanked (burned-in overlays outside it removed) -> square letterbox ->
resize -> encode (PNG, JPEG or raw: :mod:`shards.codec`) -> hashes. Every rejection carries the
rule's measured values, which the build writes to ``rejects.jsonl``.

Aspect rule (docs/data.md "Cleaning rules"): the crop is padded with black to a square — width
padding split evenly left/right, height padding added at the bottom so the transducer stays at the
top — then resized to ``size`` x ``size``. Nothing is cut off and the pixel aspect ratio is
preserved."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import imagehash
import numpy as np
from PIL import Image

from shards.codec import Codec
from shards.decode import DecodeError, decode_image
from shards.quality import colour_measures, frame_rejection, is_colour
from shards.scan_area import crop_to_scan_area, detect_scan_area, region_area

MIN_SIDE = 32  # a scan area smaller than this is not a usable frame
PHASH_SIDE = 16  # 16x16 DCT = 256-bit hash; 64 bits cannot tell distinct speckle frames apart


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


def to_gray(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    return np.asarray(Image.fromarray(pixels, "RGB").convert("L"))


def phash256(gray: np.ndarray) -> int:
    return int(str(imagehash.phash(Image.fromarray(gray, "L"), hash_size=PHASH_SIDE)), 16)


def clean_frame(
    pixels: np.ndarray,
    size: int,
    codec: Codec = Codec(),
    region: tuple[int, int, int, int] | None = None,
) -> Cleaned | Rejected:
    """Clean one decoded frame (``HxW`` or ``HxWx3`` uint8), encoded with ``codec``; never raises
    for bad pixels."""
    gray = to_gray(pixels)
    rgb = pixels if pixels.ndim == 3 else None
    if region is not None:
        area, crop_source = region_area(gray, region), "dicom_region"
    else:
        area, crop_source = detect_scan_area(gray, rgb=rgb), "heuristic"
    values: dict = {}
    if rgb is not None:
        values.update(colour_measures(rgb, area))
        if is_colour(values):
            return Rejected("colour", values)
    reason, measured = frame_rejection(gray, area)
    values.update(measured)
    if reason:
        return Rejected(reason, values)
    x0, y0, x1, y1 = area.bbox
    if min(x1 - x0, y1 - y0) < MIN_SIDE:
        values["crop"] = [x0, y0, x1, y1]
        return Rejected("too_small", values)
    # Hash the whole decoded frame, not the crop: re-encoded or re-scaled copies of a frame can
    # crop a pixel differently, which moves a perceptual hash more than the copy itself does.
    phash = phash256(gray)
    square = letterbox(crop_to_scan_area(gray, area))
    img = Image.fromarray(square, "L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(img)
    return Cleaned(
        data=codec.encode(out),
        pixel_sha1=hashlib.sha1(out.tobytes()).hexdigest(),
        phash=phash,
        meta={"crop": [x0, y0, x1, y1], "crop_source": crop_source, "scale": max(x1 - x0, y1 - y0) / size},
    )


def clean_image(data: bytes, size: int, codec: Codec = Codec()) -> Cleaned | Rejected:
    """Clean one encoded single image (PNG, JPEG, ...); never raises for bad data."""
    try:
        dec = decode_image(data)
    except DecodeError as exc:
        return Rejected(exc.reason)
    res = clean_frame(dec.pixels, size, codec)
    if isinstance(res, Cleaned):
        res.meta = {
            "orig_size": list(dec.orig_size),
            "orig_mode": dec.orig_mode,
            "sha1": hashlib.sha1(data).hexdigest(),
            **res.meta,
        }
        res.meta.pop("scale", None)
    return res
