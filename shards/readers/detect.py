"""The input formats, in the order they are tried: the first row whose ``sniff`` recognises a file's
first bytes reads it (:func:`shards.readers.open_media`).

A file's format is told by its content, so DICOM without an extension and misnamed files are read
by what they are; the name is used only where bytes cannot tell (``.npz`` among zips, ``.nii.gz``
among gzip streams, known proprietary formats). The order matters where a signature is weak: DICOM's
``DICM`` at byte 128 goes first; the proprietary extensions (``.cine``...) are ``unsupported`` before
the preamble-less DICOM rule (four bytes of a tag), which comes last. Anything no row recognises is
``None`` (rejected as ``not_image``).

Each family's ``sniff`` and ``read`` live in its module; a reader module imports its decoding library
(PIL, pydicom, PyAV, SimpleITK, h5py, scipy) inside ``read``, so telling a file's format loads none.
A new format is its module plus one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shards.options import SourceOptions
from shards.readers import arrays, dicom, image, video, volume
from shards.readers.base import HEAD_BYTES, Media, ReadError

__all__ = ["COMPANION_EXTENSIONS", "FORMATS", "HEAD_BYTES", "Format", "detect_family", "find_format", "is_media_name"]

UNSUPPORTED_EXTENSIONS = (".cine", ".imf", ".iws", ".vol", ".rf", ".b8", ".b32", ".bpr", ".crf", ".sdf", ".dcm.zip")
# Companion data files (MetaImage .raw, Analyze .img) are read through their header, not on their own.
COMPANION_EXTENSIONS = {".raw": (".mhd",), ".zraw": (".mhd",), ".img": (".hdr",)}


@dataclass(frozen=True)
class Format:
    family: str  # Media.family, and what detect_family reports
    sniff: Callable[[bytes, str], bool]  # (first HEAD_BYTES bytes, lower-cased name) -> is it this format
    read: Callable[[str | bytes, SourceOptions, str], Media]  # (path or bytes, options, name); raises ReadError
    extensions: tuple[str, ...] = ()  # names a folder counts as media without opening them


def _proprietary(head: bytes, name: str) -> bool:
    return name.endswith(UNSUPPORTED_EXTENSIONS)


def _refuse(src: str | bytes, opts: SourceOptions, name: str) -> Media:
    raise ReadError("unsupported_format", name.rsplit(".", 1)[-1].lower())


FORMATS: tuple[Format, ...] = (
    #      family         sniff                          read               extensions
    Format("dicom",       dicom.sniff,                   dicom.read_dicom,   dicom.EXTENSIONS),
    Format("image",       image.sniff,                   image.read_image,   image.EXTENSIONS),
    Format("video",       video.sniff,                   video.read_video,   video.EXTENSIONS),
    Format("array",       arrays.sniff,                  arrays.read_array,  arrays.EXTENSIONS),
    Format("volume",      volume.sniff,                  volume.read_volume, volume.EXTENSIONS),
    Format("unsupported", _proprietary,                  _refuse),
    Format("dicom",       dicom.sniff_without_preamble,  dicom.read_dicom),
)  # fmt: skip

MEDIA_EXTENSIONS = tuple(ext for f in FORMATS for ext in f.extensions)


def find_format(head: bytes, name: str) -> Format | None:
    """The first format (in :data:`FORMATS` order) that recognises ``head``, the file's first bytes."""
    low = name.lower()
    return next((f for f in FORMATS if f.sniff(head, low)), None)


def detect_family(head: bytes, name: str) -> str | None:
    """``image`` | ``dicom`` | ``video`` | ``volume`` | ``array`` | ``unsupported`` | None."""
    found = find_format(head, name)
    return found.family if found else None


def is_media_name(name: str) -> bool:
    return name.lower().endswith(MEDIA_EXTENSIONS)
