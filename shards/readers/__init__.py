"""Readers: one input file (or in-memory bytes) -> a :class:`~shards.readers.base.Media` of sampled frames.

The format is told by content through the table of :mod:`shards.readers.detect`, so files without
an extension (common for DICOM) are read and a misnamed file is read by what it is. One small module
per family: ``image`` (PIL), ``dicom`` (pydicom + pylibjpeg), ``video`` (PyAV), ``volume``
(SimpleITK), ``arrays`` (numpy, scipy, h5py). Unknown content is ``not_image``; known proprietary
formats are ``unsupported_format``; neither is ever fatal.
"""

from __future__ import annotations

from shards.options import SourceOptions
from shards.readers.base import HEAD_BYTES, Frame, Media, ReadError
from shards.readers.detect import detect_family, find_format

__all__ = ["Frame", "Media", "ReadError", "open_media", "detect_family"]


def open_media(src: str | bytes, name: str, opts: SourceOptions) -> Media:
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
    found = find_format(head, name)
    if found is None:
        raise ReadError("not_image")
    return found.read(src, opts, name)
