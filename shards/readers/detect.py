"""Tell a file's format family from its first bytes (and, only where bytes cannot tell, its name).

Families: ``image`` (PNG, JPEG, BMP, TIFF, GIF, WebP), ``dicom`` (``DICM`` at byte 128, or a
preamble-less dataset starting with a group 0002/0008 tag), ``video`` (ISO-BMFF ``ftyp``: mp4/mov/m4v;
RIFF ``AVI ``; Matroska/WebM; MPEG-TS/PS), ``volume`` (NIfTI-1/2 by ``sizeof_hdr`` and magic,
MetaImage ``ObjectType``/``NDims`` headers, ``NRRD000x``; gzip only for ``.nii.gz``), ``array``
(NumPy ``\\x93NUMPY``, ``.npz`` zip, MATLAB v5 ``MATLAB 5.0 MAT-file``, HDF5 ``\\x89HDF`` incl. MAT
v7.3). Known proprietary formats (e.g. ``.cine``) are ``unsupported``; anything else is ``None``.
"""

from __future__ import annotations

import struct

HEAD_BYTES = 512

UNSUPPORTED_EXTENSIONS = (".cine", ".imf", ".iws", ".vol", ".rf", ".b8", ".b32", ".bpr", ".crf", ".sdf", ".dcm.zip")
# Companion data files (MetaImage .raw, Analyze .img) are read through their header, not on their own.
COMPANION_EXTENSIONS = {".raw": (".mhd",), ".zraw": (".mhd",), ".img": (".hdr",)}

MEDIA_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp",
    ".dcm", ".dicom", ".dic",
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".ogv",
    ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr",
    ".npy", ".npz", ".mat", ".h5", ".hdf5",
)  # fmt: skip


def _nifti(head: bytes) -> bool:
    if len(head) >= 348:
        for fmt in ("<i", ">i"):
            if struct.unpack(fmt, head[:4])[0] == 348 and head[344:347] in (b"n+1", b"ni1"):
                return True
    if len(head) >= 8 and struct.unpack("<i", head[:4])[0] in (540,) and head[4:7] in (b"n+2", b"ni2"):
        return True
    return len(head) >= 8 and struct.unpack(">i", head[:4])[0] == 540 and head[4:7] in (b"n+2", b"ni2")


def _metaimage(head: bytes) -> bool:
    text = head[:HEAD_BYTES].lstrip()
    return any(text.startswith(k) for k in (b"ObjectType", b"NDims", b"Comment", b"DimSize")) and b"=" in text[:64]


def _dicom_without_preamble(head: bytes) -> bool:
    # A raw dataset starts with a (group, element) tag in little endian: 0002,xxxx or 0008,xxxx.
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008) and element < 0x0200 and (head[4:6].isalpha() or head[6:8] == b"\0\0")


def detect_family(head: bytes, name: str) -> str | None:
    """``image`` | ``dicom`` | ``video`` | ``volume`` | ``array`` | ``unsupported`` | None."""
    low = name.lower()
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:2] == b"BM":
        return "image"
    if head[:4] in (b"II*\0", b"MM\0*") or head[:6] in (b"GIF87a", b"GIF89a"):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"):
        return "video"
    if head[4:8] == b"ftyp" or head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return "video"
    if head[:4] == b"\x1a\x45\xdf\xa3" or head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "video"
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return "video"  # MPEG transport stream
    if head[:4] == b"\x30\x26\xb2\x75":
        return "video"  # ASF / WMV
    if head[:6] == b"\x93NUMPY":
        return "array"
    if head[:4] == b"PK\x03\x04" and low.endswith(".npz"):
        return "array"
    if head[:7] == b"MATLAB " or head[:8] == b"\x89HDF\r\n\x1a\n":
        return "array"  # MAT v5 and v7.3 (an HDF5 file behind a 512-byte text header), HDF5
    if _nifti(head) or head[:7] == b"NRRD000" or _metaimage(head):
        return "volume"
    if head[:2] == b"\x1f\x8b" and low.endswith(".nii.gz"):
        return "volume"
    if low.endswith(UNSUPPORTED_EXTENSIONS):
        return "unsupported"
    if _dicom_without_preamble(head):
        return "dicom"
    return None


def is_media_name(name: str) -> bool:
    return name.lower().endswith(MEDIA_EXTENSIONS)
