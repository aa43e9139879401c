"""Image files through PIL (PNG, JPEG, BMP, TIFF, WebP, GIF): one frame, or a clip when animated.

Single images keep the documented mode rules of :mod:`shards.decode`. An animated GIF or a
multi-page TIFF is a clip: frames are visited one at a time (``seek``), sampled by the source's
rule, with the frame rate taken from the GIF's per-frame ``duration`` when it has one.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np

from shards.options import SourceOptions
from shards.readers.base import Frame, Media, ReadError, as_frame_pixels

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def sniff(head: bytes, name: str) -> bool:
    """PNG, JPEG, BMP, TIFF (either byte order), GIF, WebP (RIFF ``WEBP``)."""
    return (
        head[:8] == b"\x89PNG\r\n\x1a\n"
        or head[:3] == b"\xff\xd8\xff"
        or head[:2] == b"BM"
        or head[:4] in (b"II*\0", b"MM\0*")
        or head[:6] in (b"GIF87a", b"GIF89a")
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    )


def _readable_frames(img) -> tuple[int, str]:
    """How many frames ``img`` holds, and why it holds no more than that when its file breaks off
    ("" when whole): PIL's ``n_frames`` fails outright on a clip cut short, so its frames are counted
    one ``seek`` at a time up to the break."""
    try:
        return int(getattr(img, "n_frames", 1) or 1), ""
    except Exception as exc:  # each plugin fails its own way on a cut file
        why = f"{type(exc).__name__}: {exc}"
    n = 0
    while True:
        try:
            img.seek(n)
        except Exception:  # the break: frames before it are kept
            return n, why
        n += 1


def read_image(src: str | bytes, opts: SourceOptions, name: str = "") -> Media:
    # Imported here, as every reader does: telling a file's format loads no decoder (shards.readers.detect).
    from PIL import Image

    from shards.decode import DecodeError, decode_image

    if isinstance(src, bytes):
        data = src
    else:
        with open(src, "rb") as fh:
            data = fh.read()
    try:
        img = Image.open(io.BytesIO(data))
        n, broken = _readable_frames(img)
    except Exception:  # decode_image names the reason
        n, broken = 1, ""
    if n <= 1 and not broken:
        try:
            dec = decode_image(data)
        except DecodeError as exc:
            raise ReadError(exc.reason, str(exc)) from None
        return Media(
            frames=iter([Frame(as_frame_pixels(dec.pixels), 0)]),
            multi=False,
            family="image",
            orig_mode=dec.orig_mode,
            orig_size=dec.orig_size,
            n_frames=1,
        )
    return _clip(img, n, broken, opts)


def _clip(img, n: int, broken: str, opts: SourceOptions) -> Media:
    """An animated GIF or multi-page TIFF of ``n`` readable frames; a file that breaks off after
    them (``broken``: why) ends its frames with one ``truncated``, as a DICOM cine cut short does."""
    from shards.decode import _to_uint8

    img.seek(0)
    duration = img.info.get("duration") or 0
    fps = 1000.0 / duration if duration and duration > 0 else None
    indices = opts.frames.indices(n, fps, opts.max_frames_per_clip)

    def frames() -> Iterator[Frame]:
        for i in indices:
            try:
                img.seek(i)
                frame = img.convert("RGB") if img.mode == "P" else img.copy()
                pixels = _to_uint8(frame)
            except ReadError as exc:  # non_finite: this frame alone, the clip goes on
                yield Frame(np.zeros((0, 0), np.uint8), i, exc)
                continue
            except (OSError, EOFError, ValueError, IndexError) as exc:
                raise ReadError("truncated", str(exc)) from None
            yield Frame(as_frame_pixels(pixels), i)
        if broken:
            raise ReadError("truncated", f"{n} frames before the break ({broken})")

    return Media(frames(), True, "image", img.mode, img.size, n, fps)
