"""The shard loader never loses samples in silence: mixed image sizes, shards that disagree with
their manifest, truncated shards, batches no worker can fill, bad arguments and a position loaded
into another rank are each one clear line or a counted, guarded loss."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from test_stream import keys_of, make_shards

from shards.stream import ShardLoader
from sonodistill.errors import UserError


def _with_counts(root: Path, per_shard: int) -> Path:
    """A manifest as the shard builder writes it: samples per shard recorded."""
    m = json.loads((root / "manifest.json").read_text())
    m["shard_samples"] = [per_shard] * len(m["shards"])
    (root / "manifest.json").write_text(json.dumps(m))
    return root


def _png(size: int, value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value % 256, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _shard(path: Path, size: int, n: int, first: int = 0) -> str:
    with wds.TarWriter(str(path), mtime=0, encoder=False) as tw:
        for i in range(first, first + n):
            tw.write({"__key__": f"{i:08d}", "png": _png(size, i), "json": b"{}"})
    return str(path)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_list_mixing_image_sizes_stops_with_one_line(tmp_path, workers):
    """Every worker takes the size of the list's first shard (not of whichever sample it meets
    first), and a set that mixes sizes is a loss past max_skipped_share, not most of it dropped."""
    big = [_shard(tmp_path / f"a{i}.tar", 16, 10, 10 * i) for i in range(2)]
    small = [_shard(tmp_path / f"b{i}.tar", 8, 10, 100 + 10 * i) for i in range(2)]
    kw = dict(batch_size=4, mode="epoch", num_workers=workers, drop_last=False, shuffle=False, with_meta=True)
    loader = ShardLoader(big + small, **kw)
    assert loader.image_size == 16
    with pytest.raises(UserError, match=r"lost this epoch \(\d+ of another image size\).*a 8x8 image, not 16x16"):
        list(loader)
    # allowed to lose that much, the same images (the 16 px ones) come back whatever the workers
    loader = ShardLoader(big + small, max_skipped_share=1.0, **kw)
    assert sorted(keys_of(loader)) == [f"{i:08d}" for i in range(20)]
    assert loader.skipped == {"bad_size": 20}


def test_a_shard_replaced_under_its_manifest_is_a_counted_loss(tmp_path, caplog):
    root = _with_counts(make_shards(tmp_path / "s", n_shards=4, per_shard=10), 10)
    _shard(root / "shard-000001.tar", 16, 6, first=500)  # rebuilt with 6 samples, manifest says 10
    kw = dict(batch_size=5, mode="epoch", num_workers=0, drop_last=False, shuffle=False, with_meta=True)
    with caplog.at_level(logging.WARNING, logger="shards.read_guard"):
        with pytest.raises(UserError, match=r"4 of 40 samples \(10.0%\) lost this epoch \(4 in shards whose length"):
            list(ShardLoader(root, **kw))
    assert "shard-000001.tar: samples skipped (holds 6 samples, the manifest 10" in caplog.text
    loader = ShardLoader(root, max_skipped_share=0.5, **kw)
    assert len(keys_of(loader)) == 36
    assert loader.skipped == {"shard_mismatch": 1}


def test_samples_past_a_truncation_count_toward_the_share(tmp_path):
    root = _with_counts(make_shards(tmp_path / "s", n_shards=3, per_shard=20), 20)
    last = root / "shard-000002.tar"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2 + 100])
    kw = dict(batch_size=4, mode="epoch", num_workers=0, drop_last=False, shuffle=False, with_meta=True)
    loader = ShardLoader(root, max_skipped_share=0.5, **kw)
    got = len(keys_of(loader))
    cut = 60 - got - loader.skipped.get("missing_image", 0)  # the sample cut in half has no image
    assert 0 < cut < 20 and loader.skipped["bad_shard"] == 1
    with pytest.raises(UserError, match=rf"{cut} of 60 samples .* \({cut} past the damage in truncated shards\)"):
        list(ShardLoader(root, **kw))


def test_a_batch_no_worker_can_fill(tmp_path, caplog):
    root = _with_counts(make_shards(tmp_path / "s", n_shards=4, per_shard=10), 10)
    with pytest.raises(UserError, match=r"batch_size 30: more than the 20 samples each of this rank's 2 loader"):
        ShardLoader(root, batch_size=30, mode="epoch", num_workers=2)
    with caplog.at_level(logging.WARNING, logger="shards.stream"):
        short = ShardLoader(root, batch_size=30, mode="epoch", num_workers=2, drop_last=False, shuffle=False)
    assert "those workers' batches come short" in caplog.text
    assert sorted(len(b["image"]) for b in short) == [20, 20]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shards.stream"):
        ShardLoader(root, batch_size=30, mode="loop", num_workers=2)
    assert "a batch repeats images of the worker's next epoch" in caplog.text


def test_fewer_shards_than_workers_deal_samples_and_the_check_counts_them_so(tmp_path):
    """One shard of 10 over 4 ranks: rank 0 keeps samples 0, 4 and 8, so a batch of 3 fits it."""
    root = _with_counts(make_shards(tmp_path / "s", n_shards=1, per_shard=10), 10)
    kw = dict(batch_size=3, mode="epoch", num_workers=0, world_size=4, with_meta=True, shuffle=False)
    assert keys_of(ShardLoader(root, rank=0, **kw)) == ["00000000", "00000004", "00000008"]
    with pytest.raises(UserError, match="more than the 2 samples each of this rank's 1 loader worker"):
        ShardLoader(root, rank=2, **kw)  # samples 2 and 6


def test_a_loss_counts_in_every_epoch_of_a_loop(tmp_path):
    """A damaged shard loses its samples every epoch, also when it stays open across the boundary."""
    root = _with_counts(make_shards(tmp_path / "s", n_shards=1, per_shard=20), 20)
    shard = root / "shard-000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    loader = ShardLoader(root, batch_size=2, mode="loop", num_workers=0, max_skipped_share=0.9, shuffle=False)
    it = iter(loader)
    for _ in range(30):  # about four passes over the 8-9 samples left
        next(it)
    assert loader.skipped["bad_shard"] >= 3


def test_a_tar_cut_at_a_member_boundary_is_cut_short(tmp_path):
    """tar archives end in zero blocks: one cut exactly between two members reads as a whole
    archive to tarfile, and would lose its tail in silence."""
    from shards.tarindex import BLOCK, index_tar

    root = make_shards(tmp_path / "s", n_shards=1, per_shard=6)
    buf = np.frombuffer((root / "shard-000000.tar").read_bytes(), np.uint8)
    whole = index_tar(buf)
    assert whole.complete and len(whole) == 6
    end = int(whole.json_offset[3] + whole.json_size[3])  # the end of sample 3's last member
    end = max(end, int(whole.image_offset[3] + whole.image_size[3]))
    end = -(-end // BLOCK) * BLOCK
    for cut in (buf[:end], np.concatenate([buf[:end], np.full(100, 7, np.uint8)])):  # fast path; tarfile's
        index = index_tar(cut)
        assert len(index) == 4 and not index.complete
    assert index_tar(np.concatenate([buf[:end], np.zeros(2 * BLOCK, np.uint8)])).complete


@pytest.mark.parametrize(
    "kw, said",
    [
        (dict(batch_size=2.5), "batch_size 2.5: expected a whole number >= 1"),
        (dict(batch_size="64"), "batch_size '64': expected a whole number >= 1"),
        (dict(seed=-1), "seed -1: expected a whole number >= 0"),
        (dict(shuffle_buffer=0), "shuffle_buffer 0: expected a whole number >= 1"),
        (dict(num_workers=-1), "num_workers -1: expected a whole number >= 0"),
        (dict(prefetch_factor=0), "prefetch_factor 0: expected a whole number >= 1"),
        (dict(max_skipped_share=5), "max_skipped_share 5: expected a number >= 0 and <= 1"),
        (dict(stall_timeout_s=0), "stall_timeout_s 0: expected a number > 0"),
        (dict(drop_last="no"), "drop_last 'no': expected true or false"),
        (dict(rank=1.0, world_size=2), "rank 1.0: expected a whole number >= 0"),
    ],
)
def test_bad_arguments_are_one_line_naming_them(tmp_path, kw, said):
    root = make_shards(tmp_path / "s", n_shards=1, per_shard=2)
    args = {"batch_size": 2, **kw}
    with pytest.raises(UserError, match="^shard loader " + said.replace("(", r"\(").replace(".", r"\.") + "$"):
        ShardLoader(root, **args)


def test_a_position_loaded_into_another_rank_restarts_its_epoch(tmp_path, caplog):
    root = _with_counts(make_shards(tmp_path / "s", n_shards=4, per_shard=10), 10)
    kw = dict(batch_size=2, mode="loop", num_workers=0, world_size=2, with_meta=True)
    rank0 = ShardLoader(root, rank=0, **kw)
    it = iter(rank0)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(rank0.state_dict()))
    assert state["rank"] == 0 and state["encoding"] == "png"
    rank1 = ShardLoader(root, rank=1, **kw)
    fresh = keys_of(ShardLoader(root, rank=1, **kw), 10)
    with caplog.at_level(logging.WARNING, logger="shards.stream"):
        rank1.load_state_dict(state)
    assert "rank 0 -> 1" in caplog.text
    assert keys_of(rank1, 10) == fresh  # not rank 0's position applied to rank 1's stream


def test_the_stall_message_does_not_blame_a_shard_that_was_read():
    from shards.stream import _no_hang

    class Stalled:
        timeout = 10.0  # the loader's wait per try

        def __iter__(self):
            return self

        def __next__(self):
            raise RuntimeError("DataLoader timed out after 10 seconds")

    with pytest.raises(UserError) as info:
        next(_no_hang(Stalled(), 10, ["http://h/s/shard-000000.tar", "http://h/s/shard-000001.tar"]))
    assert str(info.value).endswith("reading 2 shards (the first http://h/s/shard-000000.tar)")
