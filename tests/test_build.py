"""shards.build: cleaning rules, dedup, manifest/shard agreement, determinism, resume, bad input."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import shards.build as build_mod
from shards.build import BuildSettings, build_shards
from shards.clean import Cleaned, Rejected, clean_image, letterbox
from shards.colour import colour_fraction
from shards.decode import decode_image
from shards.dedup import DuplicateIndex
from shards.ordered_pool import ordered_map
from shards.quality import ultrasound_rejection
from shards.scan_area import detect_scan_area
from shards.synth import render
from sonodistill.errors import UserError


def read_shards(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    urls = [str(out / s) for s in manifest["shards"]]
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    return [{"key": s["__key__"], "png": s["png"], "meta": json.loads(s["json"]), "url": s["__url__"]} for s in ds]


def sources_of(corpus: Path) -> dict[str, str]:
    return {p.name: str(p) for p in sorted(corpus.iterdir()) if p.is_dir()}


def speckle_frame(h=200, w=240, seed=0, pad=40) -> np.ndarray:
    """A linear-probe B-mode frame from the project's generator, inside a black surround."""
    frame = render("thyroid", np.random.default_rng(seed), size=(h, w), tight=True)
    img = frame.image if frame.image.ndim == 2 else frame.image[..., 0]
    out = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
    out[pad : pad + h, pad : pad + w] = img
    return out


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)).save(buf, format=fmt, **kw)
    return buf.getvalue()


# --- manifest, shards and the generator's ground truth ---------------------------------------------


def test_manifest_counts_equal_shard_contents(shard_dir):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    samples = read_shards(shard_dir)
    assert len(samples) == manifest["num_samples"] > 0
    assert Counter(s["meta"]["source"] for s in samples) == Counter({k: v for k, v in manifest["sources"].items() if v})
    per_shard = Counter(Path(s["url"]).name for s in samples)
    assert [per_shard[n] for n in manifest["shards"]] == manifest["shard_samples"]
    assert all(n <= 16 for n in manifest["shard_samples"])
    assert manifest["num_samples"] + sum(manifest["rejected"].values()) == manifest["inputs"]
    assert len({s["key"] for s in samples}) == len(samples)
    for s in samples[:20]:
        img = Image.open(io.BytesIO(s["png"]))
        assert img.mode == "L" and img.size == (64, 64)
        assert {"source", "path", "orig_size", "sha1", "crop"} <= set(s["meta"])
    assert manifest["settings"]["size"] == 64 and "workers" not in manifest["settings"]
    assert not (shard_dir / ".build-journal.jsonl").exists()


def test_rejections_and_duplicates_follow_the_truth(shard_dir, corpus_truth):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    kept = {(s["meta"]["source"], s["meta"]["path"]) for s in read_shards(shard_dir)}
    by_path = {t["path"]: t for t in corpus_truth}
    kinds = Counter(t["kind"] for t in corpus_truth)
    assert kinds["doppler"] and kinds["junk"] and kinds["duplicate"]  # the fixture exercises all rules
    kept_truth = [by_path[f"{src}/{rel}"] for src, rel in kept]
    assert not [t for t in kept_truth if t["kind"] in ("doppler", "junk")]
    # Each original and its copies (exact or near) keep exactly one representative.
    groups = Counter(t["duplicate_of"] or t["path"] for t in kept_truth)
    assert set(groups.values()) == {1}
    originals = {t["path"] for t in corpus_truth if t["kind"] == "ultrasound"}
    assert set(groups) == originals  # and no distinct frame was lost
    assert manifest["rejected"]["colour"] >= kinds["doppler"]
    dups = kinds["duplicate"] + kinds["near_duplicate"]
    assert manifest["rejected"].get("duplicate", 0) + manifest["rejected"].get("near_duplicate", 0) == dups


