"""A seeded subset of a shard set: the bottom-k of the seed's key ranks, whatever the threads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from shards.shardfile import open_shard
from shards.stream import ShardLoader
from shards.subset import sample_rank, seeded_subset
from sonodistill.errors import UserError


def _every_sample(shards) -> dict[str, tuple[np.ndarray, str]]:
    """Reference: every sample through the streaming loader, by key."""
    loader = ShardLoader(shards, batch_size=8, mode="epoch", with_meta=True, drop_last=False, num_workers=0)
    out = {}
    for batch in loader:
        for image, source, key in zip(batch["image"].numpy(), batch["source"], batch["key"]):
            out[key] = (image, source)
    return out


def test_subset_is_the_seeds_bottom_k_for_any_thread_count(shard_dir):
    every = _every_sample(shard_dir)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert len(every) == manifest["num_samples"] > 40
    metas = {}
    for name in manifest["shards"]:
        shard = open_shard(str(shard_dir / name))
        metas.update({shard.key(m): shard.meta(m) for m in range(len(shard))})
    assert all(m.get("sha1") for m in metas.values())
    for seed in (0, 7):
        want = sorted(every, key=lambda key: sample_rank(seed, key, metas[key]))[:25]
        runs = [seeded_subset(str(shard_dir), 25, seed, threads=t) for t in (1, 2, 4)]
        for sub in runs:
            assert sub.keys == want  # the same samples in the same (seed's) order
            assert sub.images.shape == (25, 1, 64, 64) and sub.images.dtype == np.uint8
            assert np.array_equal(sub.images, np.stack([every[k][0] for k in want]))
            assert sub.sources == [every[k][1] for k in want] and sub.skipped == {}
    assert seeded_subset(str(shard_dir), 25, 0).keys != seeded_subset(str(shard_dir), 25, 7).keys
    everything = seeded_subset(str(shard_dir), 10**6, 3)
    assert sorted(everything.keys) == sorted(every)


def test_corrupt_samples_and_unreadable_shards_are_skipped_and_counted(shard_dir, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    first = copy / manifest["shards"][0]
    shard = open_shard(str(first))
    bad_key = shard.key(2)
    offset, size = int(shard.index.image_offset[2]), int(shard.index.image_size[2])
    del shard
    data = bytearray(first.read_bytes())
    data[offset : offset + size] = b"\0" * size  # the member stays in place, its PNG is gone
    first.write_bytes(bytes(data))
    sub = seeded_subset(str(copy), 10**6, 0, threads=2)
    assert sub.skipped == {"corrupt_image": 1}
    assert len(sub.keys) == manifest["num_samples"] - 1 and bad_key not in sub.keys
    # a shard that cannot be read (here a folder in its place): more than 1 % of the samples lost
    # stops with one line naming it
    lost = copy / manifest["shards"][1]
    lost.unlink()
    lost.mkdir()
    with pytest.raises(
        UserError, match=rf"shards: 1 shard\(s\) unreadable, 16 of \d+ samples .* lost, more than 1%; e.g. {lost}"
    ):
        seeded_subset(str(copy), 10**6, 0)
    # without a manifest it is skipped and counted (nothing says how much it held)
    sub = seeded_subset(f"{copy}/{{{','.join(manifest['shards'])}}}", 10**6, 0)
    assert sub.skipped == {"corrupt_image": 1, "unreadable_shard": 1}
    assert len(sub.keys) == manifest["num_samples"] - 1 - 16


def test_a_store_that_is_gone_stops_in_one_line(monkeypatch):
    from shards import remote

    monkeypatch.setattr(remote, "RETRY_BACKOFF_S", 0.01)
    monkeypatch.setattr(remote, "SHARD_RETRIES", 1)
    pattern = "http://127.0.0.1:9/gone-{000000..000009}.tar"  # the discard port: nothing listens
    with pytest.raises(UserError, match=r"shards: the first 3 shards could not be read, e.g. http.*/gone-00000"):
        seeded_subset(pattern, 10, 0)


def test_a_shard_cut_short_counts_its_lost_samples(shard_dir, tmp_path):
    """A truncated shard is read up to the damage; the samples after it count against the 1 % limit."""
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    first = copy / manifest["shards"][0]
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 3])
    cut = (
        rf"shards: 1 shard\(s\) cut short, \d+ of \d+ samples \(\d+\.\d%\) lost, more than 1%; "
        rf"e.g. {first} \(cut short: \d+ of 16 samples\)"
    )
    with pytest.raises(UserError, match=cut):
        seeded_subset(str(copy), 10**6, 0)


def test_embed_refuses_fewer_samples_than_a_tsne_needs_in_one_line(shard_dir, tmp_path):
    from downstream.embed import collect

    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    name = json.loads((copy / "manifest.json").read_text())["shards"][0]
    (copy / name).write_bytes((copy / name).read_bytes()[:5000])  # the first sample or two survive
    with pytest.raises(UserError, match=r"readable sample\(s\); a t-SNE needs at least 3"):
        collect(str(copy / name), 100, 0, 1)  # the shard alone: no manifest says how many were lost
