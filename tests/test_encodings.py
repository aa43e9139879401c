"""Shard encodings (png, jpeg, raw): building, readers, the loader's guarantees, the tar index, the hand-off."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from shards.build import BuildSettings, build_shards, tar_bytes
from shards.codec import Codec, CorruptSample, decode_gray, npy_header
from shards.shardfile import open_shard
from shards.stream import ShardLoader, decode_on_device
from shards.tarindex import _index_tarfile, index_tar
from sonodistill.errors import UserError

SIZE = 48
JPEG_MEAN_ERR, JPEG_MAX_ERR = 3.0, 48  # quality 90 on 48 px speckle, measured ~1.5 mean


@pytest.fixture(scope="module")
def sets(corpus_dir, tmp_path_factory) -> dict[str, Path]:
    """The same two sources built as PNG (1 worker), JPEG and raw (2 workers each)."""
    sources = {k: str(corpus_dir / k) for k in ("breast", "thyroid")}
    root = tmp_path_factory.mktemp("encodings")
    out = {}
    for enc, workers in (("png", 1), ("jpeg", 2), ("raw", 2)):
        settings = BuildSettings(size=SIZE, samples_per_shard=5, workers=workers, encoding=enc)
        build_shards(sources, root / enc, settings, progress=False)
        out[enc] = root / enc
    return out


def pixels_by_key(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for name in json.loads((root / "manifest.json").read_text())["shards"]:
        shard = open_shard(str(root / name))
        for i in range(len(shard)):
            out[shard.key(i)] = decode_gray(shard.image(i), shard.index.encoding(i))
    return out


@pytest.mark.parametrize("enc", ["jpeg", "raw"])
def test_encoding_is_recorded_and_the_build_is_deterministic(sets, enc):
    png = json.loads((sets["png"] / "manifest.json").read_text())
    m = json.loads((sets[enc] / "manifest.json").read_text())
    assert m["encoding"] == enc and m["settings"]["encoding"] == enc and png["encoding"] == "png"
    for k in ("num_samples", "sources", "rejected", "shards", "shard_samples"):
        assert m[k] == png[k]
    # A 2-worker build equals the 1-worker PNG build's frames encoded the other way, byte for byte.
    codec = Codec(enc)
    for name in png["shards"]:
        shard = open_shard(str(sets["png"] / name))
        samples = [
            (shard.key(i), codec.encode(decode_gray(shard.image(i), "png")), shard.meta(i)) for i in range(len(shard))
        ]
        assert (sets[enc] / name).read_bytes() == tar_bytes(samples, codec.ext)


def test_an_interrupted_raw_build_resumes_to_the_same_bytes(corpus_dir, sets, tmp_path, monkeypatch):
    import shards.build as build_mod

    real, calls = build_mod._write_shard, {"n": 0}

    def dying(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed while writing the third shard
        real(path, data)

    sources = {k: str(corpus_dir / k) for k in ("breast", "thyroid")}
    settings = BuildSettings(size=SIZE, samples_per_shard=5, workers=1, encoding="raw")
    monkeypatch.setattr(build_mod, "_write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        build_shards(sources, tmp_path / "raw", settings, progress=False)
    monkeypatch.setattr(build_mod, "_write_shard", real)
    build_shards(sources, tmp_path / "raw", settings, progress=False)
    tree = lambda root: {p.name: p.read_bytes() for p in sorted(root.iterdir())}  # noqa: E731
    assert tree(tmp_path / "raw") == tree(sets["raw"])  # same bytes as the uninterrupted 2-worker build


def test_raw_is_lossless_and_jpeg_within_tolerance(sets):
    png, raw, jpeg = (pixels_by_key(sets[e]) for e in ("png", "raw", "jpeg"))
    assert png.keys() == raw.keys() == jpeg.keys()
    for k, ref in png.items():
        assert np.array_equal(raw[k], ref)
        err = np.abs(jpeg[k].astype(int) - ref.astype(int))
        assert err.mean() < JPEG_MEAN_ERR and err.max() <= JPEG_MAX_ERR, (k, err.mean(), err.max())
    sizes = {e: sum(int(open_shard(str(p)).index.image_size.sum()) for p in sets[e].glob("*.tar")) for e in sets}
    assert sizes["jpeg"] < sizes["png"] < sizes["raw"]


@pytest.mark.parametrize("enc, ext", [("jpeg", "jpg"), ("raw", "npy")])
def test_webdataset_and_datasets_read_every_encoding(sets, enc, ext):
    import datasets

    ref = pixels_by_key(sets["png"])
    urls = [str(sets[enc] / s) for s in json.loads((sets[enc] / "manifest.json").read_text())["shards"]]
    got = {s["__key__"]: s[ext] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("l8")}
    assert got.keys() == ref.keys()
    back = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train")
    assert len(back) == len(ref) and back[0]["json"]["source"] in ("breast", "thyroid")
    for s, k in ((back[0], back[0]["__key__"]), (back[len(back) - 1], back[len(back) - 1]["__key__"])):
        arr = np.asarray(s[ext], np.uint8).reshape(SIZE, SIZE)
        tol = 0 if enc == "raw" else JPEG_MAX_ERR
        assert np.abs(arr.astype(int) - ref[k].astype(int)).max() <= tol
        assert np.abs(np.asarray(got[k], np.uint8).reshape(SIZE, SIZE).astype(int) - ref[k].astype(int)).max() <= tol


def keys_and_images(loader, n=None) -> tuple[list[str], list[np.ndarray]]:
    """Keys and pixels of the first ``n`` batches (all with None), taking no batch beyond them."""
    keys, images = [], []
    for i, b in enumerate(loader):
        keys += b["key"]
        images += list(b["image"][:, 0].numpy().copy()) if "image" in b else []
        if n is not None and i + 1 == n:
            break
    return keys, images


@pytest.mark.parametrize("enc", ["png", "jpeg", "raw"])
def test_every_encoding_streams_each_sample_once_per_epoch_with_its_pixels(sets, enc):
    ref = pixels_by_key(sets[enc])
    seen = []
    for rank in range(2):
        loader = ShardLoader(
            sets[enc], 4, mode="epoch", num_workers=2, rank=rank, world_size=2, with_meta=True, drop_last=False, seed=3
        )
        keys, images = keys_and_images(loader)
        assert all(np.array_equal(img, ref[k]) for k, img in zip(keys, images))
        seen += keys
        assert loader.skipped == {}
    assert sorted(seen) == sorted(ref)


@pytest.mark.parametrize("enc, workers", [("png", 0), ("png", 2), ("jpeg", 2), ("raw", 0), ("raw", 2)])
def test_batches_spanning_shuffle_windows_and_epochs_carry_their_own_pixels(sets, enc, workers):
    """A batch filled from the end of one shuffle window (or epoch) and the start of the next: every
    row holds the pixels of its key (regression: the second part overwrote the first, leaving stale rows)."""
    ref = pixels_by_key(sets[enc])
    tol = 0 if enc != "jpeg" else JPEG_MAX_ERR
    loader = ShardLoader(sets[enc], 4, mode="loop", num_workers=workers, with_meta=True, seed=2, shuffle_buffer=7)
    keys, images = keys_and_images(loader, 3 * len(ref) // 4)  # three epochs' worth of batches
    assert len(keys) == len(images) == 3 * len(ref) // 4 * 4
    worst = max(int(np.abs(img.astype(int) - ref[k].astype(int)).max()) for k, img in zip(keys, images))
    assert worst <= tol


@pytest.mark.parametrize("enc, workers, per_item, cut", [("raw", 2, 3, 5), ("raw", 0, 2, 7), ("jpeg", 2, 2, 3)])
def test_resume_mid_item_continues_exactly(sets, enc, workers, per_item, cut):
    """Workers hand over ``per_item`` batches at once; a state saved inside an item resumes exactly."""
    kw = dict(batch_size=3, mode="loop", num_workers=workers, with_meta=True, seed=7, shuffle_buffer=8)
    kw["batches_per_item"] = per_item
    total = 16
    full, _ = keys_and_images(ShardLoader(sets[enc], **kw), total)
    first = ShardLoader(sets[enc], **kw)
    head, _ = keys_and_images(first, cut)
    state = json.loads(json.dumps(first.state_dict()))
    second = ShardLoader(sets[enc], **kw)
    second.load_state_dict(state)
    tail, _ = keys_and_images(second, total - cut)
    assert head + tail == full


def test_batches_a_caller_keeps_are_never_overwritten(sets):
    """Shared-memory slots are reused only once no tensor or view of a batch is left."""
    ref = pixels_by_key(sets["raw"])
    loader = ShardLoader(sets["raw"], 4, mode="loop", num_workers=1, with_meta=True, batches_per_item=2, seed=1)
    kept, views, checked = [], [], 0
    for i, b in enumerate(loader):
        if i % 3 == 0:
            kept.append((b["key"], b["image"]))  # hold the batch
        elif i % 3 == 1:
            views.append((b["key"][1:], b["image"][1:, 0]))  # hold only a view of it
        else:  # dropped at once: its slot can be reused
            assert all(np.array_equal(img[0].numpy(), ref[k]) for k, img in zip(b["key"], b["image"]))
            checked += 1
        if i == 60:
            break
    for keys, images in kept:
        assert all(np.array_equal(img[0].numpy(), ref[k]) for k, img in zip(keys, images))
    for keys, images in views:
        assert all(np.array_equal(img.numpy(), ref[k]) for k, img in zip(keys, images))
    assert checked == 20


def test_device_decode_matches_worker_decode_on_cpu(sets):
    """``decode="device"`` ships JPEG bytes; decoding them with ``decode_on_device`` (nvJPEG on a GPU,
    libjpeg-turbo on the CPU here) gives the worker's pixels, within JPEG tolerance of the PNG frames."""
    ref = pixels_by_key(sets["png"])
    kw = dict(batch_size=5, mode="epoch", num_workers=1, with_meta=True, seed=2, drop_last=False)
    worker = ShardLoader(sets["jpeg"], **kw)
    device = ShardLoader(sets["jpeg"], decode="device", **kw)
    for a, b in zip(worker, device):
        assert a["key"] == b["key"] and "image" not in b
        images = decode_on_device(b, "cpu")
        assert images.dtype == torch.uint8 and images.shape == a["image"].shape
        assert (images.int() - a["image"].int()).abs().max() <= 1  # same decoder family
        for k, img in zip(b["key"], images):
            assert np.abs(img[0].numpy().astype(int) - ref[k].astype(int)).mean() < JPEG_MEAN_ERR
    with pytest.raises(UserError, match="needs JPEG shards, these are png"):
        ShardLoader(sets["png"], 4, decode="device")


