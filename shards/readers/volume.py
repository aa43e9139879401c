"""NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd + data file) and NRRD through SimpleITK.

SimpleITK reads all three with one API and one pinned wheel (nibabel + pynrrd would be two
libraries and still miss MetaImage). Only the header is read up front; each sampled frame is then
read on its own with the reader's extract region (streamed for formats that support it).

Dimensions (ITK order x, y, z, t; numpy order reversed):
- 2D, or 3D with one slice: a single image;
- 4D ``x, y, 1, t`` (NIfTI 2D+t): a clip along t;
- 3D: by the source's ``volume`` option -- ``sequence`` (default: axis z is time, as CAMUS and
  device exports store 2D+t), ``slices`` (a true volume: slices along ``volume_axis``, numpy order
  0=z, 1=y, 2=x) or ``skip`` (counted as ``volume_skipped``);
- 4D with more than one slice per time point: ``volume_skipped`` (a 3D+t volume).
Multi-component pixels (RGB) stay colour and go through the colour rule.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator

import numpy as np

from shards.options import SourceOptions
from shards.readers.base import HEAD_BYTES, Frame, Media, ReadError, converted, levels_of

WHOLE_BYTES = 512 << 20
EXTENSIONS = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


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


def sniff(head: bytes, name: str) -> bool:
    """NIfTI-1/2 (``sizeof_hdr`` and magic), ``NRRD000x``, MetaImage ``key = value`` headers; a gzip
    stream only when named ``.nii.gz``."""
    return (
        _nifti(head)
        or head[:7] == b"NRRD000"
        or _metaimage(head)
        or (head[:2] == b"\x1f\x8b" and name.endswith(".nii.gz"))
    )


def _bytes_per_component(r) -> int:
    import SimpleITK as sitk

    name = sitk.GetPixelIDValueAsString(r.GetPixelID())
    for bits in (64, 32, 16):
        if str(bits) in name:
            return bits // 8
    return 8 if "double" in name else 4 if "float" in name else 1


def _slice(arr: np.ndarray, i: int, mode: str, axis: int, ncomp: int, dim: int) -> np.ndarray:
    """Frame ``i`` of a whole image in numpy order ([t,] [z,] y, x[, c])."""
    if mode == "single":
        out = arr
    elif mode == "slices":
        out = np.take(arr, i, axis=axis)
    else:
        out = arr[i]
    out = np.asarray(out)
    if ncomp > 1:
        return out.reshape(-1, *out.shape[-3:])[0] if out.ndim > 3 else out
    out = np.squeeze(out)
    return out if out.ndim == 2 else out.reshape(out.shape[-2:])


def _reader(path: str):
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(path)
    try:
        r.ReadImageInformation()
    except RuntimeError as exc:
        raise ReadError("unreadable", _itk_reason(exc)) from None
    return r


def _execute(r):
    """Read the pixels; a file whose header reads but whose data does not (truncated) is ``unreadable``."""
    try:
        return r.Execute()
    except RuntimeError as exc:
        raise ReadError("unreadable", _itk_reason(exc)) from None


def _itk_reason(exc: RuntimeError) -> str:
    """ITK's own reason: the ``ITK ERROR: <class>(<address>): <reason>`` line's reason when there is
    one (the lines around it name SimpleITK's build folder and a misleading errno), else the last line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("ITK ERROR:") and "): " in ln:
            return " ".join([ln.split("): ", 1)[1], *(x for x in lines[i + 1 :] if not x.startswith("Reason:"))])
    return lines[-1] if lines else ""


def _layout(size: list[int], opts: SourceOptions) -> tuple[int, str, int, int]:
    """(frames along the clip axis, layout mode, frame width, frame height) of an image of ``size``
    (SimpleITK order x, y[, z[, t]]), by the source's ``volume`` option."""
    dim = len(size)
    if dim < 2 or dim > 4:
        raise ReadError("volume_skipped", f"{dim}D image")
    if dim == 4 and size[2] != 1:
        raise ReadError("volume_skipped", "3D+t volume")
    if dim == 2 or (dim == 3 and size[2] == 1):
        axis_len, mode = 1, "single"
    elif dim == 4:
        axis_len, mode = size[3], "time4"
    elif opts.volume == "skip":
        raise ReadError("volume_skipped", "3D volume (volume: skip)")
    elif opts.volume == "slices":
        axis_len, mode = size[2 - opts.volume_axis], "slices"
    else:
        axis_len, mode = size[2], "time3"
    if mode in ("time3", "time4", "single"):
        return axis_len, mode, size[0], size[1]
    keep = [a for a in range(3) if a != 2 - opts.volume_axis]
    return axis_len, mode, size[keep[0]], size[keep[1]]


def _extract(r, whole: np.ndarray | None, i: int, mode: str, axis: int, ncomp: int, size: list[int]) -> np.ndarray:
    """Frame ``i`` as a numpy array: sliced from ``whole`` when the file was read at once, else read alone."""
    import SimpleITK as sitk

    dim = len(size)
    if whole is not None:
        return _slice(whole, i, mode, axis, ncomp, dim)
    index, ext = [0] * dim, list(size)
    if mode == "time4":
        index[3], ext[3] = i, 1
    elif mode in ("time3", "single") and dim == 3:
        index[2], ext[2] = i, 1
    elif mode == "slices":
        index[2 - axis], ext[2 - axis] = i, 1
    if dim > 2:
        r.SetExtractIndex(index)
        r.SetExtractSize(ext)
    arr = sitk.GetArrayFromImage(_execute(r))  # numpy order, components last
    if ncomp > 1:
        return (arr.reshape(-1, *arr.shape[-3:]) if arr.ndim > 3 else arr[None])[0]
    arr = np.squeeze(arr)
    return arr if arr.ndim == 2 else arr.reshape(arr.shape[-2:])


def _temp_copy(src: bytes, name: str) -> str:
    """A dataset source's bytes in a temporary file (SimpleITK reads files only)."""
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else os.path.splitext(name)[1] or ".nii"
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(src)
    return tmp


def read_volume(src: str | bytes, opts: SourceOptions, name: str = "") -> Media:
    import SimpleITK as sitk

    tmp = _temp_copy(src, name) if isinstance(src, bytes) else None
    try:
        r = _reader(tmp or src)
        size = list(r.GetSize())  # x, y[, z[, t]]
        axis_len, mode, width, height = _layout(size, opts)
        spacing, ncomp = r.GetSpacing(), r.GetNumberOfComponents()
        multi = axis_len > 1
        indices = opts.frames.indices(axis_len, None, opts.max_frames_per_clip) if multi else [0]
        # A file SimpleITK cannot stream (gzip, most NIfTI) would be decompressed again for every frame:
        # below WHOLE_BYTES it is read once and sliced; larger ones are read frame by frame.
        nbytes = int(np.prod(size)) * ncomp * _bytes_per_component(r)
        whole = sitk.GetArrayFromImage(_execute(r)) if nbytes <= WHOLE_BYTES else None
    except ReadError:
        if tmp:
            os.unlink(tmp)
        raise

    def frame(i: int) -> np.ndarray:
        return _extract(r, whole, i, mode, opts.volume_axis, ncomp, size)

    def frames() -> Iterator[Frame]:
        try:
            # one scale for the clip: its sampled frames are read twice (once for their range)
            levels = levels_of(frame(i) for i in indices) if multi else None
            for i in indices:
                yield converted(frame(i), i, levels)
        finally:
            if tmp:
                os.unlink(tmp)

    # a slice's (width, height) axes: x, y of a sequence; the two ITK axes a slice keeps (x, y, z order)
    kept = [a for a in range(3) if a != 2 - opts.volume_axis] if mode == "slices" else [0, 1]
    sp = (float(spacing[kept[0]]), float(spacing[kept[1]]))
    return Media(
        frames=frames(),
        multi=multi,
        family="volume",
        orig_mode=sitk.GetPixelIDValueAsString(r.GetPixelID()),
        orig_size=(int(width), int(height)),
        n_frames=axis_len,
        fps=None,
        # Spacing is kept only when the file states a physical one (ITK's default is 1.0 "unknown").
        spacing_mm=sp if sp and sp != (1.0, 1.0) else None,
    )
