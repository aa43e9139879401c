"""Arrays: ``.npy`` (memory-mapped), ``.npz``, MATLAB ``.mat`` v5 (scipy) and v7.3 (HDF5, h5py), ``.h5``.

The array is the source's ``array_key`` (``.npy`` has only one; for the others, when no key is
given, the file must hold exactly one array of 2 or more dimensions). Shapes: ``HxW`` is an image,
``HxWx1``/``HxWx3``/``HxWx4`` (any type) an image with its channels last; ``TxHxW`` and ``HxWxT``
are clips, told apart by ``array_layout`` (``auto``: MATLAB files are ``HxWxT``, others ``TxHxW``;
``thw`` / ``hwt`` force it, also for a clip of 1, 3 or 4 frames).
HDF5 datasets and ``.npy`` files are read one frame at a time; ``.npz`` and v5 ``.mat`` members are
loaded whole (their formats cannot slice). Pixel values follow the documented uint8 rule, with one
scale per clip.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import numpy as np

from shards.options import SourceOptions
from shards.readers.base import Frame, Media, ReadError, converted, levels_of

EXTENSIONS = (".npy", ".npz", ".mat", ".h5", ".hdf5")


def sniff(head: bytes, name: str) -> bool:
    """NumPy ``\\x93NUMPY``, a zip named ``.npz``, MATLAB v5 and v7.3 (an HDF5 file behind a 512-byte
    text header), HDF5."""
    return (
        head[:6] == b"\x93NUMPY"
        or (head[:4] == b"PK\x03\x04" and name.endswith(".npz"))
        or head[:7] == b"MATLAB "
        or head[:8] == b"\x89HDF\r\n\x1a\n"
    )


def _pick(keys: list[str], arrays: dict, opts: SourceOptions, what: str) -> str:
    if opts.array_key is not None:
        if opts.array_key not in keys:
            raise ReadError("array_key_missing", f"no '{opts.array_key}' in {what} (has {', '.join(keys[:8])})")
        return opts.array_key
    cands = [k for k in keys if getattr(arrays[k], "ndim", 0) >= 2]
    if len(cands) != 1:
        raise ReadError("array_key_missing", f"{len(cands)} arrays in {what}; set array_key")
    return cands[0]


def _layout(shape: tuple[int, ...], opts: SourceOptions, matlab: bool) -> str:
    """``image`` | ``rgb`` | ``thw`` | ``hwt``."""
    if 0 in shape:
        raise ReadError("bad_array_shape", f"shape {shape}: an empty array")
    if len(shape) == 2:
        return "image"
    if len(shape) != 3:
        raise ReadError("bad_array_shape", f"shape {shape}: expected HxW, TxHxW or HxWxT")
    if opts.array_layout in ("thw", "hwt"):
        return opts.array_layout
    if shape[2] in (1, 3, 4):  # channels last: a clip of 1 to 4 px wide frames is no clip
        return "rgb"
    return "hwt" if matlab else "thw"


def _h5_datasets(f) -> dict:
    import h5py

    out: dict = {}
    f.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def read_array(src: str | bytes, opts: SourceOptions, name: str = "") -> Media:
    low = name.lower()
    head = src[:8] if isinstance(src, bytes) else open(src, "rb").read(520)
    closer = None
    matlab = low.endswith(".mat")
    try:
        if head[:6] == b"\x93NUMPY":
            # A .npy holds one array (array_key does not apply); memory-mapped from a file.
            mmap = None if isinstance(src, bytes) else "r"
            arr = np.load(io.BytesIO(src) if isinstance(src, bytes) else src, mmap_mode=mmap)
        elif low.endswith(".npz") or head[:4] == b"PK\x03\x04":
            npz = np.load(io.BytesIO(src) if isinstance(src, bytes) else src)
            keys = list(npz.files)
            lazy = {k: np.empty((0, 0)) for k in keys}  # ndim known only after loading; assume >= 2
            key = _pick(keys, lazy, opts, "the .npz")
            arr = npz[key]
        elif head[:8] == b"\x89HDF\r\n\x1a\n" or (head[:7] == b"MATLAB " and b"7.3" in head[:20]):
            import h5py

            f = h5py.File(io.BytesIO(src) if isinstance(src, bytes) else src, "r")
            closer = f
            dsets = _h5_datasets(f)
            key = _pick(sorted(dsets), dsets, opts, "the HDF5 file")
            arr = dsets[key]
            if matlab:  # MATLAB v7.3 stores arrays transposed (column-major)
                arr = np.asarray(arr).T
        else:
            from scipy.io import loadmat

            mat = loadmat(io.BytesIO(src) if isinstance(src, bytes) else src)
            keys = [k for k in mat if not k.startswith("__")]
            key = _pick(keys, mat, opts, "the .mat file")
            arr = np.asarray(mat[key])
            matlab = True
    except ReadError:
        if closer is not None:
            closer.close()
        raise
    except Exception as exc:  # numpy, zipfile, scipy and h5py each raise their own types
        if closer is not None:
            closer.close()
        reason = (
            "truncated" if isinstance(exc, (EOFError, zipfile.BadZipFile)) or "truncat" in str(exc) else ("unreadable")
        )
        raise ReadError(reason, str(exc)) from None
    layout = _layout(tuple(arr.shape), opts, matlab)
    if layout in ("image", "rgb"):
        n, multi = 1, False
        h, w = arr.shape[:2]
    elif layout == "thw":
        n, h, w = arr.shape
        multi = n > 1
    else:
        h, w, n = arr.shape
        multi = n > 1
    indices = opts.frames.indices(n, None, opts.max_frames_per_clip) if multi else [0]

    def frame(i: int) -> np.ndarray:
        if layout in ("image", "rgb"):
            return np.asarray(arr)
        return np.asarray(arr[i] if layout == "thw" else arr[:, :, i])

    def frames() -> Iterator[Frame]:
        try:
            # one scale for the clip: its sampled frames are read twice (once for their range)
            levels = levels_of(frame(i) for i in indices) if multi and arr.dtype != np.uint8 else None
            for i in indices:
                yield converted(frame(i), i, levels)
        except (OSError, ValueError) as exc:
            raise ReadError("truncated", str(exc)) from None
        finally:
            if closer is not None:
                closer.close()

    return Media(frames(), multi, "array", f"{np.dtype(arr.dtype).name}:{layout}", (int(w), int(h)), n, None)
