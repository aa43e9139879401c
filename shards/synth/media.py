"""Synthetic B-mode written the way devices and archives store it: DICOM files and video clips.

- :func:`write_dicom`: single-frame and multi-frame (cine) DICOM in several transfer syntaxes
  (explicit VR little endian, RLE, JPEG baseline, JPEG 2000 lossless) and photometric
  interpretations (MONOCHROME2, MONOCHROME1 16-bit, RGB, YBR_FULL_422, PALETTE COLOR), with and
  without ultrasound regions, some without a file extension, each carrying made-up patient
  attributes that must never reach the shards.
- :func:`write_video`: clips as mp4 (H.264) and avi (MJPEG).

A clip is a linear probe sliding over one rendered scene (a window moving across a wide frame),
so consecutive frames share anatomy as in a real sweep. Every file gets a truth record (kind,
syntax, photometric, frame count, frame rate, scan-area box).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from shards.synth.render import render
from shards.synth.runner import check_args, write_truth

MARGIN = 16  # black surround around the scan area (a real screen has one)

# (file name stem, transfer syntax, photometric, frames, regions, extension)
DICOM_VARIANTS = (
    ("mono2_explicit", "explicit", "MONOCHROME2", 1, True, ".dcm"),
    ("mono1_16bit", "explicit", "MONOCHROME1", 1, False, ".dcm"),
    ("rgb_rle", "rle", "RGB", 1, True, ".dcm"),
    ("ybr_jpeg", "jpeg", "YBR_FULL_422", 1, False, ""),
    ("palette", "explicit", "PALETTE COLOR", 1, True, ".dcm"),
    ("cine_j2k", "j2k", "MONOCHROME2", 12, True, ".dcm"),
    ("cine_rle", "rle", "MONOCHROME2", 8, False, ""),
)


def clip_frames(rng: np.random.Generator, n: int, size: tuple[int, int] = (120, 160), step: int = 10) -> list:
    """``n`` grey frames of a probe sliding ``step`` px per frame over one scene, with a black margin."""
    h, w = size
    preset = str(rng.choice(["thyroid", "breast", "musculoskeletal"]))
    wide = render(preset, rng, size=(h, w + step * max(n - 1, 0)), tight=True).image
    wide = wide if wide.ndim == 2 else wide[..., 0]
    out = []
    for i in range(n):
        f = np.zeros((h + 2 * MARGIN, w + 2 * MARGIN), np.uint8)
        f[MARGIN : MARGIN + h, MARGIN : MARGIN + w] = wide[:, i * step : i * step + w]
        out.append(f)
    return out


def _dataset(frames: list[np.ndarray], syntax: str, photometric: str, regions: bool):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        RLELossless,
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        generate_uid,
    )

    h, w = frames[0].shape
    multi = len(frames) > 1
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage if multi else UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(frames[0].sum()), syntax, photometric])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    # Made-up identifying attributes: the builder must never copy them into the shards.
    ds.PatientName, ds.PatientID, ds.StudyDate = "Doe^Jane", "SYNTH-0042", "20240131"
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "US", "sonodistill", "synth-L12"
    ds.Rows, ds.Columns, ds.PixelRepresentation = h, w, 0
    if multi:
        ds.NumberOfFrames, ds.FrameTime = len(frames), 1000.0 / 12  # 12 frames/s
    if regions:
        r = pydicom.Dataset()
        r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 0
        r.RegionLocationMinX0, r.RegionLocationMinY0 = MARGIN, MARGIN
        r.RegionLocationMaxX1, r.RegionLocationMaxY1 = w - MARGIN - 1, h - MARGIN - 1  # inclusive
        r.PhysicalUnitsXDirection, r.PhysicalUnitsYDirection = 3, 3  # cm
        r.PhysicalDeltaX, r.PhysicalDeltaY = 0.01, 0.01
        ds.SequenceOfUltrasoundRegions = pydicom.Sequence([r])
    stack = np.stack(frames)
    if photometric == "MONOCHROME1":
        px = (4095 - stack.astype(np.uint16) * 16).astype(np.uint16)  # 12-bit, inverted
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 16, 12, 11, 1
    elif photometric in ("RGB", "YBR_FULL_422"):
        px = np.repeat(stack[..., None], 3, axis=-1)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel, ds.PlanarConfiguration = 8, 8, 7, 3, 0
    else:
        px = stack
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 8, 8, 7, 1
    if photometric == "PALETTE COLOR":
        lut = np.arange(256, dtype=np.uint16) * 257  # a grey palette, 16-bit entries
        for c in ("Red", "Green", "Blue"):
            setattr(ds, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{c}PaletteColorLookupTableData", lut.tobytes())
    ds.PhotometricInterpretation = photometric
    arr = px if multi else px[0]
    if syntax == "jpeg":
        jpgs = []
        for f in px:
            buf = io.BytesIO()
            Image.fromarray(f, "RGB").save(buf, format="JPEG", quality=95, subsampling=1)  # 4:2:2
            jpgs.append(buf.getvalue())
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate(jpgs)
        ds["PixelData"].VR = "OB"
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = arr.tobytes()
        if syntax == "rle":
            ds.compress(RLELossless, arr, encoding_plugin="pydicom")
        elif syntax == "j2k":
            ds.compress(JPEG2000Lossless, arr)
    return ds


def write_dicom(
    out: str | Path, n: int, seed: int = 0, truth: str | Path | None = None, workers: int = 1, progress: bool = False
) -> list[dict]:
    """``n`` DICOM files cycling through :data:`DICOM_VARIANTS`; returns the truth records."""
    out = check_args(out, n, seed, truth, workers)
    records = []
    for i in range(n):
        stem, syntax, photometric, n_frames, regions, ext = DICOM_VARIANTS[i % len(DICOM_VARIANTS)]
        rng = np.random.default_rng([seed, i])
        frames = clip_frames(rng, n_frames)
        name = f"{i:04d}_{stem}{ext}"
        _dataset(frames, syntax, photometric, regions).save_as(out / name, enforce_file_format=True)
        h, w = frames[0].shape
        records.append(
            {
                "path": name,
                "kind": "dicom",
                "syntax": syntax,
                "photometric": photometric,
                "frames": n_frames,
                "fps": 12.0 if n_frames > 1 else None,
                "regions": regions,
                "bbox": [MARGIN, MARGIN, w - MARGIN, h - MARGIN],
            }
        )
    write_truth(truth, records)
    return records


def encode_video(frames: list[np.ndarray], path: str | Path, fps: int = 12, codec: str = "libx264") -> None:
    """Grey frames -> a video file: H.264 (yuv420p, crf 18) or MJPEG (yuvj420p)."""
    import av

    h, w = frames[0].shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if codec == "libx264" else "yuvj420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, axis=-1), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_frames(family: str, frames: list[np.ndarray], folder: str | Path) -> None:
    """One clip of grey frames as ``family``: ``image`` (a PNG per frame), ``dicom`` (a JPEG 2000
    cine with an ultrasound region), ``video`` (H.264 mp4) or ``nifti`` (a 2D+t sequence)."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    if family == "image":
        for i, f in enumerate(frames):
            Image.fromarray(f).save(folder / f"{i:05d}.png", compress_level=1)
    elif family == "dicom":
        _dataset(frames, "j2k", "MONOCHROME2", regions=True).save_as(folder / "cine.dcm", enforce_file_format=True)
    elif family == "nifti":
        import SimpleITK as sitk

        sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(f[None]) for f in frames]), str(folder / "seq.nii.gz"))
    else:
        encode_video(frames, folder / "clip.mp4", fps=30)


def write_video(
    out: str | Path,
    n: int,
    seed: int = 0,
    truth: str | Path | None = None,
    workers: int = 1,
    progress: bool = False,
    frames: int = 24,
    fps: int = 12,
) -> list[dict]:
    """``n`` clips alternating mp4 (H.264, yuv420p) and avi (MJPEG); returns the truth records."""
    out = check_args(out, n, seed, truth, workers)
    records = []
    for i in range(n):
        rng = np.random.default_rng([seed, 1000 + i])
        clip = clip_frames(rng, frames, step=4)
        mp4 = i % 2 == 0
        name = f"{i:04d}_clip.{'mp4' if mp4 else 'avi'}"
        h, w = clip[0].shape
        encode_video(clip, out / name, fps, "libx264" if mp4 else "mjpeg")
        records.append(
            {
                "path": name,
                "kind": "video",
                "codec": "h264" if mp4 else "mjpeg",
                "frames": frames,
                "fps": float(fps),
                "bbox": [MARGIN, MARGIN, w - MARGIN, h - MARGIN],
            }
        )
    write_truth(truth, records)
    return records
