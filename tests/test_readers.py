"""Readers (shards.readers): DICOM syntaxes and photometric rules, ultrasound regions, video, volumes,
arrays, detection by content, the DICOM allow-list, and bad input counted under its reason."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from shards.build import BuildSettings, build_shards
from shards.catalogue import SourceConfig
from shards.frames import Sampling
from shards.options import SourceOptions
from shards.readers import ReadError, detect_family, open_media
from shards.synth.media import clip_frames, encode_video, write_dicom, write_video

PYDICOM_FILES = Path(__import__("pydicom").__file__).parent / "data" / "test_files"
ALL = SourceOptions(frames=Sampling(mode="all", max=None))


def frames_of(path: Path | str, opts: SourceOptions = ALL) -> list:
    media = open_media(str(path), Path(path).name, opts)
    return [f.pixels for f in media.frames]


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dicom") / "d"
    write_dicom(out, n=7, seed=3)
    return out


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video") / "v"
    write_video(out, n=2, seed=3)
    return out


def truth_frames(i: int, n: int) -> list[np.ndarray]:
    return clip_frames(np.random.default_rng([3, i]), n)


def test_dicom_photometric_rules_against_the_source_pixels(dicom_dir):
    files = sorted(dicom_dir.iterdir())
    assert [f.name for f in files][3] == "0003_ybr_jpeg"  # no extension: detected by content
    exact = {"0000_mono2_explicit.dcm": 1, "0002_rgb_rle.dcm": 1, "0004_palette.dcm": 1, "0005_cine_j2k.dcm": 12}
    for i, f in enumerate(files):
        got = frames_of(f)
        want = truth_frames(i, len(got))
        assert len(got) == {"0005_cine_j2k.dcm": 12, "0006_cine_rle": 8}.get(f.name, 1)
        for g, w in zip(got, want):
            assert g.ndim == 2 and g.dtype == np.uint8  # grey stored as RGB/YBR/palette comes out grey
            diff = np.abs(g.astype(int) - w.astype(int))
            if f.name in exact or f.name == "0006_cine_rle":
                assert diff.max() == 0, f.name  # lossless syntaxes
            elif "mono1" in f.name:
                assert diff.max() <= 1, f.name  # 12-bit MONOCHROME1, inverted and scaled by 4095
            else:
                assert diff.mean() < 2.0, f.name  # JPEG baseline YBR_FULL_422


@pytest.mark.parametrize(
    "name, shape",
    [
        ("JPEGLSNearLossless_08.dcm", (45, 10)),  # JPEG-LS
        ("SC_rgb_jls_lossy_line.dcm", (100, 100, 3)),  # JPEG-LS, RGB
        ("examples_jpeg2k.dcm", (480, 640, 3)),  # JPEG 2000, YBR_RCT, real ultrasound (power Doppler)
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", (100, 100, 3)),  # JPEG baseline YBR_FULL_422
        ("SC_rgb_rle_16bit.dcm", (100, 100, 3)),  # RLE, 16-bit RGB
        ("examples_palette.dcm", (350, 800, 3)),  # PALETTE COLOR, real ultrasound
        ("SC_ybr_full_422_uncompressed.dcm", (100, 100, 3)),
    ],
)
def test_bundled_dicom_syntaxes_decode(name, shape):
    import pydicom
    from pydicom.pixels import apply_color_lut

    (px,) = frames_of(PYDICOM_FILES / name)
    assert px.shape == shape and px.dtype == np.uint8
    ds = pydicom.dcmread(PYDICOM_FILES / name)
    ref = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        ref = apply_color_lut(ref, ds)  # 16-bit entries
    if ref.dtype == np.uint16:
        ref = (ref.astype(np.int64) * 255 // 65535).astype(np.uint8)
    assert np.abs(px.astype(int) - ref.astype(int)).max() <= 1


def test_real_cine_with_bad_regions_falls_back_to_heuristic():
    # pydicom's examples_ybr_color.dcm: a real 30-frame echo cine (SonoSite, YBR_FULL_422 JPEG) whose
    # ultrasound region lies outside the (resized) pixel matrix, so it cannot be trusted.
    media = open_media(str(PYDICOM_FILES / "examples_ybr_color.dcm"), "x", SourceOptions())
    assert media.multi and media.n_frames == 30 and media.fps == pytest.approx(30.0, abs=0.1)
    assert media.region is None and media.meta["dicom"]["manufacturer"] == "SonoSite, Inc."
    assert [f.index for f in media.frames] == [0, 10, 20]  # 3 frames/s of a 1-second clip


def test_detection_by_content_not_name(tmp_path, dicom_dir):
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    (tmp_path / "scan.dat").write_bytes(png.getvalue())
    assert detect_family(png.getvalue()[:512], "scan.dat") == "image"
    head = (dicom_dir / "0006_cine_rle").read_bytes()[:512]
    assert detect_family(head, "0006_cine_rle") == "dicom"
    assert detect_family(b"\x00\x00\x00\x18ftypmp42" + b"\0" * 20, "clip.bin") == "video"
    assert detect_family(b"\x93NUMPY" + b"\0" * 20, "a") == "array"
    assert detect_family(b"NRRD0004\n", "a") == "volume"
    assert detect_family(b"ObjectType = Image\nNDims = 3\n", "a.mha") == "volume"
    assert detect_family(b"\x0b\x00\x00\x00\x00\x01", "interson-video.cine") == "unsupported"
    assert detect_family(b"hello world", "notes.txt") is None


def test_detection_order_decides_weak_signatures(dicom_dir):
    raw_tag = b"\x08\x00\x05\x00CS\x0a\x00" + b"\0" * 16  # a preamble-less dataset: (0008,0005) CS
    assert detect_family(raw_tag, "frame") == "dicom"
    assert detect_family(raw_tag, "frame.cine") == "unsupported"  # the extension rule is tried first
    preamble = (dicom_dir / "0000_mono2_explicit.dcm").read_bytes()[:512]
    assert detect_family(preamble, "frame.cine") == "dicom"  # DICM at 128 is tried before everything
    assert detect_family(b"PK\x03\x04" + b"\0" * 20, "a.npz") == "array"
    assert detect_family(b"PK\x03\x04" + b"\0" * 20, "a.zip") is None  # only a zip named .npz
    assert detect_family(b"\x1f\x8b\x08" + b"\0" * 20, "A.NII.GZ") == "volume"  # names compared lower-cased
    assert detect_family(b"\x1f\x8b\x08" + b"\0" * 20, "a.gz") is None
    with pytest.raises(ReadError, match="^unsupported_format: cine$"):
        open_media(b"\x0b\x00\x00\x00" + bytes(200), "Recording.CINE", SourceOptions())


def test_telling_a_format_loads_no_decoding_library(dicom_dir, video_dir):
    """Sources sniff every file in the main process; the decoders load only in the workers that read."""
    files = [dicom_dir / "0006_cine_rle", video_dir / "0000_clip.mp4"]
    code = (
        "import sys\nfrom shards.readers import detect_family\n"
        f"print([detect_family(open(p, 'rb').read(512), p) for p in {[str(f) for f in files]!r}])\n"
        "print(sorted(m for m in ('PIL', 'pydicom', 'av', 'SimpleITK', 'h5py', 'scipy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["['dicom', 'video']", "[]"]


def test_a_clip_left_half_read_closes_quietly_at_exit(tmp_path):
    """A script that stops after a clip's first frame leaves its generator open; Python closes it as
    the interpreter exits, after the decoding library's names are gone: nothing may be printed then
    (before: a TypeError traceback from the reader's ``except`` clause)."""
    encode_video(clip_frames(np.random.default_rng(0), 240, step=1), tmp_path / "long.mp4", fps=4)
    code = (
        "from shards.extract import frames_with_area\nfrom shards.options import SourceOptions\n"
        "from shards.readers import open_media\n"
        f"m = open_media({str(tmp_path / 'long.mp4')!r}, 'c.mp4', SourceOptions())\n"
        "for f, a in frames_with_area(m):\n    break\nprint(f.index)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout == "0\n" and proc.stderr == "", proc.stderr


def test_video_is_sampled_by_time(video_dir):
    for f in sorted(video_dir.iterdir()):
        media = open_media(str(f), f.name, SourceOptions())
        assert media.family == "video" and media.fps == pytest.approx(12.0)
        idx = [fr.index for fr in media.frames]
        assert idx == [0, 4, 8, 12, 16, 20]  # 24 frames at 12 fps, sampled at 3 fps
        all_frames = frames_of(f)
        assert len(all_frames) == 24
        want = truth_frames(1000 + int(f.name[:4]), 24)  # (write_video seeds [seed, 1000 + i])
        h, w = want[0].shape
        assert all_frames[0].shape[:2] == (h, w)


def _nifti_sequence(path: Path, frames: np.ndarray) -> None:
    import SimpleITK as sitk

    img = sitk.JoinSeries([sitk.GetImageFromArray(f[None]) for f in frames])  # x, y, 1, t
    sitk.WriteImage(img, str(path))


def test_volumes_sequences_slices_and_skip(tmp_path):
    import SimpleITK as sitk

    frames = np.stack(truth_frames(0, 5))
    _nifti_sequence(tmp_path / "seq.nii.gz", frames)
    got = frames_of(tmp_path / "seq.nii.gz")
    assert len(got) == 5 and all(np.array_equal(g, f) for g, f in zip(got, frames))
    vol = sitk.GetImageFromArray(frames)  # 3D: z=5
    vol.SetSpacing((0.2, 0.2, 0.5))
    sitk.WriteImage(vol, str(tmp_path / "vol.mha"))
    media = open_media(str(tmp_path / "vol.mha"), "vol.mha", ALL)  # default: axis 0 is time
    assert media.n_frames == 5 and media.spacing_mm == (0.2, 0.2)
    assert np.array_equal([f.pixels for f in media.frames][2], frames[2])
    sl = frames_of(
        tmp_path / "vol.mha", SourceOptions(frames=Sampling(mode="all", max=None), volume="slices", volume_axis=2)
    )
    assert len(sl) == frames.shape[2] and np.array_equal(sl[7], frames[:, :, 7])
    vol.SetSpacing((0.3, 0.4, 2.0))  # x, y, z in mm: a slice keeps its own two (they used to be dropped)
    sitk.WriteImage(vol, str(tmp_path / "aniso.mha"))
    for axis, want in ((0, (0.3, 0.4)), (1, (0.3, 2.0)), (2, (0.4, 2.0))):
        opts = SourceOptions(volume="slices", volume_axis=axis)
        assert open_media(str(tmp_path / "aniso.mha"), "aniso.mha", opts).spacing_mm == pytest.approx(want), axis
    with pytest.raises(ReadError) as exc:
        open_media(str(tmp_path / "vol.mha"), "vol.mha", SourceOptions(volume="skip"))
    assert exc.value.reason == "volume_skipped"
    sitk.WriteImage(sitk.GetImageFromArray(frames[0]), str(tmp_path / "one.nrrd"))
    media = open_media(str(tmp_path / "one.nrrd"), "one.nrrd", ALL)
    assert not media.multi and np.array_equal(next(media.frames).pixels, frames[0])


def test_arrays_npy_npz_mat_h5(tmp_path):
    import h5py
    from scipy.io import savemat

    frames = np.stack(truth_frames(1, 5))  # T x H x W
    np.save(tmp_path / "clip.npy", frames)
    np.savez(tmp_path / "two.npz", cine=frames, label=np.arange(3))
    savemat(tmp_path / "v5.mat", {"cine": np.moveaxis(frames, 0, -1)})  # MATLAB: H x W x T
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:
        f["cine"] = np.moveaxis(frames, 0, -1).T  # column-major on disk, as MATLAB writes it
    with open(tmp_path / "v73.mat", "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(128, b" "))
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["us/frames"] = frames.astype(np.float32) / 255.0  # floats in [0, 1]
    opts = SourceOptions(frames=Sampling(mode="all", max=None), array_key="cine")
    for name in ("clip.npy", "two.npz", "v5.mat", "v73.mat"):
        got = frames_of(tmp_path / name, opts)
        assert len(got) == 5 and all(np.array_equal(g, f) for g, f in zip(got, frames)), name
    got = frames_of(tmp_path / "data.h5", SourceOptions(frames=Sampling(mode="all", max=None), array_key="us/frames"))
    assert np.abs(got[1].astype(int) - frames[1]).max() <= 1
    # H x W x 3 uint8 reads as one colour image unless the layout says it is 3 frames
    savemat(tmp_path / "three.mat", {"cine": np.moveaxis(frames[:3], 0, -1)})
    assert len(frames_of(tmp_path / "three.mat", opts)) == 1
    assert len(frames_of(tmp_path / "three.mat", SourceOptions(frames=opts.frames, array_layout="hwt"))) == 3
    with pytest.raises(ReadError) as exc:
        open_media(str(tmp_path / "two.npz"), "two.npz", SourceOptions())  # two arrays, no key
    assert exc.value.reason == "array_key_missing"


def test_wide_integers_get_one_scale_per_clip_from_their_bit_depth(tmp_path):
    import SimpleITK as sitk

    frames = np.stack(truth_frames(2, 4)).astype(np.uint16)
    # frames alternately within 8 bits and just above: one scale for the clip, not one per frame
    mixed = np.stack([f if i % 2 == 0 else f * 2 for i, f in enumerate(frames)])
    np.save(tmp_path / "mixed.npy", mixed)
    sitk.WriteImage(sitk.GetImageFromArray(mixed), str(tmp_path / "mixed.nrrd"))
    top = int(mixed.max())  # 9 bits: scaled by 511
    for name in ("mixed.npy", "mixed.nrrd"):
        got = frames_of(tmp_path / name)
        want = [(m.astype(np.int64) * 255 // ((1 << top.bit_length()) - 1)).astype(np.uint8) for m in mixed]
        assert all(np.array_equal(g, w) for g, w in zip(got, want)), name
        assert got[1].mean() > 1.8 * got[0].mean()  # the bright frame stays brighter
    # 12-bit data in uint16 / int16 fills the uint8 range (not 4095/65535 of it)
    twelve = (frames[0].astype(np.int64) * 4095 // 255).astype(np.uint16)
    np.save(tmp_path / "twelve.npy", twelve)
    sitk.WriteImage(sitk.GetImageFromArray(twelve.astype(np.int16)), str(tmp_path / "twelve.mha"))
    for name in ("twelve.npy", "twelve.mha"):
        (got,) = frames_of(tmp_path / name)
        assert np.abs(got.astype(int) - frames[0]).max() <= 1, name


def test_channels_last_arrays_of_any_type_are_one_image(tmp_path):
    frame = truth_frames(3, 1)[0]
    np.save(tmp_path / "one.npy", frame[..., None])
    np.save(tmp_path / "rgb_float.npy", np.repeat(frame[..., None], 3, 2).astype(np.float32) / 255)
    np.save(tmp_path / "rgb16.npy", np.repeat(frame[..., None], 3, 2).astype(np.uint16) * 257)
    for name in ("one.npy", "rgb_float.npy", "rgb16.npy"):
        media = open_media(str(tmp_path / name), name, ALL)
        (got,) = [f.pixels for f in media.frames]
        assert not media.multi and got.shape == frame.shape and np.abs(got.astype(int) - frame).max() <= 1, name
    np.save(tmp_path / "empty.npy", np.zeros((0, 32, 32), np.uint8))
    with pytest.raises(ReadError) as exc:
        open_media(str(tmp_path / "empty.npy"), "empty.npy", ALL)
    assert exc.value.reason == "bad_array_shape"


def test_a_non_finite_frame_is_rejected_alone_and_the_clip_goes_on(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    clip = np.stack(truth_frames(4, 6)).astype(np.float32) / 255
    clip[3] = np.inf
    clip[4, 0, 0] = np.nan  # one pixel is enough
    np.save(src / "clip.npy", clip)
    opts = SourceConfig(name="s", path=str(src), options=SourceOptions(frames=Sampling(mode="all", max=None)))
    out = tmp_path / "out"
    m = build_shards([opts], out, BuildSettings(size=64, workers=1), progress=False)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    bad = sorted((r["frame"], r["values"]["detail"]) for r in rejects if r["reason"] == "non_finite")
    assert [f for f, _ in bad] == [3, 4] and bad[1][1].startswith("1 of ")
    seen = {r["frame"] for r in rejects} | {
        json.loads(s["json"])["frame"] for s in wds.WebDataset([str(out / s) for s in m["shards"]], shardshuffle=False)
    }
    assert seen == set(range(6)) and m["rejected"]["non_finite"] == 2  # frames after the bad ones are read


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, dicom_dir, video_dir) -> Path:
    """PNG, DICOM (several syntaxes, with and without regions), mp4/avi, NIfTI, arrays and bad input."""
    import pydicom
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("mixed") / "m"
    (root / "png").mkdir(parents=True)
    for i, f in enumerate(truth_frames(20, 2)):
        Image.fromarray(f).save(root / "png" / f"img{i}.png")
    shutil.copytree(dicom_dir, root / "dicom")
    shutil.copytree(video_dir, root / "video")
    (root / "vol").mkdir()
    _nifti_sequence(root / "vol" / "seq.nii.gz", np.stack(truth_frames(21, 6)))
    np.save(root / "vol" / "arr.npy", np.stack(truth_frames(22, 3)))
    bad = root / "bad"
    bad.mkdir()
    raw = (dicom_dir / "0000_mono2_explicit.dcm").read_bytes()
    (bad / "truncated.dcm").write_bytes(raw[: len(raw) // 2])
    ds = pydicom.dcmread(dicom_dir / "0006_cine_rle")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder plugin
    ds.save_as(bad / "mpeg2.dcm")
    mp4 = (video_dir / "0000_clip.mp4").read_bytes()
    (bad / "corrupt.mp4").write_bytes(mp4[:48] + bytes(range(256)) * 8)
    (bad / "zero.mp4").write_bytes(b"")
    nii = bytearray((root / "vol" / "seq.nii.gz").read_bytes())
    sitk.WriteImage(sitk.GetImageFromArray(truth_frames(23, 1)[0]), str(bad / "broken.nii"))
    b = bytearray((bad / "broken.nii").read_bytes())
    b[40:56] = b"\xff" * 16  # dim[] garbled
    (bad / "broken.nii").write_bytes(bytes(b))
    del nii
    from scipy.io import savemat

    savemat(bad / "nokey.mat", {"a": np.zeros((20, 20)), "b": np.ones((20, 20))})
    (bad / "recording.cine").write_bytes(b"\x0b\x00\x00\x00" + bytes(200))
    (bad / "notes.txt").write_text("operator notes")
    return root


@pytest.fixture(scope="module")
def mixed_build(mixed_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixed_out") / "s"
    build_shards(
        {"mix": str(mixed_folder)}, out, BuildSettings(size=64, samples_per_shard=8, workers=1), progress=False
    )
    return out


def read_samples(out: Path) -> list[dict]:
    m = json.loads((out / "manifest.json").read_text())
    ds = wds.WebDataset([str(out / s) for s in m["shards"]], shardshuffle=False, empty_check=False)
    return [{"meta": json.loads(s["json"]), "url": s["__url__"], "png": s["png"]} for s in ds]


def test_bad_input_is_counted_under_its_reason_and_nothing_else_is_lost(mixed_build):
    m = json.loads((mixed_build / "manifest.json").read_text())
    rejects = [json.loads(line) for line in (mixed_build / "rejects.jsonl").read_text().splitlines()]
    by_path = {r["path"]: r["reason"] for r in rejects if r["path"].startswith("bad/")}
    assert by_path == {
        "bad/truncated.dcm": "truncated",
        "bad/mpeg2.dcm": "undecodable",
        "bad/corrupt.mp4": "unreadable",
        "bad/zero.mp4": "empty_file",
        "bad/broken.nii": "unreadable",
        "bad/nokey.mat": "array_key_missing",
        "bad/recording.cine": "unsupported_format",
        "bad/notes.txt": "not_image",
    }
    stats = m["per_source"]["mix"]
    # every good file gave its frames: 2 PNG + 5 single DICOM + 3 + 2 cine frames + 2 x 6 video
    # frames + 2 NIfTI (6 frames, no rate: every 1 .. spread cap 30 -> all 6) ...
    kept_paths = {s["meta"]["path"] for s in read_samples(mixed_build)}
    good = {p for p in kept_paths if not p.startswith("bad/")}
    assert len(good) == 2 + 7 + 2 + 2 and not kept_paths & set(by_path)
    assert stats["files"] == 21 and stats["kept"] == m["num_samples"]
    assert sum(stats["rejected"].values()) == len(rejects) == sum(m["rejected"].values())


def test_a_transfer_syntax_this_pydicom_does_not_know_is_undecodable(dicom_dir, tmp_path):
    """GE Vivid E95 clips coded as JPEG XL (dcm4che's will-jxl.dcm): pydicom 3.0 has no such transfer
    syntax. The file is a codec the environment lacks, not a broken one."""
    import pydicom

    ds = pydicom.dcmread(dicom_dir / "0006_cine_rle")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2, which pydicom writes ...
    ds.save_as(tmp_path / "mpeg2.dcm")
    raw = (tmp_path / "mpeg2.dcm").read_bytes()  # ... then JPEG XL's UID, of the same length, in its place
    (tmp_path / "jxl.dcm").write_bytes(raw.replace(b"1.2.840.10008.1.2.4.100", b"1.2.840.10008.1.2.4.111"))
    with pytest.raises(ReadError) as err:
        list(open_media(str(tmp_path / "jxl.dcm"), "jxl.dcm", SourceOptions()).frames)
    assert err.value.reason == "undecodable", err.value


def test_a_deep_dicom_cine_is_scaled_alike_frame_to_frame(dicom_dir, tmp_path):
    """12 bits stored, a dim frame (max 201) before a bright one (max 4032): each was scaled on its
    own, the dim one kept as is (about 16x too bright beside the other). One scale per file now."""
    import pydicom

    ds = pydicom.dcmread(dicom_dir / "0000_mono2_explicit.dcm")
    h, w = int(ds.Rows), int(ds.Columns)
    ramp = np.linspace(0, 1, h * w).reshape(h, w)
    frames = np.stack([np.round(ramp * 201), np.round(ramp * 4032)]).astype(np.uint16)

    def write(name: str, bits: int, pixels: np.ndarray) -> Path:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        ds.NumberOfFrames, ds.FrameTime, ds.PixelData = len(pixels), 100.0, pixels.tobytes()
        for key in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
            ds.pop(key, None)
        ds.save_as(tmp_path / name, enforce_file_format=False)
        return tmp_path / name

    every = SourceOptions(frames=Sampling(mode="all", max=None))
    cine = [f.pixels for f in open_media(str(write("deep.dcm", 12, frames)), "deep.dcm", every).frames]
    assert [int(f.max()) for f in cine] == [201 * 255 // 4095, 4032 * 255 // 4095]  # 12 and 251
    # 16 bits stored holding 8-bit values (a container): kept as they are, every frame alike
    eight = (frames // 16).astype(np.uint16)  # max 12 and 252
    kept = [f.pixels for f in open_media(str(write("box.dcm", 16, eight[::-1])), "box.dcm", every).frames]
    assert [int(f.max()) for f in kept] == [252, 12]


def test_clip_frames_carry_clip_and_frame_and_stay_in_one_shard(mixed_build):
    samples = read_samples(mixed_build)
    shards_of: dict[str, set] = {}
    for s in samples:
        meta = s["meta"]
        if meta["path"].endswith((".png", "mono2_explicit.dcm")):
            assert "clip" not in meta and "frame" not in meta
        if "clip" in meta:
            assert meta["clip"] == meta["path"]
            shards_of.setdefault(meta["clip"], set()).add(s["url"])
    assert {"video/0000_clip.mp4", "dicom/0005_cine_j2k.dcm", "vol/seq.nii.gz"} <= set(shards_of)
    assert all(len(v) == 1 for v in shards_of.values())  # one shard per clip
    video = sorted(s["meta"]["frame"] for s in samples if s["meta"]["path"] == "video/0001_clip.avi")
    assert set(video) <= {0, 4, 8, 12, 16, 20} and video[0] == 0


def test_dicom_regions_crop_exactly_and_only_the_allow_list_leaves(mixed_build, dicom_dir):
    samples = [s for s in read_samples(mixed_build) if s["meta"]["path"].startswith("dicom/")]
    truth = {r["path"]: r for r in write_dicom(dicom_dir.parent / "again", n=7, seed=3)}
    for s in samples:
        meta = s["meta"]
        t = truth[meta["path"].split("/", 1)[1]]
        if t["regions"]:
            assert meta["crop_source"] == "dicom_region" and meta["crop"] == t["bbox"]
            side = max(t["bbox"][2] - t["bbox"][0], t["bbox"][3] - t["bbox"][1])
            assert meta["spacing_mm"] == pytest.approx([0.1 * side / 64] * 2)  # 0.01 cm per source pixel
        else:  # issue 17: the frames of a clip share the one scan area found for the clip
            assert meta["crop_source"] == ("clip" if "frame" in meta else "heuristic") and "spacing_mm" not in meta
        assert meta["dicom"] == {"modality": "US", "manufacturer": "sonodistill", "model": "synth-L12"}
    blob = b"".join(p.read_bytes() for p in mixed_build.iterdir())
    for secret in (b"Doe^Jane", b"SYNTH-0042", b"20240131", b"1.2.826.0.1.3680043"):
        assert secret not in blob  # no names, ids, dates or UIDs in shards, manifest or rejects


def test_mixed_build_identical_for_any_worker_count(mixed_folder, mixed_build, tmp_path):
    out = tmp_path / "w2"
    build_shards(
        [SourceConfig(name="mix", path=str(mixed_folder))],
        out,
        BuildSettings(size=64, samples_per_shard=8, workers=2),
        progress=False,
    )
    for p in sorted(mixed_build.iterdir()):
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name


def test_animated_gif_is_a_clip_timed_by_its_frame_duration(tmp_path):
    frames = [Image.fromarray(f) for f in truth_frames(30, 6)]
    frames[0].save(tmp_path / "loop.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    media = open_media(str(tmp_path / "loop.gif"), "loop.gif", SourceOptions())
    assert media.multi and media.n_frames == 6 and media.fps == pytest.approx(10.0)
    got = list(media.frames)
    assert [f.index for f in got] == [0, 3]  # 10 frames/s sampled at 3 frames/s
    assert np.abs(got[1].pixels.astype(int) - np.asarray(frames[3]).astype(int)).mean() < 2


def _read_all(path: Path) -> tuple[list, ReadError | None]:
    """Every frame a reader gives before it stops, and the error it stopped with (None: none)."""
    got = []
    try:
        for fr in open_media(str(path), path.name, ALL).frames:
            got.append(fr)
    except ReadError as exc:
        return got, exc
    return got, None


def test_an_animated_gif_cut_short_keeps_its_frames_and_is_truncated(tmp_path):
    """Before: PIL's frame count failed on the cut file, which was read as one still image with no
    clip, no frame index and nothing recorded."""
    frames = [Image.fromarray(f) for f in truth_frames(31, 6)]
    frames[0].save(tmp_path / "whole.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = (tmp_path / "whole.gif").read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[: len(data) // 2])
    media = open_media(str(tmp_path / "cut.gif"), "cut.gif", ALL)
    assert media.multi
    got, err = _read_all(tmp_path / "cut.gif")
    assert err is not None and err.reason == "truncated"
    assert 1 <= len(got) < 6 and [f.index for f in got] == list(range(len(got)))
    assert np.abs(got[0].pixels.astype(int) - np.asarray(frames[0].convert("L")).astype(int)).mean() < 2
    assert _read_all(tmp_path / "whole.gif")[1] is None and len(_read_all(tmp_path / "whole.gif")[0]) == 6


def test_a_video_cut_short_keeps_its_frames_and_is_truncated(tmp_path, pocus_dir):
    """An MJPEG AVI cut in half ends without a decoding error: before, it just ended early with
    nothing recorded. Whole files, synthetic and real, are never called truncated."""
    encode_video(clip_frames(np.random.default_rng(0), 24), tmp_path / "whole.avi", fps=12, codec="mjpeg")
    data = (tmp_path / "whole.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    got, err = _read_all(tmp_path / "cut.avi")
    assert err is not None and err.reason == "truncated" and 0 < len(got) < 24
    for whole in [
        tmp_path / "whole.avi",
        pocus_dir / "clarius-ocular-short.mp4",
        pocus_dir / "sonosite-anon-eye1-video.mp4",
    ]:
        got, err = _read_all(whole)
        assert err is None and got, whole.name


def test_an_mp4_trimmed_without_re_encoding_is_not_truncated(tmp_path):
    """A clip trimmed by stream copy (``ffmpeg -ss 0.67 -c copy``, a phone's trim) keeps the samples
    before the cut, hidden: it declares 60 frames and plays 40. Whole, not cut short."""
    import av

    encode_video(clip_frames(np.random.default_rng(0), 60), tmp_path / "src.mp4", fps=30)
    with av.open(str(tmp_path / "src.mp4")) as src, av.open(str(tmp_path / "trim.mp4"), "w") as out:
        ins = src.streams.video[0]
        outs = out.add_stream_from_template(ins)
        shift = int(20 / 30 / ins.time_base)  # the first 20 frames before the clip's start
        for packet in src.demux(ins):
            if packet.dts is None:
                continue
            packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, outs
            out.mux(packet)
    with av.open(str(tmp_path / "trim.mp4")) as c:
        declared, plays = c.streams.video[0].frames, sum(1 for _ in c.decode(video=0))
    assert declared - plays >= 10  # the case: a container count above what plays
    got, err = _read_all(tmp_path / "trim.mp4")
    assert err is None and got


def test_a_video_is_turned_as_its_display_matrix_says(tmp_path):
    """A phone held upright stores landscape pixels and a 90-degree display matrix; players show it
    portrait (before: stored as landscape, on its side)."""
    import av

    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:8, :8] = 255  # a bright top-left corner
    with av.open(str(tmp_path / "portrait.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(-90)  # a clockwise quarter turn to show it
        for _ in range(3):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    got, err = _read_all(tmp_path / "portrait.mp4")
    assert err is None and len(got) == 3
    px = got[0].pixels
    assert px.shape[:2] == (64, 48)  # portrait
    assert px[:8, -8:].mean() > 200 and px[:8, :8].mean() < 50  # top-left turned clockwise: top-right


def test_a_video_container_with_a_stream_and_no_frame_is_empty_video(tmp_path):
    """FFmpeg fails to open a Matroska file with a track and no frame (before: `unreadable`); one cut
    inside its header stays `unreadable`."""
    import av

    with av.open(str(tmp_path / "zero.mkv"), "w") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        out.start_encoding()
    with pytest.raises(ReadError) as exc:
        open_media(str(tmp_path / "zero.mkv"), "zero.mkv", ALL)
    assert exc.value.reason == "empty_video"
    encode_video(clip_frames(np.random.default_rng(0), 4), tmp_path / "four.mkv", fps=12, codec="mjpeg")
    head = (tmp_path / "four.mkv").read_bytes()[:60]
    with pytest.raises(ReadError) as exc:
        list(open_media(head, "cut.mkv", ALL).frames)
    assert exc.value.reason in ("unreadable", "truncated")


def test_a_compressed_dicom_cut_short_is_truncated_and_a_damaged_one_unreadable(pocus_dir):
    """A real JPEG-baseline DICOM (Sonoque): every decoder there fails on it either way; a file that
    ends before its encapsulated frames do is `truncated`, one whole but garbled `unreadable`, and
    neither is `undecodable` (kept for a transfer syntax no plugin decodes)."""
    from shards.readers.dicom import read_dicom

    raw = (pocus_dir / "sonoque_anechoic-3mm-3mm.dcm").read_bytes()
    assert len(list(read_dicom(raw, SourceOptions()).frames)) >= 1  # whole, it decodes
    garbled = bytearray(raw)
    soi = raw.index(b"\xff\xd8\xff")  # the first frame's JPEG start: its header overwritten, the file whole
    garbled[soi : soi + 64] = bytes(64)
    for data, reason in ((raw[:200_000], "truncated"), (bytes(garbled), "unreadable")):
        with pytest.raises(ReadError) as exc:
            list(read_dicom(data, SourceOptions()).frames)
        assert exc.value.reason == reason
