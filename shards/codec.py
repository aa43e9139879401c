"""How a shard stores each cleaned frame: ``png``, ``jpeg`` or ``raw``, and how it is read back.

=========  ==========  ==================================================================
encoding   member      what it costs
=========  ==========  ==================================================================
png        ``.png``    lossless 8-bit grayscale (zlib level ``png_level``); a full inflate
                       and unfilter per sample on read
jpeg       ``.jpg``    baseline 8-bit grayscale at quality :data:`JPEG_QUALITY` (90 by default:
                       mean absolute error ~1.5 grey levels on B-mode speckle); the smallest,
                       decoded with libjpeg-turbo (torchvision), or on the GPU with nvJPEG
raw        ``.npy``    the uint8 ``size x size`` array in NumPy's ``.npy`` format (a fixed
                       128-byte header, then the pixels): no decode at all, only a copy;
                       64 KiB per sample at 256 px
=========  ==========  ==================================================================

All three are standard WebDataset members: ``webdataset``'s decoders and ``datasets``'
``webdataset`` builder read them (``.png``/``.jpg`` as images, ``.npy`` as an array). Encoding is
deterministic, so a build stays byte-identical for any worker count.
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

ENCODINGS = ("png", "jpeg", "raw")
JPEG_QUALITY = 90  # mean abs error ~1.5 grey levels on 256 px B-mode; half the bytes of PNG
# Tar member extension of each encoding, and every extension the loader accepts as an image.
EXTENSION = {"png": "png", "jpeg": "jpg", "raw": "npy"}
ENCODING_OF = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "npy": "raw"}
_GRAY = 1  # torchvision.io.ImageReadMode.GRAY.value


class CorruptSample(Exception):
    """A sample whose image member cannot be turned into a ``size x size`` uint8 frame."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # "corrupt_image" or "bad_size"


@dataclass(frozen=True)
class Codec:
    """Encoder settings of a build (part of its identity)."""

    encoding: str = "png"
    png_level: int = 1
    jpeg_quality: int = JPEG_QUALITY

    @property
    def ext(self) -> str:
        return EXTENSION[self.encoding]

    def encode(self, gray: np.ndarray) -> bytes:
        """``HxW`` uint8 -> the member's bytes."""
        if self.encoding == "raw":
            return npy_header(gray.shape) + np.ascontiguousarray(gray, np.uint8).tobytes()
        buf = io.BytesIO()
        img = Image.fromarray(gray, mode="L")
        if self.encoding == "png":
            img.save(buf, format="PNG", compress_level=self.png_level)
        else:
            # No optimize/progressive: both are slower to decode; baseline is what nvJPEG decodes fastest.
            img.save(buf, format="JPEG", quality=self.jpeg_quality)
        return buf.getvalue()


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header NumPy writes for a C-ordered uint8 array of ``shape`` (128 bytes for 2-D)."""
    buf = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(int(s) for s in shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def decode_gray(data: memoryview | bytes, encoding: str) -> np.ndarray:
    """One image member -> ``HxW`` uint8 (colour is converted to grey); raises :class:`CorruptSample`."""
    try:
        if encoding == "raw":
            return _npy_pixels(data)
        if encoding == "jpeg":
            return _decode_jpeg_cpu(data)
        img = Image.open(io.BytesIO(data))
        if img.mode != "L":
            img = img.convert("L")
        return np.asarray(img)
    except CorruptSample:
        raise
    except Exception:
        raise CorruptSample("corrupt_image") from None


def _decode_jpeg_cpu(data: memoryview | bytes) -> np.ndarray:
    """libjpeg-turbo through torchvision's operator: the same pixels as PIL, ~1.3x faster here.

    The operator is called directly: torchvision's Python wrapper adds ~15 us per image (a
    deprecation warning and usage logging on every call), 5 % of a 256 px decode.
    """
    op = _jpeg_op()
    if op is None:  # torchvision built without its image extension
        return np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    arr = np.frombuffer(data, np.uint8)
    if not arr.flags.writeable:  # torch wants writable buffers; shard maps are (copy-on-write)
        arr = arr.copy()
    return op(torch.from_numpy(arr), _GRAY, False)[0].numpy()


@functools.cache
def _jpeg_op():
    import torchvision.io  # noqa: F401  (registers torch.ops.image)

    try:
        return torch.ops.image.decode_jpeg
    except (AttributeError, RuntimeError):
        return None


def _npy_pixels(data: memoryview | bytes) -> np.ndarray:
    buf = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(buf)
    if major != 1:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
    if dtype != np.uint8 or fortran or len(shape) != 2:
        raise CorruptSample("corrupt_image")
    n = shape[0] * shape[1]
    if len(data) - buf.tell() != n:
        raise CorruptSample("corrupt_image")
    return np.frombuffer(data, np.uint8, count=n, offset=buf.tell()).reshape(shape)


def decode_jpeg_batch(blobs: list[torch.Tensor], device: str | torch.device) -> torch.Tensor:
    """JPEG members (uint8 tensors) -> uint8 ``[B,1,H,W]`` on ``device``, decoded there.

    On a CUDA device this is nvJPEG's batched decoder (``torchvision.io.decode_jpeg(device="cuda")``);
    on the CPU the same call runs libjpeg-turbo, which is how it is tested without a GPU.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    if not blobs:
        return torch.empty(0, 1, 0, 0, dtype=torch.uint8, device=device)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of torchcodec, which has no nvJPEG batch path.
        warnings.simplefilter("ignore", DeprecationWarning)
        out = decode_jpeg(blobs, mode=ImageReadMode.GRAY, device=device)
    return torch.stack(out)
