"""DICOM single images and multi-frame cines through pydicom (+ pylibjpeg's JPEG, JPEG-LS, JPEG 2000
and RLE plugins, so every common transfer syntax decodes from a plain ``pip install``).

Frames are decoded one at a time (``pydicom.pixels.iter_pixels`` with the sampled indices), so a
long cine never sits in memory. Photometric rules (docs/data.md "Readers"):
- ``YBR_FULL``, ``YBR_FULL_422``, ``YBR_ICT``, ``YBR_RCT`` -> RGB (pydicom's conversion);
- ``PALETTE COLOR`` -> RGB through the file's lookup table;
- ``MONOCHROME1`` -> inverted, so that bright is echogenic as in ``MONOCHROME2``;
- more than 8 bits: rescale slope/intercept, then the first VOI window when the file has one,
  otherwise scaled by ``2**BitsStored - 1``, the frames of a cine alike (16 bits stored, often a
  container for 8-bit values: a frame holding no value above 255 is kept as it is).
The result then goes through the same grayscale / colour-Doppler rules as any frame.

Ultrasound regions: the 2D tissue regions of ``SequenceOfUltrasoundRegions`` (spatial format 1, data
type 1) give the scan area exactly; their union box is used for the crop when it lies inside the
image and is a real sub-area (a region covering >= 95 % of the frame, as some devices write for the
whole screen with its text, says nothing and the heuristic crop is used). Spacing comes from
``PhysicalDeltaX/Y`` when the units are cm. Only an allow-list of attributes ever leaves the file:
modality, manufacturer, model and the spacing; never names, ids, dates or UIDs.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from collections.abc import Iterator

import numpy as np

from shards.options import SourceOptions
from shards.readers.base import Frame, Levels, Media, ReadError, as_frame_pixels, to_uint8

log = logging.getLogger(__name__)

# Attributes copied into the shards (the allow-list); everything else stays in the source file.
ALLOWED = {"Modality": "modality", "Manufacturer": "manufacturer", "ManufacturerModelName": "model"}
# Modalities that are certainly not ultrasound (a CT slice in an ultrasound folder is a mistake).
OTHER_MODALITIES = {"CT", "MR", "PT", "NM", "CR", "DX", "MG", "XA", "RF", "RG", "IO", "PX", "SEG", "RTDOSE",
                    "RTSTRUCT", "RTPLAN", "RTIMAGE", "SR", "ECG", "KO", "PR", "REG", "DOC", "HD", "AU"}  # fmt: skip
FULL_FRAME = 0.95  # a "region" covering this much of the frame is the whole screen, not the scan area
MIN_REGION_SIDE = 32
EXTENSIONS = (".dcm", ".dicom", ".dic")


def sniff(head: bytes, name: str) -> bool:
    """``DICM`` after the 128-byte preamble."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def sniff_without_preamble(head: bytes, name: str) -> bool:
    """A raw dataset: it starts with a (group, element) tag in little endian, 0002,xxxx or 0008,xxxx.

    Four bytes are a weak sign, so this is tried after every other format."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008) and element < 0x0200 and (head[4:6].isalpha() or head[6:8] == b"\0\0")


def _frame_rate(ds) -> float | None:
    try:
        if ds.get("FrameTime"):
            ft = float(ds.FrameTime)
            return 1000.0 / ft if ft > 0 else None
        if ds.get("FrameTimeVector"):
            v = [float(x) for x in ds.FrameTimeVector][1:]
            m = float(np.mean(v)) if v else 0.0
            return 1000.0 / m if m > 0 else None
        for key in ("CineRate", "RecommendedDisplayFrameRate"):
            if ds.get(key):
                r = float(ds.get(key))
                return r if r > 0 else None
    except (TypeError, ValueError):
        return None
    return None


def bmode_region(ds, width: int, height: int) -> tuple[tuple[int, int, int, int] | None, tuple[float, float] | None]:
    """(union box of the 2D tissue regions or None, mm/px spacing or None), validated against the image."""
    regions = []
    for r in ds.get("SequenceOfUltrasoundRegions", None) or []:
        try:
            if int(r.get("RegionSpatialFormat", 0)) != 1 or int(r.get("RegionDataType", 0)) != 1:
                continue
            box = (
                int(r.RegionLocationMinX0),
                int(r.RegionLocationMinY0),
                int(r.RegionLocationMaxX1) + 1,  # DICOM's max corner is inclusive
                int(r.RegionLocationMaxY1) + 1,
            )
        except (AttributeError, TypeError, ValueError):
            continue
        regions.append((box, r))
    if not regions:
        return None, None
    x0 = min(b[0] for b, _ in regions)
    y0 = min(b[1] for b, _ in regions)
    x1 = max(b[2] for b, _ in regions)
    y1 = max(b[3] for b, _ in regions)
    # A region outside the pixel matrix (the image was resized after the header was written) is unusable.
    if x0 < 0 or y0 < 0 or x1 > width + 1 or y1 > height + 1 or x1 <= x0 or y1 <= y0:
        return None, None
    x1, y1 = min(x1, width), min(y1, height)
    spacing = None
    r = regions[0][1]
    try:
        if int(r.get("PhysicalUnitsXDirection", 0)) == 3 and int(r.get("PhysicalUnitsYDirection", 0)) == 3:
            dx, dy = float(r.PhysicalDeltaX) * 10.0, float(r.PhysicalDeltaY) * 10.0  # cm -> mm
            if dx > 0 and dy > 0:
                spacing = (dx, dy)
    except (AttributeError, TypeError, ValueError):
        spacing = None
    if min(x1 - x0, y1 - y0) < MIN_REGION_SIDE or (x1 - x0) * (y1 - y0) >= FULL_FRAME * width * height:
        return None, spacing
    return (x0, y0, x1, y1), spacing


def _levels(arr: np.ndarray, bits: int) -> Levels | None:
    """A frame's uint8 levels: a declared depth of 9-15 bits by ``2**bits - 1`` whatever the frame
    holds, so the frames of a cine scale alike (a dim one stays dim beside a bright one); 16 bits,
    often a container for 8-bit values, by the documented rule (None: :func:`levels_of`)."""
    if not 8 < bits < 16 or not np.issubdtype(arr.dtype, np.integer) or arr.size == 0:
        return None
    shift = min(0, int(arr.min()))
    return Levels(shift, float(max((1 << bits) - 1, int(arr.max()) - shift)))


def _to_display(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    """One decoded frame -> HxW or HxWx3 uint8 by the photometric rules above."""
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        bits = 16 if arr.dtype != np.uint8 else 8
        return as_frame_pixels(to_uint8(arr, bits))
    bits = int(ds.get("BitsStored", 8) or 8)

    def scaled(values: np.ndarray) -> np.ndarray:
        return to_uint8(values, bits, _levels(values, bits))

    if arr.dtype != np.uint8 and arr.ndim == 2:
        a = arr.astype(np.float64)
        slope, icpt = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        a = a * slope + icpt
        wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
        if wc is not None and ww is not None:
            c = float(wc[0] if hasattr(wc, "__len__") and not isinstance(wc, str) else wc)
            w = float(ww[0] if hasattr(ww, "__len__") and not isinstance(ww, str) else ww)
            if w > 1:
                out = np.clip((a - (c - 0.5 - (w - 1) / 2)) / (w - 1) * 255.0, 0, 255)
                arr = np.round(out).astype(np.uint8)
            else:
                arr = scaled(np.round(a).astype(np.int64))
        else:
            arr = scaled(np.round(a).astype(np.int64))
    else:
        arr = scaled(arr)
    if photometric == "MONOCHROME1":
        arr = 255 - arr
    return as_frame_pixels(arr)


def read_dicom(src: str | bytes, opts: SourceOptions, name: str = "") -> Media:
    """Everything comes from the dataset itself; ``name`` is not needed."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import iter_pixels

    def handle():
        return io.BytesIO(src) if isinstance(src, bytes) else src

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd character sets and VRs are common and harmless here
            ds = pydicom.dcmread(handle(), stop_before_pixels=True, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ReadError("truncated" if isinstance(exc, EOFError) else "unreadable", str(exc)) from None
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in OTHER_MODALITIES:
        raise ReadError("not_ultrasound_modality", modality)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if not rows or not cols:
        raise ReadError("no_pixel_data")
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n = 1
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    fps = _frame_rate(ds)
    region, spacing = bmode_region(ds, cols, rows)
    meta = {v: str(ds.get(k)) for k, v in ALLOWED.items() if ds.get(k) not in (None, "")}
    multi = n > 1
    indices = opts.frames.indices(n, fps, opts.max_frames_per_clip) if multi else [0]

    def frames() -> Iterator[Frame]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                it = iter_pixels(handle(), indices=indices, as_rgb=True)
                for i, arr in zip(indices, it):
                    yield Frame(_to_display(arr, ds, photometric), i)
        except ReadError:
            raise
        except (NotImplementedError, RuntimeError) as exc:
            msg = str(exc).lower()
            reason = "undecodable" if ("plugin" in msg or "support" in msg or "decod" in msg) else "unreadable"
            if "raised by all available plugins" in msg and "support" not in msg:  # decoders there, data bad
                reason = "truncated" if _cut_short(src) else "unreadable"
            raise ReadError(reason, str(exc)) from None
        except (EOFError, ValueError, OSError, KeyError, AttributeError, TypeError, IndexError) as exc:
            # pydicom reports missing pixel bytes in several ways (short buffer, failed reshape, EOF).
            msg = str(exc).lower()
            short = isinstance(exc, EOFError) or any(k in msg for k in ("less than", "truncat", "reshape", "eof"))
            # a transfer syntax newer than this pydicom (JPEG XL) is a codec the environment lacks
            reason = "truncated" if short else "undecodable" if "transfer syntax" in msg else "unreadable"
            raise ReadError(reason, str(exc)) from None

    return Media(
        frames=frames(),
        multi=multi,
        family="dicom",
        orig_mode=photometric,
        orig_size=(cols, rows),
        n_frames=n,
        fps=fps,
        region=region,
        spacing_mm=spacing,
        meta={"dicom": meta} if meta else {},
    )


# Encapsulated (compressed) pixel data ends with a sequence delimitation item, the file's last bytes
# as a rule: a file without it broke off inside its frames.
SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _cut_short(src: str | bytes) -> bool:
    """Does the DICOM file end before its encapsulated pixel data does?"""
    try:
        if isinstance(src, bytes):
            tail = src[-64:]
        else:
            with open(src, "rb") as fh:
                fh.seek(max(0, fh.seek(0, 2) - 64))
                tail = fh.read()
    except OSError:
        return False
    return SEQUENCE_END not in tail
