"""On-disk layouts of the synthetic generator: BUSI, DDTI, corpus; truth records; determinism
for any worker count."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from shards.synth import PRESETS, write_busi, write_corpus, write_ddti
from shards.synth.corpus import plan
from shards.synth.runner import split_counts
from sonodistill.errors import UserError

BUSI_NAME = re.compile(r"^(benign|malignant|normal) \((\d+)\)(_mask(?:_(\d+))?)?\.png$")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_split_counts_follow_busi_proportions():
    assert split_counts(780, [437, 210, 133]) == [437, 210, 133]
    assert split_counts(60, [437, 210, 133]) == [34, 16, 10]
    assert split_counts(3, [437, 210, 133]) == [1, 1, 1]
    assert sum(split_counts(7, [1.2, 1, 0.9, 0.9, 0.8, 1.0])) == 7


def test_busi_layout(busi_dir):
    files = sorted(p.name for p in busi_dir.rglob("*") if p.is_file())
    assert sorted(p.name for p in busi_dir.iterdir()) == ["benign", "malignant", "normal"]
    images: dict[str, list[int]] = {"benign": [], "malignant": [], "normal": []}
    two = 0
    for name in files:
        m = BUSI_NAME.match(name)
        assert m, f"unexpected file name {name!r}"
        cls, k, mask, extra = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        assert (busi_dir / cls / name).is_file()
        if mask is None:
            images[cls].append(k)
        two += extra == "1"
    counts = [len(images[c]) for c in ("benign", "malignant", "normal")]
    assert counts == split_counts(60, [437, 210, 133]) == [34, 16, 10]
    for ks in images.values():
        assert sorted(ks) == list(range(1, len(ks) + 1))
    assert two >= 1  # a few images with a second lesion mask
    for cls, ks in images.items():
        for k in ks:
            img = Image.open(busi_dir / cls / f"{cls} ({k}).png")
            assert img.mode == "RGB" and 400 <= img.width <= 600 and 400 <= img.height <= 600
            a = np.asarray(img)
            assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
            masks = sorted((busi_dir / cls).glob(f"{cls} ({k})_mask*.png"))
            assert masks and masks[0].name == f"{cls} ({k})_mask.png"
            union = np.zeros(a.shape[:2], bool)
            for mp in masks:
                mk = Image.open(mp)
                assert mk.mode == "L" and mk.size == img.size
                mv = np.asarray(mk)
                assert set(np.unique(mv)) <= {0, 255}
                assert not (union & (mv > 0)).any()  # one lesion per mask file
                union |= mv > 0
            if cls == "normal":
                assert not union.any() and len(masks) == 1
            else:
                assert union.sum() > 50
                grey = a[..., 0].astype(float)
                ring = binary_dilation(union, iterations=6) & ~union & (grey > 0)
                assert grey[union].mean() < grey[ring].mean() - 10  # hypoechoic lesion


def test_ddti_layout(ddti_dir):
    imgs = sorted(p.name for p in (ddti_dir / "image").iterdir())
    masks = sorted(p.name for p in (ddti_dir / "mask").iterdir())
    assert sorted(p.name for p in ddti_dir.iterdir()) == ["image", "mask"]
    assert imgs == masks and len(imgs) == 48
    per_patient: dict[int, list[int]] = {}
    for name in imgs:
        m = re.match(r"^(\d+)_(\d+)\.png$", name)
        assert m, name
        per_patient.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    assert sorted(per_patient) == list(range(1, len(per_patient) + 1))
    for ks in per_patient.values():
        assert sorted(ks) == list(range(1, len(ks) + 1)) and 1 <= len(ks) <= 4
    assert sum(len(k) >= 2 for k in per_patient.values()) >= 5  # several images per patient
    areas: dict[int, list[int]] = {}
    for name in imgs:
        im, mk = Image.open(ddti_dir / "image" / name), Image.open(ddti_dir / "mask" / name)
        assert im.mode == "L" and mk.mode == "L" and im.size == mk.size
        mv = np.asarray(mk)
        assert set(np.unique(mv)) == {0, 255}  # every image has a nodule
        areas.setdefault(int(name.split("_")[0]), []).append(int((mv > 0).sum()))
    for a in areas.values():  # one patient, one nodule: same area in every image
        assert max(a) - min(a) <= 0.1 * max(a)
    assert len({a[0] for a in areas.values()}) > len(areas) // 2  # different patients differ


def test_corpus_fixture_matches_its_plan(corpus_dir):
    items = plan(120, 0, list(PRESETS), 0.03, 0.02, 0.03)
    on_disk = sorted(str(p.relative_to(corpus_dir)) for p in corpus_dir.rglob("*") if p.is_file())
    assert on_disk == sorted(it.path for it in items)
    assert sorted(p.name for p in corpus_dir.iterdir()) == sorted(PRESETS)
    kinds = Counter(it.kind for it in items)
    assert kinds["doppler"] == round(120 * 0.03) and kinds["junk"] == round(120 * 0.02)
    assert kinds["duplicate"] + kinds["near_duplicate"] == round(120 * 0.03)
    modes, subdirs = Counter(), set()
    for it in items:
        p = corpus_dir / it.path
        with Image.open(p) as im:
            modes[(im.format, im.mode)] += 1
            a = np.asarray(im)
        if len(Path(it.path).parts) > 2:
            subdirs.add(Path(it.path).parts[0])
        if it.kind == "doppler":
            assert a.ndim == 3 and ((a[..., 0] != a[..., 2]).sum() > 100)
        if it.kind == "duplicate":
            orig = next(o for o in items if o.index == it.original)
            assert p.read_bytes() == (corpus_dir / orig.path).read_bytes()
    assert modes[("PNG", "L")] > len(items) / 2  # mostly 8-bit grey PNG
    assert modes[("PNG", "I;16")] > 0 and modes[("JPEG", "L")] > 0 and modes[("PNG", "RGB")] > 0
    assert {"fetal", "liver"} <= subdirs  # sources are scanned recursively
    assert {it.source for it in items if it.fmt == "png16"} == {"musculoskeletal"}  # one source stores 16 bit


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("small_corpus")
    fr = dict(doppler_fraction=0.1, junk_fraction=0.1, duplicate_fraction=0.15)
    rec1 = write_corpus(root / "a", 20, seed=5, truth=root / "a.jsonl", **fr)
    rec2 = write_corpus(root / "b", 20, seed=5, truth=root / "b.jsonl", workers=2, **fr)
    return root, rec1, rec2


def test_corpus_truth_records(small_corpus):
    root, records, _ = small_corpus
    lines = [json.loads(x) for x in (root / "a.jsonl").read_text().splitlines()]
    assert lines == records and len(records) == 20
    kinds = Counter(r["kind"] for r in records)
    assert kinds["doppler"] == 2 and kinds["junk"] == 2 and kinds["duplicate"] + kinds["near_duplicate"] == 3
    files = {str(p.relative_to(root / "a")) for p in (root / "a").rglob("*") if p.is_file()}
    assert files == {r["path"] for r in records}
    for r in records:
        with Image.open(root / "a" / r["path"]) as im:
            assert [im.width, im.height] == r["size"]
            a = np.asarray(im)
        if r["kind"] == "junk":
            assert r["bbox"] is None and r["geometry"] is None
            continue
        assert r["geometry"] == PRESETS[r["preset"]].geometry
        x0, y0, x1, y1 = r["bbox"]
        assert 0 <= x0 < x1 <= r["size"][0] and 0 <= y0 < y1 <= r["size"][1]
        if r["kind"] in ("duplicate", "near_duplicate"):
            orig = next(o for o in records if o["path"] == r["duplicate_of"])
            assert orig["kind"] in ("ultrasound", "doppler") and orig["index"] < r["index"]
            if r["kind"] == "duplicate":
                assert (root / "a" / r["path"]).read_bytes() == (root / "a" / orig["path"]).read_bytes()
            else:
                assert (root / "a" / r["path"]).read_bytes() != (root / "a" / orig["path"]).read_bytes()
        elif r["kind"] == "ultrasound" and not set(r["overlays"]) - {"calipers"} and r["format"] == "png8":
            outside = np.ones(a.shape, bool)
            outside[y0:y1, x0:x1] = False
            assert not a[outside].any()


def test_any_worker_count_writes_identical_files(small_corpus):
    root, rec1, rec2 = small_corpus
    assert tree(root / "a") == tree(root / "b")
    assert rec1 == rec2 and (root / "a.jsonl").read_bytes() == (root / "b.jsonl").read_bytes()


def test_seed_changes_the_data(tmp_path):
    a = write_ddti(tmp_path / "a", 2, seed=0)
    b = write_ddti(tmp_path / "b", 2, seed=1)
    assert [r["path"] for r in a] == [r["path"] for r in b]
    assert tree(tmp_path / "a") != tree(tmp_path / "b")
    write_ddti(tmp_path / "c", 2, seed=0)
    assert tree(tmp_path / "a") == tree(tmp_path / "c")


def test_layout_argument_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.png").write_bytes(b"x")
    with pytest.raises(UserError, match="not empty"):
        write_busi(tmp_path / "full", 3)
    with pytest.raises(UserError, match="--n"):
        write_ddti(tmp_path / "zero", 0)
    with pytest.raises(UserError, match="outside the output directory"):
        write_corpus(tmp_path / "c", 3, truth=tmp_path / "c" / "truth.jsonl")
    with pytest.raises(UserError, match="unknown source kidney"):
        write_corpus(tmp_path / "d", 3, sources=["breast", "kidney"])
    with pytest.raises(UserError, match="--junk-fraction"):
        write_corpus(tmp_path / "e", 3, junk_fraction=1.5)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