def test_crop_matches_scan_area_and_drops_overlays(shard_dir, corpus_truth):
    by_path = {t["path"]: t for t in corpus_truth}
    ious, overshoot = [], []
    for s in read_shards(shard_dir):
        t = by_path[f"{s['meta']['source']}/{s['meta']['path']}"]
        x0, y0, x1, y1 = s["meta"]["crop"]
        a0, b0, a1, b1 = t["bbox"]
        inter = max(0, min(x1, a1) - max(x0, a0)) * max(0, min(y1, b1) - max(y0, b0))
        ious.append(inter / ((x1 - x0) * (y1 - y0) + (a1 - a0) * (b1 - b0) - inter))
        overshoot.append(max(a0 - x0, b0 - y0, x1 - a1, y1 - b1))
    assert np.median(ious) > 0.93
    assert np.mean(np.array(ious) > 0.8) > 0.9
    # Burned-in text blocks are >= 40 px wide: a crop at most ~20 px beyond the scan area (a depth
    # scale touching its edge) never takes them in.
    assert max(overshoot) <= 24


def test_overlay_outside_scan_area_is_removed():
    from PIL import ImageDraw

    clean = speckle_frame(pad=40)
    ys, xs = np.nonzero(clean)
    truth = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    img = Image.fromarray(clean)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(["HOSPITAL 12", "2024/01/31 10:22:05", "L12-5 G 55 DR 60"]):
        draw.text((4, 2 + 11 * i), line, fill=255)  # burned-in text in the top margin
    for y in range(45, 240, 20):  # a depth scale beside the image, 4 px away
        draw.line([(284, y), (290, y)], fill=230)
        draw.text((292, y - 5), str((y - 45) // 20), fill=230)
    frame = np.asarray(img)
    res = clean_image(png_bytes(frame), size=320)
    assert isinstance(res, Cleaned)
    x0, y0, x1, y1 = res.meta["crop"]
    assert max(abs(a - b) for a, b in zip((x0, y0, x1, y1), truth)) <= 3, (res.meta["crop"], truth)


def test_a_white_page_is_no_path_between_two_scans():
    """A figure (or a light interface) on white: two scans side by side with a white gutter are two
    scan areas, not one crop across the gutter; a clipped reflector inside a scan is no page."""
    a, b = (speckle_frame(seed=s)[43:192, 41:273] for s in (1, 2))
    h, w = a.shape
    page = np.full((h + 60, 2 * w + 90), 255, np.uint8)
    page[30 : 30 + h, 30 : 30 + w], page[30 : 30 + h, 60 + w : 60 + 2 * w] = a, b
    res = clean_image(png_bytes(page), size=128)
    assert isinstance(res, Cleaned)
    x0, y0, x1, y1 = res.meta["crop"]
    assert x1 - x0 <= w + 6 and (x0 >= 60 + w - 6 or x1 <= 30 + w + 6), res.meta["crop"]  # one panel
    scan = speckle_frame(seed=3)
    scan[100:104, 120:200] = 255  # a saturated fascia line: flat, white, but a stroke
    res = clean_image(png_bytes(scan), size=128)
    assert (
        isinstance(res, Cleaned) and res.meta["crop"] == clean_image(png_bytes(speckle_frame(seed=3)), 128).meta["crop"]
    )


def test_a_vessel_across_a_linear_image_keeps_the_far_wall_and_a_toolbar_under_it_stays_out():
    """A black lumen from side to side splits a linear image into a near and a thin far part with the
    same side edges: both are the image. A strip of textured buttons under an image, going on beside
    it (a device toolbar), is not, though one of its buttons shares the image's edges."""
    rng = np.random.default_rng(0)
    frame = np.zeros((236, 256), np.uint8)
    frame[28:218, 28:228] = rng.integers(40, 200, (190, 200))  # the image (speckle-like texture)
    frame[88:178, 28:228] = 0  # the lumen, from side to side: the far wall is 40 rows under 200 columns
    assert tuple(detect_scan_area(frame).bbox) == (28, 28, 228, 218)
    screen = np.zeros((236, 256), np.uint8)
    screen[28:178, 28:228] = rng.integers(40, 200, (150, 200))
    screen[212:228, 2:254] = rng.integers(40, 200, (16, 252))
    screen[212:228, 22:28] = screen[212:228, 228:234] = 0  # three buttons, the middle one 28..228
    assert tuple(detect_scan_area(screen).bbox) == (28, 28, 228, 178)


def test_letterbox_rule():
    wide = np.arange(10 * 20, dtype=np.uint8).reshape(10, 20) + 1
    sq = letterbox(wide)
    assert sq.shape == (20, 20) and np.array_equal(sq[:10], wide) and not sq[10:].any()  # pad at the bottom
    tall = np.ones((20, 10), np.uint8)
    sq = letterbox(tall)
    assert np.array_equal(sq[:, 5:15], tall) and not sq[:, :5].any() and not sq[:, 15:].any()  # centred


# --- decoding, modes, corrupt files ----------------------------------------------------------------


def test_modes_are_converted_to_8bit_gray(tmp_path):
    gray = speckle_frame()
    ref = clean_image(png_bytes(gray), 64)
    assert isinstance(ref, Cleaned)
    variants = {
        "rgb_equal.png": png_bytes(np.stack([gray] * 3, -1)),
        "gray16.png": png_bytes((gray.astype(np.uint16) * 257), "I;16"),
        "rgba.png": png_bytes(np.dstack([gray, gray, gray, np.full_like(gray, 255)])),
        "palette.png": png_bytes(gray, "P"),
        "gray.bmp": png_bytes(gray, fmt="BMP"),
        "gray.tif": png_bytes(gray, fmt="TIFF"),
    }
    for name, data in variants.items():
        res = clean_image(data, 64)
        assert isinstance(res, Cleaned), name
        assert res.pixel_sha1 == ref.pixel_sha1, name  # identical pixels after conversion
    cmyk_jpeg = png_bytes(gray, "CMYK", fmt="JPEG", quality=95)
    assert Image.open(io.BytesIO(cmyk_jpeg)).mode == "CMYK"
    dec = decode_image(cmyk_jpeg)
    assert dec.pixels.shape == gray.shape  # equal channels after CMYK -> RGB: one gray channel
    assert np.abs(dec.pixels.astype(float) - gray).mean() < 3  # lossy, but the same picture
    assert isinstance(clean_image(cmyk_jpeg, 64), Cleaned)
    # 16-bit by hand: values above 255 are scaled by 255/65535
    g16 = decode_image(png_bytes(np.array([[0, 257, 65535, 32896]], np.uint16), "I;16")).pixels
    assert g16.tolist() == [[0, 1, 255, 128]]


def test_wide_and_float_images_follow_the_array_rule(tmp_path):
    """16/32-bit and float images are scaled as the same pixels in an array are (12-bit data in a
    16-bit PNG by 4095: before, by 65535, nearly black; a mode I TIFF over 65535 came out all zeros)."""
    from shards.readers.base import to_uint8

    gray = speckle_frame()
    twelve = gray.astype(np.uint16) * 16  # 12-bit data in a uint16 PNG
    got = decode_image(png_bytes(twelve)).pixels
    assert np.array_equal(got, to_uint8(twelve)) and got.max() > 200
    wide = gray.astype(np.int32) * 1000  # mode I, values up to 255000
    buf = io.BytesIO()
    Image.fromarray(wide, "I").save(buf, format="TIFF")
    assert np.array_equal(decode_image(buf.getvalue()).pixels, to_uint8(wide))
    assert decode_image(buf.getvalue()).pixels.max() > 200


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_float_image_holding_nan_or_infinity_is_non_finite(bad):
    """As an array's frame is: never kept with undefined casts (NaN) nor blackened (infinity)."""
    f = speckle_frame().astype(np.float32)
    f[10:20, 10:20] = bad
    buf = io.BytesIO()
    Image.fromarray(f, "F").save(buf, format="TIFF")
    res = clean_image(buf.getvalue(), 64)
    assert isinstance(res, Rejected) and res.reason == "non_finite"


def test_transparent_background_composites_to_black():
    gray = speckle_frame()
    alpha = np.where(gray > 0, 255, 0).astype(np.uint8)
    rgba = np.dstack([np.full_like(gray, 200)] * 3 + [alpha])  # background white but transparent
    rgba[..., 0] = rgba[..., 1] = rgba[..., 2] = np.where(alpha > 0, gray, 200)
    res = clean_image(png_bytes(rgba), 64)
    assert isinstance(res, Cleaned) and res.pixel_sha1 == clean_image(png_bytes(gray), 64).pixel_sha1


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"hello, not an image", "not_image"),
    ],
)
def test_bad_bytes_are_rejected_with_reason(data, reason):
    res = clean_image(data, 64)
    assert isinstance(res, Rejected) and res.reason == reason


