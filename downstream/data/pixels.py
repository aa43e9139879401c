"""Decoding labelled images to grayscale arrays and masks to binary arrays.

Ultrasound is grayscale, but datasets store it as 8-bit L, RGB with three equal channels
(BUSI), 16-bit PNG or JPEG; everything is decoded to uint8 ``HxW`` (16-bit by the shard builder's
rule, :func:`shards.readers.base.levels_of`). Masks are binarised per file on their own values
(:func:`binarize`: class indices, a few-valued map's bright labels, a noisy mask's bright part; a
:class:`LabelMask` -- ``reader.mask_values`` -- by the label values that count as foreground) and
several mask files of one image are merged by union.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from downstream.data.record import Record, Source, describe_source, open_source, source_stamp
from shards.readers.base import levels_of, to_uint8
from sonodistill.errors import UserError

WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16- and 32-bit integer images
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
MAX_CLASS = 20  # a mask whose values all lie at or below this holds class indices (0/1, 0/1/2)
MAX_LABELS = 8  # distinct values of a clean label map (0/255, a colour-coded mask read as grey)


def _to_gray(img: Image.Image, where: str, raw: bool = False) -> np.ndarray:
    """uint8 grey by the shard builder's rule (values up to 255 kept, else scaled by the bit depth
    that holds the largest: 12-bit data in a 16-bit PNG by 4095); ``raw``: a 16-bit mask's own
    values (label maps, 0/1 masks), unscaled."""
    if img.mode in WIDE_MODES:
        a = np.asarray(img).astype(np.int64)
        return a if raw else to_uint8(a, None, levels_of([a]))
    if img.mode == "F":
        raise UserError(f"{where}: floating-point images are not supported (expected 8/16-bit)")
    if img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(img, raw)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _flatten_alpha(img: Image.Image, mask: bool) -> np.ndarray:
    """Grey of an image with transparency composited onto black, as the shard builder reads it
    (a transparent background is no signal); a mask drawn in the alpha channel alone (its colours
    all black) is that channel."""
    rgba = img.convert("RGBA")
    grey = np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("L"))
    alpha = np.asarray(rgba.getchannel("A"))
    if mask and not grey.any() and alpha.min() < alpha.max():
        return alpha.copy()
    return grey


def _decode(src: Source, raw: bool = False) -> np.ndarray:
    where = describe_source(src)
    try:
        with open_source(src) as img:
            img.load()
            return _to_gray(img, where, raw)
    except UserError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for missing/truncated/unknown files
        raise UserError(f"{where}: cannot read image ({exc})") from None


def load_gray(src: Source) -> np.ndarray:
    """The image as uint8 ``HxW`` grayscale."""
    return _decode(src)


def mask_values(mask: np.ndarray) -> np.ndarray:
    """The distinct values of a mask file (a histogram for 8-bit masks: several times np.unique's speed)."""
    if mask.dtype == np.uint8:
        return np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    return np.unique(mask)


def binarize(mask: np.ndarray) -> np.ndarray:
    """Foreground of one mask file on its own values: every non-zero value of class indices (all
    values up to ``MAX_CLASS``); every value above a tenth of the maximum of a clean label map (at
    most ``MAX_LABELS`` distinct values: 0/255, colour-coded masks whose dark colours read as low
    grey; JPEG blocks' faint noise stays out); the part above half the maximum of any other mask
    (JPEG-noisy or anti-aliased edges)."""
    values = mask_values(mask)
    top = int(values[-1])
    if top <= MAX_CLASS:
        return mask > 0
    return mask > (top // 10 if len(values) <= MAX_LABELS else top // 2)


@dataclass(frozen=True)
class LabelMask:
    """A label-map mask made binary by the label values that count as foreground
    (``reader.mask_values``: CAMUS structures, PSFHS symphysis = 1 / head = 2)."""

    src: Source
    values: tuple[int, ...] = ()  # () = every non-zero value

    def open(self) -> Image.Image:
        return open_source(self.src)

    def describe(self) -> str:
        return describe_source(self.src) + (f"[values {','.join(map(str, self.values))}]" if self.values else "")

    def stamp(self) -> str:
        return source_stamp(self.src)

    def binarize(self, mask: np.ndarray) -> np.ndarray:
        return np.isin(mask, self.values) if self.values else mask > 0


def load_mask(srcs: Sequence[Source], size: tuple[int, int] | None = None) -> np.ndarray:
    """Union of the binarised mask files as bool ``HxW``; ``size`` (W, H) is checked if given."""
    if not srcs:
        raise UserError("load_mask: no mask files given")
    out: np.ndarray | None = None
    for src in srcs:
        # a label map (UltraBench's multi-class masks) knows its foreground values
        m = src.binarize(_decode(src, raw=True)) if hasattr(src, "binarize") else binarize(_decode(src, raw=True))
        if size is not None and (m.shape[1], m.shape[0]) != tuple(size):
            raise UserError(
                f"{describe_source(src)}: mask is {m.shape[1]}x{m.shape[0]} but its image is {size[0]}x{size[1]}"
            )
        out = m if out is None else (out | m)
        size = (m.shape[1], m.shape[0])
    return out


def check_mask_values(records: Sequence[Record], values: Sequence[int]) -> None:
    """Some mask holds one of ``values`` (``reader.mask_values``): a value no mask holds would train
    and score every image on an empty mask. Reads masks until one does (the first, as a rule)."""
    found: set[int] = set()
    for r in records:
        for m in r.masks:
            held = mask_values(_decode(m, raw=True))
            if np.isin(held, values).any():
                return
            found.update(int(v) for v in held)
    shown = ", ".join(map(str, sorted(found)[:20])) + (", ..." if len(found) > 20 else "")
    raise UserError(f"reader.mask_values {list(values)}: no mask holds these values (values found: {shown})")


def image_size(src: Source) -> tuple[int, int]:
    """(W, H) from the file header (no full decode)."""
    try:
        with open_source(src) as img:
            return img.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{describe_source(src)}: cannot read image ({exc})") from None


def check_records(records: Sequence[Record], masks: bool = True) -> None:
    """Every image opens and (``masks``: for a task that reads them) every mask has its image's size
    (headers only: fast)."""
    for r in records:
        size = image_size(r.image)
        for m in r.masks if masks else ():
            msize = image_size(m)
            if msize != size:
                raise UserError(
                    f"{describe_source(m)}: mask is {msize[0]}x{msize[1]} but its image "
                    f"{describe_source(r.image)} is {size[0]}x{size[1]}"
                )