@pytest.mark.parametrize("enc", ["png", "jpeg", "raw"])
def test_vectorised_tar_index_equals_tarfile(sets, enc):
    for path in sorted(sets[enc].glob("*.tar")):
        buf = np.fromfile(path, np.uint8)
        fast, slow = index_tar(buf), _index_tarfile(buf)
        assert fast.complete and slow.complete and fast.keys == slow.keys
        for f in ("image_offset", "image_size", "image_ext", "json_offset", "json_size"):
            assert np.array_equal(getattr(fast, f), getattr(slow, f)), f


def test_damaged_tars_are_indexed_up_to_the_damage(sets):
    data = (sorted(sets["raw"].glob("*.tar"))[0]).read_bytes()
    full = index_tar(np.frombuffer(data, np.uint8))
    # "ustar" inside pixel data at a header's magic offset: the chain check rejects it, tarfile decides.
    forged = bytearray(data)
    block = int(full.image_offset[1]) // 512 + 2
    forged[block * 512 + 257 : block * 512 + 262] = b"ustar"
    again = index_tar(np.frombuffer(bytes(forged), np.uint8))
    assert again.keys == full.keys and np.array_equal(again.image_offset, full.image_offset)
    # Truncated inside the third sample's image: the first two are whole, the third has lost its image
    # (its JSON member comes first), and the shard is marked damaged.
    cut = int(full.image_offset[2]) + 100
    part = index_tar(np.frombuffer(data[:cut], np.uint8))
    assert not part.complete and part.keys == full.keys[:3]
    assert np.array_equal(part.image_offset[:2], full.image_offset[:2]) and part.image_offset[2] == -1


