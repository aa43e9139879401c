"""``shards.shardfile.IndexCache``: a shard mapped again reuses its index, never a stale one."""

from __future__ import annotations

import shutil

import numpy as np

from shards.codec import decode_gray
from shards.manifest import resolve_shards
from shards.shardfile import IndexCache, open_shard


def _pixels(shard, i):
    return decode_gray(shard.image(i), shard.index.encoding(i))


def test_a_shard_opened_again_reuses_its_index_and_reads_the_same_samples(shard_dir):
    url = resolve_shards(str(shard_dir))[0][0]
    cache = IndexCache()
    first, again = cache.open(url), cache.open(url)
    assert again.index is first.index and again.buf is not first.buf  # fresh bytes, index kept
    fresh = open_shard(url)
    assert again.index.keys == fresh.index.keys
    for name in ("image_offset", "image_size", "image_ext", "json_offset", "json_size"):
        assert np.array_equal(getattr(again.index, name), getattr(fresh.index, name))
    assert all(np.array_equal(_pixels(again, i), _pixels(fresh, i)) for i in range(len(fresh)))


def test_a_shard_whose_length_changed_is_indexed_again(shard_dir, tmp_path):
    a, b = resolve_shards(str(shard_dir))[0][:2]
    path = tmp_path / "s.tar"
    shutil.copyfile(a, path)
    cache = IndexCache()
    old = cache.open(str(path))
    shutil.copyfile(b, path)  # rewritten in place (not supported during a run, but never served stale)
    new = cache.open(str(path))
    assert new.index is not old.index and new.index.keys == open_shard(b).index.keys


def test_the_cache_keeps_the_most_recent_shards_within_its_sample_budget(shard_dir):
    urls = resolve_shards(str(shard_dir))[0][:3]
    per_shard = len(open_shard(urls[0]))
    cache = IndexCache(max_samples=2 * per_shard)
    first = [cache.open(u).index for u in urls]  # the third pushes the first out
    assert cache.open(urls[2]).index is first[2] and cache.open(urls[1]).index is first[1]
    assert cache.open(urls[0]).index is not first[0]
