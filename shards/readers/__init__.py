"""Readers: one input file (or in-memory bytes) -> a :class:`~shards.readers.base.Media` of sampled frames.

The format family is told by content (:mod:`shards.readers.detect`), so files without an extension
(common for DICOM) are read and a misnamed file is read by what it is. One small module per family:
``image`` (PIL), ``dicom`` (pydicom + pylibjpeg), ``video`` (PyAV), ``volume`` (SimpleITK), ``arrays``
(numpy, scipy, h5py). Unknown content is ``not_image``; known proprietary formats are
``unsupported_format``; neither is ever fatal.
"""

from __future__ import annotations

from shards.readers.base import Frame, Media, ReadError, ReadOptions
from shards.readers.detect import HEAD_BYTES, detect_family

__all__ = ["Frame", "Media", "ReadError", "ReadOptions", "open_media", "detect_family"]


def open_media(src: str | bytes, name: str, opts: ReadOptions) -> Media:
    """Open ``src`` (a path, or the file's bytes) named ``name``; raises :class:`ReadError` with the reason."""
    if isinstance(src, bytes):
        head = src[:HEAD_BYTES]
    else:
        try:
            with open(src, "rb") as fh:
                head = fh.read(HEAD_BYTES)
        except OSError as exc:
            raise ReadError("unreadable", str(exc)) from None
    if not head:
        raise ReadError("empty_file")
    family = detect_family(head, name)
    if family is None:
        raise ReadError("not_image")
    if family == "unsupported":
        raise ReadError("unsupported_format", name.rsplit(".", 1)[-1].lower())
    if family == "image":
        from shards.readers.image import read_image

        if not isinstance(src, bytes):
            with open(src, "rb") as fh:
                src = fh.read()
        return read_image(src, opts)
    if family == "dicom":
        from shards.readers.dicom import read_dicom

        return read_dicom(src, opts)
    if family == "video":
        from shards.readers.video import read_video

        return read_video(src, opts)
    if family == "volume":
        from shards.readers.volume import read_volume

        return read_volume(src, opts, name)
    from shards.readers.arrays import read_array

    return read_array(src, opts, name)
