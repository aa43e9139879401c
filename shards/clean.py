"""One input image -> one cleaned, fixed-size grayscale sample (or the reason it was rejected).

Order: decode check -> 8-bit single channel (colour frames checked for Doppler first) -> scan-area
detection -> not-ultrasound rules -> crop to the scan area with the surround blanked (burned-in
overlays outside it removed) -> square letterbox -> resize -> PNG encode -> hashes.

Aspect rule (README "Cleaning rules"): the crop is padded with black to a square — width padding
split evenly left/right, height padding added at the bottom so the transducer stays at the top —
then resized to ``size`` x ``size``. Nothing is cut off and the pixel aspect ratio is preserved.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

from shards.decode import DecodeError, decode_image
from shards.quality import is_colour_frame, ultrasound_rejection
from shards.scan_area import crop_to_scan_area, detect_scan_area

MIN_SIDE = 32  # a scan area smaller than this is not a usable frame
PHASH_SIDE = 16  # 16x16 DCT = 256-bit hash; 64 bits cannot tell distinct speckle frames apart


@dataclass
class Cleaned:
    png: bytes
    pixel_sha1: str  # of the cleaned pixels: exact-duplicate key
    phash: int  # 256-bit perceptual hash of the decoded frame: near-duplicate key
    meta: dict


@dataclass
class Rejected:
    reason: str


def letterbox(gray: np.ndarray) -> np.ndarray:
    """Pad to a square with black: width padding centred, height padding at the bottom."""
    h, w = gray.shape
    side = max(h, w)
    out = np.zeros((side, side), np.uint8)
    x0 = (side - w) // 2
    out[:h, x0 : x0 + w] = gray
    return out


def encode_png(gray: np.ndarray, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def clean_image(data: bytes, size: int, png_level: int = 1) -> Cleaned | Rejected:
    """Clean one encoded image; never raises for bad data (returns :class:`Rejected`)."""
    try:
        dec = decode_image(data)
    except DecodeError as exc:
        return Rejected(exc.reason)
    pixels = dec.pixels
    if pixels.ndim == 3:
        if is_colour_frame(pixels):
            return Rejected("colour")
        pixels = np.asarray(Image.fromarray(pixels, "RGB").convert("L"))
    # Hash the whole decoded frame, not the crop: re-encoded or re-scaled copies of a frame can
    # crop a pixel differently, which moves a perceptual hash more than the copy itself does.
    phash = int(str(imagehash.phash(Image.fromarray(pixels, "L"), hash_size=PHASH_SIDE)), 16)
    area = detect_scan_area(pixels)
    reason = ultrasound_rejection(pixels, area)
    if reason:
        return Rejected(reason)
    x0, y0, x1, y1 = area.bbox
    if min(x1 - x0, y1 - y0) < MIN_SIDE:
        return Rejected("too_small")
    square = letterbox(crop_to_scan_area(pixels, area))
    img = Image.fromarray(square, "L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(img)
    return Cleaned(
        png=encode_png(out, png_level),
        pixel_sha1=hashlib.sha1(out.tobytes()).hexdigest(),
        phash=phash,
        meta={
            "orig_size": list(dec.orig_size),
            "orig_mode": dec.orig_mode,
            "sha1": hashlib.sha1(data).hexdigest(),
            "crop": [x0, y0, x1, y1],
        },
    )
