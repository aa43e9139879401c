"""Image files through PIL (PNG, JPEG, BMP, TIFF, WebP, GIF): one frame, or a clip when animated.

Single images keep the documented mode rules of :mod:`shards.decode`. An animated GIF or a
multi-page TIFF is a clip: frames are visited one at a time (``seek``), sampled by the source's
rule, with the frame rate taken from the GIF's per-frame ``duration`` when it has one.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

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


def read_image(src: str | bytes, opts: SourceOptions, name: str = "") -> Media:
    # Imported here, as every reader does: telling a file's format loads no decoder (shards.readers.detect).
    from PIL import Image

    from shards.decode import DecodeError, _to_uint8, decode_image

    if isinstance(src, bytes):
        data = src
    else:
        with open(src, "rb") as fh:
            data = fh.read()
    try:
        img = Image.open(io.BytesIO(data))
        n = int(getattr(img, "n_frames", 1) or 1)
    except Exception:
        n = 1
    if n <= 1:
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
    duration = img.info.get("duration") or 0
    fps = 1000.0 / duration if duration and duration > 0 else None
    indices = opts.frames.indices(n, fps, opts.max_frames_per_clip)

    def frames() -> Iterator[Frame]:
        try:
            for i in indices:
                img.seek(i)
                frame = img.convert("RGB") if img.mode == "P" else img.copy()
                yield Frame(as_frame_pixels(_to_uint8(frame)), i)
        except (OSError, EOFError, ValueError) as exc:
            raise ReadError("truncated", str(exc)) from None

    return Media(frames(), True, "image", img.mode, img.size, n, fps)
