"""Decode an image file's bytes into a numpy array, with a named reason when it cannot be.

Mode handling (documented rule, see docs/data.md "Pixel values"):
- 8-bit grayscale ``L`` is kept; ``1`` (bilevel) and ``LA`` become ``L``;
- 16/32-bit integer (``I;16*``, ``I``) and float ``F`` follow the rule of arrays
  (:func:`shards.readers.base.to_uint8`): integers kept when no value exceeds 255, otherwise scaled
  by the largest value of the smallest bit depth that holds the image's largest value (12-bit data
  in a 16-bit PNG by 4095); floats in [0, 1] times 255, others min-max; NaN or infinity is
  ``non_finite``;
- ``RGBA``/``LA``/``PA`` are composited onto black (scanner exports use transparency for the
  background), ``P`` (palette), ``CMYK``, ``YCbCr`` and others are converted to RGB.
The result is ``HxW`` uint8 (grayscale) or ``HxWx3`` uint8 (colour, to be checked for Doppler),
upright: an EXIF orientation (phone photos of a screen, some exports) is applied, as viewers do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shards.readers.base import ReadError, to_uint8
from sonodistill.errors import UserError

# Decoding a hostile or huge file must not exhaust memory on a worker.
Image.MAX_IMAGE_PIXELS = 16384 * 16384

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 2-8 mirrored and/or rotated
EXIF_IN_HEADER = ("JPEG", "MPO", "TIFF", "WEBP")  # formats whose EXIF is read with the header (a PNG's: "exif" in info)


def upright(img: Image.Image) -> Image.Image:
    """``img`` as every viewer (and every annotation tool) shows it: its EXIF orientation applied
    (decoded, the original closed); ``img`` itself when it has none. A mask drawn on the shown image
    then lines up with it."""
    if img.format not in EXIF_IN_HEADER and "exif" not in img.info:
        return img  # getexif() would decode a PNG's pixels to look for a chunk after them: no tag here
    try:
        turned = img.getexif().get(ORIENTATION, 1) not in (1, None)
    except Exception:  # a malformed EXIF block: the pixels as stored
        return img
    if not turned:
        return img
    with img:
        return ImageOps.exif_transpose(img)


class DecodeError(Exception):
    """Carries the rejection reason (``empty_file``, ``not_image``, ``truncated``, ``unreadable``, ``non_finite``)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Decoded:
    pixels: np.ndarray  # HxW (gray) or HxWx3 (colour), uint8
    orig_size: tuple[int, int]  # (width, height)
    orig_mode: str


def _to_uint8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("1",):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        # the array rule (shards.readers.base): the same pixels give the same result in any file format
        return to_uint8(np.asarray(img))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
        return np.asarray(img, dtype=np.uint8)
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """HxW uint8 as it is; HxWx3 RGB -> luma by ITU-R 601 in PIL's integer arithmetic (``convert("L")``)."""
    if pixels.ndim == 2:
        return pixels
    rgb = pixels.astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def read_pixels(path: str) -> np.ndarray:
    """An image file's pixels as :func:`decode_image` gives them; one ``UserError`` line naming the
    file when it cannot be read (for images a command was asked to read, not corpus items)."""
    try:
        with open(path, "rb") as fh:
            return decode_image(fh.read()).pixels
    except (OSError, DecodeError) as exc:
        raise UserError(f"{path}: cannot read image ({exc})") from None


def decode_image(data: bytes) -> Decoded:
    """Fully decode ``data``; raise :class:`DecodeError` with the reason on failure."""
    if len(data) == 0:
        raise DecodeError("empty_file")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not_image") from None
    except Exception as exc:  # a header PIL recognises but cannot parse
        raise DecodeError("unreadable", str(exc)) from None
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc).lower()
        reason = (
            "truncated" if ("truncat" in msg or "broken data stream" in msg or "premature" in msg) else "unreadable"
        )
        raise DecodeError(reason, str(exc)) from None
    except Image.DecompressionBombError as exc:
        raise DecodeError("unreadable", str(exc)) from None
    img = upright(img)
    size = img.size
    mode = img.mode
    try:
        pixels = _to_uint8(img)
    except ReadError as exc:  # non_finite
        raise DecodeError(exc.reason, exc.detail) from None
    except Exception as exc:
        raise DecodeError("unreadable", str(exc)) from None
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        # Grayscale stored as RGB (equal channels) is grayscale: keep one channel.
        if np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2]):
            pixels = np.ascontiguousarray(pixels[..., 0])
    return Decoded(pixels=pixels, orig_size=size, orig_mode=mode)
