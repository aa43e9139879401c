"""How frames are stored on disk, as real collections do: 8-bit grey PNG, RGB PNG with three equal
channels, JPEG (quality ~90), 16-bit PNG; and a temp-name-then-rename write so an interrupted run
never leaves a truncated image behind."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = ("png8", "png_rgb", "jpeg", "png16")
EXTENSIONS = {"png8": ".png", "png_rgb": ".png", "jpeg": ".jpg", "png16": ".png"}


def encode(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """Encode a uint8 grey (H, W) or colour (H, W, 3) image in ``fmt`` (colour stays colour)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown storage format {fmt!r}")
    buf = io.BytesIO()
    if fmt == "png16":
        if image.ndim == 3:
            raise ValueError("png16 stores grey frames only")
        Image.fromarray(image.astype(np.uint16) * 257).save(buf, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    else:
        if fmt == "png_rgb" and image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_file(path: Path, data: bytes) -> None:
    """Write under a temporary name, then rename. No fsync: the goal is no torn files on Ctrl-C,
    not durability across power loss, and an fsync per image would dominate generation time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def decode(path: Path) -> np.ndarray:
    """Read an image written by :func:`encode` back to uint8 (grey or RGB as stored)."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            return (np.asarray(im, dtype=np.uint32) // 257).astype(np.uint8)
        if im.mode == "RGB":
            a = np.asarray(im)
            return a if (a[..., 0] != a[..., 1]).any() or (a[..., 1] != a[..., 2]).any() else a[..., 0].copy()
        return np.asarray(im.convert("L"))