def test_codec_round_trips_and_names_corrupt_samples():
    gray = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    assert len(npy_header((256, 256))) == 128
    raw = Codec("raw").encode(gray)
    assert np.array_equal(np.load(io.BytesIO(raw)), gray) and np.array_equal(decode_gray(raw, "raw"), gray)
    assert np.array_equal(decode_gray(Codec("png").encode(gray), "png"), gray)
    with pytest.raises(CorruptSample, match="corrupt_image"):
        decode_gray(raw[:-10], "raw")
    with pytest.raises(CorruptSample, match="corrupt_image"):
        decode_gray(b"\xff\xd8 not a jpeg", "jpeg")


def test_bad_encoding_arguments(tmp_path, corpus_dir):
    with pytest.raises(UserError, match="--encoding webp: expected one of png, jpeg, raw"):
        build_shards({"b": str(corpus_dir / "breast")}, tmp_path / "o", BuildSettings(encoding="webp"))
    with pytest.raises(UserError, match="--jpeg-quality 0"):
        build_shards({"b": str(corpus_dir / "breast")}, tmp_path / "o", BuildSettings(encoding="jpeg", jpeg_quality=0))


def test_tar_members_keep_webdataset_names(sets):
    with tarfile.open(sorted(sets["raw"].glob("*.tar"))[0]) as tf:
        names = tf.getnames()
    assert names[:4] == ["00000000.json", "00000000.npy", "00000001.json", "00000001.npy"]
