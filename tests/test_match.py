"""Copy matching (shards.match, shards.copyindex): every transform a copy goes through, on synthetic
and real frames; distinct frames stay apart; the map and the pixel check against hand computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from shards.clean import Cleaned, clean_frame
from shards.codec import Codec
from shards.copyindex import CopyIndex, loaded, query_views, view
from shards.decode import read_pixels
from shards.match import MATCH_SIDE, Map, canonical, correlate, fit_map, thumbnail
from shards.synth.copies import crop, jpeg, resize

REAL = ["interson-image.jpg", "clarius-ocular-image.png", "butterfly_axial-lateral-resolution-2020.png"]
OTHER_REAL = ["sonosite-anon-eye1.jpg", "clarius_axial-lateral-resolution-2020.png"]


def _shard_sample(img: np.ndarray) -> np.ndarray:
    """What a shard holds of the frame: the cleaning's scan-area crop, letterbox and resize (128 px)."""
    res = clean_frame(img, 128, Codec("raw"))
    assert isinstance(res, Cleaned)
    return np.frombuffer(res.data[128:], np.uint8).reshape(128, 128)


TRANSFORMS = {  # name -> (transform, mirrored)
    "exact": (lambda x: x, False),
    "jpeg_q40": (lambda x: jpeg(x, 40), False),
    "half_size": (lambda x: resize(x, 0.5, 0.5), False),
    "aspect_changed": (lambda x: resize(x, 0.8, 1.15), False),
    "mirrored": (lambda x: np.ascontiguousarray(x[:, ::-1]), True),
    "recropped": (lambda x: crop(x, 0.08, 0.05, 0.12, 0.1), False),
    "shard_processed": (_shard_sample, False),
    "all_at_once": (lambda x: jpeg(resize(crop(x, 0.1, 0.0, 0.05, 0.12), 0.7, 0.6), 60)[:, ::-1].copy(), True),
}


def _ultrasound(corpus_dir, corpus_truth) -> list[np.ndarray]:
    """One plain ultrasound image per synthetic preset (none of them planted duplicates)."""
    planted = {r["duplicate_of"] for r in corpus_truth if r.get("duplicate_of")}
    out, seen = [], set()
    for r in corpus_truth:
        if r["kind"] == "ultrasound" and r["path"] not in planted and r["source"] not in seen:
            img = Image.open(corpus_dir / r["path"])
            if img.mode in ("L", "RGB"):
                seen.add(r["source"])
                out.append(np.asarray(img))
    return out


@pytest.fixture(scope="module")
def frames(corpus_dir, corpus_truth, pocus_dir) -> list[np.ndarray]:
    synthetic = _ultrasound(corpus_dir, corpus_truth)
    assert len(synthetic) >= 4
    return synthetic[:4] + [read_pixels(str(pocus_dir / n)) for n in REAL]


@pytest.fixture(scope="module")
def index(frames) -> CopyIndex:
    return CopyIndex.build([f"ref{i}" for i in range(len(frames))], [view(canonical(f)) for f in frames])


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_a_copy_is_found_whatever_it_went_through(name, frames, index):
    transform, mirrored = TRANSFORMS[name]
    for k, img in enumerate(frames):
        found = index.find(canonical(transform(img)))
        assert found, f"{name}: copy of reference {k} not found"
        assert found[0].ref == k and found[0].flipped is mirrored
        v = found[0].verdict
        assert v.copy and v.inliers >= 8 and v.ncc >= 0.5


def test_distinct_frames_do_not_match(corpus_dir, corpus_truth, pocus_dir, frames, index):
    # other images of the same synthetic presets (same anatomy, depth ruler and text) and other real
    # recordings: none is a copy of a reference
    others = _ultrasound(corpus_dir, [r for r in corpus_truth if not r["path"].endswith(("0.png", "1.png"))])
    others = [o for o in others if not any(o.shape == f.shape and np.array_equal(o, f) for f in frames)]
    others += [read_pixels(str(pocus_dir / n)) for n in OTHER_REAL]
    assert len(others) >= 4
    for img in others:
        assert index.find(canonical(img)) == []


def test_fit_map_recovers_a_scale_and_shift_among_outliers():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 256, (60, 2)).astype(np.float32)
    q = p * [1.25, 0.8] + [3.0, -4.0]
    q[:20] = rng.uniform(0, 256, (20, 2))  # a third of the correspondences are wrong
    inliers, m = fit_map(p, q)
    assert inliers == 40
    assert m.sx == pytest.approx(1.25, abs=1e-3) and m.sy == pytest.approx(0.8, abs=1e-3)
    assert m.tx == pytest.approx(3.0, abs=0.05) and m.ty == pytest.approx(-4.0, abs=0.05)
    assert fit_map(p, q) == (inliers, m)  # seeded: the same input gives the same map


def test_correlate_uses_the_map_between_canonical_views(frames):
    canon = canonical(frames[0])
    # reference = query moved 24 px right and 16 px down: reference = query + (24, 16)
    moved = np.zeros_like(canon)
    moved[16:, 24:] = canon[:-16, :-24]
    ncc, overlap = correlate(thumbnail(canon), thumbnail(moved), Map(1.0, 1.0, 24.0, 16.0))
    assert ncc > 0.9 and overlap > 0.8
    assert correlate(thumbnail(canon), thumbnail(moved), Map(1.0, 1.0, 0.0, 0.0))[0] < 0.3
    # reference = the query shrunk by 2 and moved 40 px right: reference = 0.5 * query + (40, 0)
    small = np.asarray(Image.fromarray(canon).resize((MATCH_SIDE // 2, MATCH_SIDE // 2), Image.Resampling.BOX))
    ref = np.zeros_like(canon)
    ref[: MATCH_SIDE // 2, 40 : 40 + MATCH_SIDE // 2] = small
    ncc, overlap = correlate(thumbnail(canon), thumbnail(ref), Map(0.5, 0.5, 40.0, 0.0))
    assert ncc > 0.5 and overlap > 0.9  # half the resolution: less shared fine structure, still a copy
    assert correlate(thumbnail(canon), thumbnail(ref), Map(0.5, 0.5, 48.0, 6.0))[0] < 0.3


def test_index_saved_and_mapped_answers_alike(frames, index, tmp_path):
    index.save(tmp_path / "idx")
    again = loaded(tmp_path / "idx")
    assert json.loads((tmp_path / "idx" / "names.json").read_text()) == index.names
    q = query_views(canonical(jpeg(frames[1], 50)))
    assert [f.ref for f in again.search(q, limit=3)] == [f.ref for f in index.search(q, limit=3)] == [1]
    assert again.search(q, skip=1) == []  # the frame itself left out