def test_truncated_real_frame_is_rejected():
    data = png_bytes(speckle_frame())
    res = clean_image(data[: len(data) // 2], 64)
    assert isinstance(res, Rejected) and res.reason == "truncated"


def test_quality_rules():
    gray = speckle_frame()
    assert ultrasound_rejection(gray, detect_scan_area(gray)) is None
    blank = np.full((200, 200), 3, np.uint8)  # a frozen blank frame: no tissue (it was not_ultrasound)
    assert ultrasound_rejection(blank, detect_scan_area(blank)) == "no_tissue"
    page = np.full((300, 200), 245, np.uint8)
    page[20:24, 20:180] = 0
    assert ultrasound_rejection(page, detect_scan_area(page)) == "not_ultrasound"
    ramp = np.tile(np.linspace(30, 220, 256).astype(np.uint8), (200, 1))  # smooth photo-like
    assert ultrasound_rejection(ramp, detect_scan_area(ramp)) == "not_ultrasound"
    # colour fraction by hand: 2 of 4 lit pixels coloured, one black pixel ignored
    rgb = np.array([[[200, 10, 10], [90, 90, 90], [0, 0, 255]], [[50, 50, 60], [0, 0, 0], [0, 0, 0]]], np.uint8)
    assert colour_fraction(rgb) == pytest.approx(2 / 4)
    # colour flow: a velocity map (red to yellow, graded in brightness) filling part of the scan area
    from shards.synth.doppler import velocity_colour

    doppler = np.stack([gray] * 3, -1)
    v = np.linspace(0.2, 1.0, 80)[None, :] * np.linspace(0.6, 1.0, 60)[:, None]
    doppler[80:140, 100:180] = velocity_colour(v)
    assert clean_image(png_bytes(doppler), 64).reason == "colour"
    # a filled area of one flat colour is colour only when it hides a large part of the tissue (the
    # issue-17 rule: colour Doppler is a colour map over tissue; flat marks never reject a frame)
    block = np.stack([gray] * 3, -1)
    block[80:140, 100:180] = [220, 30, 30]
    assert clean_image(png_bytes(block), 64).reason == "colour"
    dot = np.stack([gray] * 3, -1)
    dot[100:108, 120:128] = [220, 30, 30]
    assert isinstance(clean_image(png_bytes(dot), 64), Cleaned)
    tiny = np.zeros((300, 300), np.uint8)
    tiny[10:46, 10:46] = speckle_frame(h=36, w=36, pad=0)
    assert isinstance(clean_image(png_bytes(tiny), 64), Rejected)


# --- dedup ------------------------------------------------------------------------------------------


def test_duplicate_index_matches_brute_force():
    rng = random.Random(0)
    idx = DuplicateIndex(max_distance=16, nbits=256)
    kept: list[int] = []
    for i in range(400):
        if kept and i % 3 == 0:  # a perturbed copy of an earlier hash
            h = rng.choice(kept)
            for b in rng.sample(range(256), rng.randint(0, 30)):
                h ^= 1 << b
        else:
            h = rng.getrandbits(256)
        brute = any((h ^ k).bit_count() <= 16 for k in kept)
        got = idx.check(f"sha{i}", h)
        assert (got == "near_duplicate") == brute
        if not got:
            idx.add(f"sha{i}", h)
            kept.append(h)
    assert len(idx) == len(kept)
    assert idx.check("sha1", 12345) == "duplicate"  # exact key wins


def test_near_duplicates_are_caught_and_distinct_frames_kept(tmp_path):
    a, b = speckle_frame(seed=1), speckle_frame(seed=2)
    src1, src2 = tmp_path / "one", tmp_path / "two"
    src1.mkdir(), src2.mkdir()
    (src1 / "a.png").write_bytes(png_bytes(a))
    (src1 / "b.png").write_bytes(png_bytes(b))
    (src2 / "a_copy.png").write_bytes(png_bytes(a))  # exact, other source
    (src2 / "a_q80.jpg").write_bytes(png_bytes(a, fmt="JPEG", quality=80))
    brighter = np.clip(a.astype(int) * 11 // 10, 0, 255).astype(np.uint8)
    (src2 / "a_bright.png").write_bytes(png_bytes(brighter))
    h, w = a.shape
    (src2 / "a_resized.png").write_bytes(png_bytes(np.asarray(Image.fromarray(a).resize((w * 51 // 50, h * 51 // 50)))))
    m = build_shards(
        {"one": str(src1), "two": str(src2)}, tmp_path / "out", BuildSettings(size=64, workers=1), progress=False
    )
    assert m["sources"] == {"one": 2, "two": 0}
    assert m["rejected"] == {"duplicate": 1, "near_duplicate": 3}


# --- determinism, resume, re-runs --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_sources(corpus_dir) -> dict[str, str]:
    return {k: v for k, v in sources_of(corpus_dir).items() if k in ("breast", "cardiac", "thyroid")}


@pytest.fixture(scope="module")
def reference_build(small_sources, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "shards"
    build_shards(small_sources, out, BuildSettings(size=48, samples_per_shard=5, workers=1), progress=False)
    return out


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_byte_identical_for_any_worker_count(small_sources, reference_build, tmp_path):
    out = tmp_path / "w2"
    build_shards(small_sources, out, BuildSettings(size=48, samples_per_shard=5, workers=2), progress=False)
    assert tree_bytes(out) == tree_bytes(reference_build)


def test_interrupted_build_resumes_without_redoing_shards(small_sources, reference_build, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real_write = build_mod._write_shard
    calls = {"n": 0}

    def dying_write(path, data):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed while writing the 4th shard
        real_write(path, data)

    monkeypatch.setattr(build_mod, "_write_shard", dying_write)
    settings = BuildSettings(size=48, samples_per_shard=5, workers=1)
    with pytest.raises(KeyboardInterrupt):
        build_shards(small_sources, out, settings, progress=False)
    assert not (out / "manifest.json").exists() and (out / ".build-journal.jsonl").exists()
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.tar")}
    assert sorted(done) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    (out / "shard-000003.tar.tmp").write_bytes(b"half a shard")  # what a kill leaves behind

    monkeypatch.setattr(
        build_mod, "_write_shard", lambda p, d: (calls.__setitem__("n", calls["n"] + 1), real_write(p, d))
    )
    calls["n"] = 0
    build_shards(small_sources, out, settings, progress=False)
    for name, stamp in done.items():  # finished shards were not rewritten
        p = out / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
    n_shards = len(json.loads((reference_build / "manifest.json").read_text())["shards"])
    assert calls["n"] == n_shards - 3
    assert tree_bytes(out) == tree_bytes(reference_build)


def test_a_file_edited_before_the_resume_is_refused_not_mixed_in(small_sources, tmp_path, monkeypatch):
    """Same name and size, new pixels (the size alone would not tell): the modification time does."""
    import shutil

    sources = {name: str(tmp_path / name) for name in small_sources}
    for name, path in small_sources.items():
        shutil.copytree(path, sources[name])
    out = tmp_path / "out"
    real_write = build_mod._write_shard

    def dying_write(path, data):
        if path.name == "shard-000002.tar":
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(build_mod, "_write_shard", dying_write)
    settings = BuildSettings(size=48, samples_per_shard=5, workers=1)
    with pytest.raises(KeyboardInterrupt):
        build_shards(sources, out, settings, progress=False)
    monkeypatch.setattr(build_mod, "_write_shard", real_write)
    edited = sorted(p for p in Path(sources["breast"]).rglob("*.png"))[0]
    data = bytearray(edited.read_bytes())
    data[-20] ^= 0xFF  # same size
    edited.write_bytes(bytes(data))
    before = tree_bytes(out)
    with pytest.raises(UserError, match=r"holds an unfinished build of files modified since \(source breast: mod"):
        build_shards(sources, out, settings, progress=False)
    assert tree_bytes(out) == before  # nothing replaced
    # a journal from before stamps were recorded resumes as it did
    journal = out / ".build-journal.jsonl"
    lines = journal.read_text().splitlines()
    head = json.loads(lines[0])
    del head["stamps"]
    journal.write_text("\n".join([json.dumps(head, sort_keys=True), *lines[1:]]) + "\n")
    assert build_shards(sources, out, settings, progress=False)["num_samples"] > 0


def test_a_resumed_build_of_shards_mixing_sources_is_byte_identical(small_sources, tmp_path, monkeypatch):
    """Sources given out of name order: shards that span two sources are resumed byte for byte too."""
    backwards = dict(reversed(small_sources.items()))
    settings = BuildSettings(size=48, samples_per_shard=7, workers=1)
    build_shards(backwards, tmp_path / "whole", settings, progress=False)
    mixed = [c for c in json.loads((tmp_path / "whole" / "manifest.json").read_text())["shard_sources"] if len(c) > 1]
    assert mixed
    real_write, calls = build_mod._write_shard, []

    def dying_write(path, data):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(build_mod, "_write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build_shards(backwards, tmp_path / "resumed", settings, progress=False)
    monkeypatch.setattr(build_mod, "_write_shard", real_write)
    build_shards(backwards, tmp_path / "resumed", settings, progress=False)
    assert tree_bytes(tmp_path / "resumed") == tree_bytes(tmp_path / "whole")


def test_rerun_is_a_no_op_and_other_settings_are_refused(small_sources, reference_build, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(reference_build, out)
    before = tree_bytes(out)
    build_shards(small_sources, out, BuildSettings(size=48, samples_per_shard=5, workers=2), progress=False)
    assert tree_bytes(out) == before
    with pytest.raises(UserError, match=r"holds a different build \(settings differ \(size: 48 -> 64\)\)"):
        build_shards(small_sources, out, BuildSettings(size=64, samples_per_shard=5), progress=False)
    with pytest.raises(UserError, match="sources differ"):
        build_shards(
            {"breast": small_sources["breast"]}, out, BuildSettings(size=48, samples_per_shard=5), progress=False
        )
    assert tree_bytes(out) == before  # nothing written was lost


def test_an_out_folder_inside_its_source_is_never_read_as_input(small_sources, tmp_path):
    import shutil

    n = sum(1 for p in Path(small_sources["breast"]).rglob("*") if p.is_file())
    settings = BuildSettings(size=48, samples_per_shard=5, workers=1)
    for glob in ("", "/**/*"):  # a folder source, and a pattern that matches every file below it
        src = tmp_path / f"breast{len(glob)}"
        shutil.copytree(small_sources["breast"], src)
        spec, out = f"{src}{glob}", src / "nested" / "shards"
        first = build_shards({"breast": spec}, out, settings, progress=False)
        assert first["inputs"] == n, spec  # its own shards, manifest and rejects are not inputs
        before = tree_bytes(out)
        assert build_shards({"breast": spec}, out, settings, progress=False) == first  # a rerun: nothing to do
        assert tree_bytes(out) == before


def test_corrupt_files_in_a_source_are_counted(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    good = png_bytes(speckle_frame(seed=3))
    (src / "good.png").write_bytes(good)
    (src / "sub" / "good2.png").write_bytes(png_bytes(speckle_frame(seed=4)))
    (src / "zero.png").write_bytes(b"")
    (src / "text.png").write_bytes(b"not a png at all")
    (src / "cut.png").write_bytes(good[: len(good) // 3])
    (src / "notes.txt").write_text("labels")
    (src / ".DS_Store").write_bytes(b"\0\0")
    m = build_shards({"s": str(src)}, tmp_path / "out", BuildSettings(size=64, workers=1), progress=False)
    assert m["num_samples"] == 2
    assert m["rejected"] == {"empty_file": 1, "not_image": 2, "truncated": 1}
    assert m["inputs"] == 6  # hidden files are not inputs


def test_ordered_map_keeps_order_and_bounded_window():
    consumed = {"n": 0}

    def items():
        for i in range(1000):
            consumed["n"] += 1
            yield i

    it = ordered_map(abs, items(), workers=2, chunk=4, window=3)
    assert next(it) == 0
    assert consumed["n"] <= 4 * 4  # window + the refill, never the whole input
    assert list(it) == list(range(1, 1000))


# --- other inputs and readers --------------------------------------------------------------------------


def test_hf_dataset_source_and_datasets_reader(tmp_path):
    import datasets

    files = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(png_bytes(speckle_frame(seed=10 + i)))
        files.append(str(p))
    ds = datasets.Dataset.from_dict({"image": files, "label": [0, 1, 0]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out"
    m = build_shards({"hub": f"hf:{tmp_path / 'ds'}"}, out, BuildSettings(size=64, workers=2), progress=False)
    assert m["sources"] == {"hub": 3}
    back = datasets.load_dataset("webdataset", data_files={"train": [str(out / s) for s in m["shards"]]}, split="train")
    assert len(back) == 3 and back[0]["png"].size == (64, 64) and back[0]["json"]["source"] == "hub"
    with pytest.raises(UserError, match="no-such-dataset. is not in the datasets cache, and the Hub is not reachable"):
        build_shards({"x": "hf:no-such-org/no-such-dataset"}, tmp_path / "o2", progress=False)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shards.build", *args], capture_output=True, text=True, timeout=300)


def test_cli_bad_inputs_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.pdf").write_text("x")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_bytes(speckle_frame()))
    cases = [
        (["--source", f"a={tmp_path / 'missing'}", "--out", str(tmp_path / "o")], "folder does not exist"),
        (["--source", f"a={tmp_path / 'empty'}", "--out", str(tmp_path / "o")], "no image files"),
        (["--source", "nonsense", "--out", str(tmp_path / "o")], "expected NAME=DIR"),
        (["--source", f"a={tmp_path / 'img'}", "--out", str(tmp_path / "foreign")], "not a shard build"),
        (
            ["--source", f"a={tmp_path / 'img'}", "--source", f"a={tmp_path / 'img'}", "--out", str(tmp_path / "o")],
            "given twice",
        ),
        (["--source", f"a={tmp_path / 'img'}", "--out", str(tmp_path / "o"), "--size", "100000"], "expected 32-2048"),
    ]
    for args, expected in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_cli_example_prints_summary(corpus_dir, tmp_path):
    proc = run_cli(
        "--source",
        f"breast={corpus_dir / 'breast'}",
        "--source",
        f"fetal={corpus_dir / 'fetal'}",
        "--out",
        str(tmp_path / "s"),
        "--size",
        "48",
        "--workers",
        "2",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert proc.stdout.startswith(f"{m['num_samples']} samples in {len(m['shards'])} shards")


def test_inspect_summary_and_contact_sheet(shard_dir, tmp_path, capsys):
    from shards.inspect import main as inspect_main
    from shards.inspect import pick_samples

    manifest = json.loads((shard_dir / "manifest.json").read_text())
    inspect_main([str(shard_dir), "--sheet", str(tmp_path / "sheet.png"), "--per-source", "3"])
    out = capsys.readouterr().out
    assert f"samples: {manifest['num_samples']} in {len(manifest['shards'])} shards" in out
    for name, n in manifest["sources"].items():
        assert f"  {name}" in out and str(n) in out
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.size[0] > 300 and sheet.size[1] > 100 * len([v for v in manifest["sources"].values() if v])
    urls = [str(shard_dir / s) for s in manifest["shards"]]
    picked = pick_samples(urls, list(manifest["sources"]), 3, seed=0)
    assert {k: len(v) for k, v in picked.items()} == {k: min(3, n) for k, n in manifest["sources"].items()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["README.md"], "shards README.md: expected a shard folder, its manifest.json, a .tar shard"),
        (["{tmp}/none"], "shards {tmp}/none: no such shard folder or file"),
        (["{shards},{shards}"], "shards {shards},{shards}: no such shard folder or file; shards are one folder, URL"),
        (
            ["http://h/a.tar,http://h/b.tar"],
            "shards http://h/a.tar,http://h/b.tar: a list of URLs; shards are one folder",
        ),
        (
            ["[s3://b/a.tar, s3://b/b.tar]"],
            "shards [s3://b/a.tar, s3://b/b.tar]: a list of URLs; shards are one folder",
        ),
        (["{{{shards},{shards}}}"], "shards {{{shards},{shards}}}: the pattern names folders ({shards}, {shards}); "),
        (["{shards}", "--sheet", "{tmp}"], "--sheet {tmp}: expected the name of a .png file to write"),
        (["{shards}", "--sheet", "{tmp}/s.jpg"], "--sheet {tmp}/s.jpg: expected the name of a .png file"),
        (["{shards}", "--sheet", "{shards}/manifest.json/s.png"], "--sheet {shards}/manifest.json: cannot create the"),
        (["{shards}", "--rejects", "/proc/r.png"], "--rejects /proc: cannot write there"),
        (
            ["{shards}", "--overlap", "{shards}", "--overlap-sheet", "/proc/o.png"],
            "--overlap-sheet /proc: cannot write",
        ),
        (["{shards}", "--overlap-sheet", "{tmp}/o.png"], "--overlap-sheet {tmp}/o.png: only with --overlap"),
        (["{shards}", "--per-source", "0"], "--per-source 0: expected at least 1"),
        (["{shards}", "--rejects", "{tmp}/r.png", "--per-reason", "-1"], "--per-reason -1: expected at least 1"),
        (["{shards}", "--overlap", "{tmp}/s.json"], "--overlap {tmp}/s.json: {tmp}/s.json is neither a splits.json"),
    ],
)
def test_inspect_bad_inputs_are_one_line(shard_dir, tmp_path, capsys, args, message):
    from shards.inspect import main as inspect_main

    fill = {"tmp": tmp_path, "shards": shard_dir}
    with pytest.raises(SystemExit) as exc:
        inspect_main([a.format(**fill) for a in args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " + message.format(**fill)) and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_inspect_of_a_single_shard_says_what_it_read(shard_dir, capsys):
    from shards.inspect import main as inspect_main

    inspect_main([str(shard_dir / "shard-000000.tar")])
    assert "1 shard file(s), no manifest" in capsys.readouterr().out


def test_a_damaged_rejects_file_or_manifest_is_one_line(small_sources, tmp_path, capsys):
    import shutil

    from shards.inspect import main as inspect_main

    out = tmp_path / "shards"
    settings = BuildSettings(size=48, samples_per_shard=5, workers=1)
    build_shards(small_sources, out, settings, progress=False)
    rejects = out / "rejects.jsonl"
    assert rejects.read_text().strip()  # the small corpus has rejects
    shutil.copy(rejects, tmp_path / "kept")
    rejects.write_text(rejects.read_text() + "\0\0\0\n")
    with pytest.raises(SystemExit) as exc:
        inspect_main([str(out), "--rejects", str(tmp_path / "r.png")])
    assert exc.value.code == 2
    n = len((tmp_path / "kept").read_text().splitlines()) + 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {rejects}:{n}: not a rejects record (expected a JSON object with a reason)"
    (out / "manifest.json").write_text('{"format": 3')  # cut short
    with pytest.raises(UserError, match=r"manifest.json: unreadable manifest of a finished build; build into a new"):
        build_shards(small_sources, out, settings, progress=False)


def test_a_rejected_tiles_caption_names_its_folder_and_the_values_judged():
    """The rejects sheet's captions: the file with its folder (names cut to 22 characters lost both),
    its frame, and the reason's values; a file that could not be read shows its detail on the tile."""
    from shards.inspect import tile_caption

    rec = {"path": "lung/Reg_liftl_pneucase3_clip.mp4", "frame": 10, "reason": "colour",
           "values": {"colour_fraction": 0.12, "colour_outside": 0.0, "detail": "x"}}  # fmt: skip
    assert (
        tile_caption(rec, "colour") == "lung/Reg_liftl_pneucase3_clip.mp4 #10\ncolour_fraction=0.12, colour_outside=0.0"
    )
    long = {"path": "a/very_long_device_folder_name/butterfly-mean-crop-export.mp4", "values": {}}
    assert tile_caption(long, "truncated") == "very_long_devic...-crop-export.mp4"


def test_the_default_workers_are_the_cores_this_process_may_use(monkeypatch):
    """A cpuset or srun's --cpus-per-task, not the machine's count: more processes than cores thrash."""
    import os

    from shards.build import BuildSettings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert BuildSettings().workers == 1
