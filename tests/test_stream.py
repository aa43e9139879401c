"""shards.stream.ShardLoader: splitting, shuffling, exactly-once epochs, exact resume, corrupt samples."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from shards.stream import ShardLoader
from sonodistill.errors import UserError

SIZE = 16


def _png(value: int) -> bytes:
    arr = np.full((SIZE, SIZE), value % 251, np.uint8)
    arr[0, 0] = value // 251  # key recoverable from pixels too
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG")
    return buf.getvalue()


def make_shards(root: Path, n_shards: int, per_shard: int, corrupt: tuple[int, ...] = ()) -> Path:
    """Shards of distinct keyed samples plus a manifest; ``corrupt`` indices get undecodable PNGs."""
    root.mkdir(parents=True, exist_ok=True)
    names, idx = [], 0
    for s in range(n_shards):
        name = f"shard-{s:06d}.tar"
        with wds.TarWriter(str(root / name), mtime=0, encoder=False) as tw:
            for _ in range(per_shard):
                png = b"\x89PNG\r\n\x1a\n broken" if idx in corrupt else _png(idx)
                meta = {"source": "a" if idx % 2 else "b", "path": f"{idx}.png"}
                tw.write({"__key__": f"{idx:08d}", "png": png, "json": json.dumps(meta).encode()})
                idx += 1
        names.append(name)
    manifest = {"num_samples": idx, "sources": {}, "rejected": {}, "shards": names, "settings": {"size": SIZE}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("stream"), n_shards=6, per_shard=10)


def keys_of(loader, n_batches=None) -> list[str]:
    out = []
    for i, b in enumerate(loader):
        if n_batches is not None and i >= n_batches:
            break
        out.extend(b["key"])
    return out


def test_batches_are_uint8_single_channel_with_meta(shards):
    loader = ShardLoader(shards, batch_size=4, mode="epoch", num_workers=0, with_meta=True, seed=0)
    b = next(iter(loader))
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (4, 1, SIZE, SIZE)
    assert len(b["source"]) == len(b["key"]) == 4 and set(b["source"]) <= {"a", "b"}
    for img, key in zip(b["image"], b["key"]):  # pixels belong to their key
        idx = int(key)
        assert int(img[0, 1, 1]) == idx % 251 and int(img[0, 0, 0]) == idx // 251
    assert loader.num_samples == 60


@pytest.mark.parametrize("world, workers", [(1, 0), (1, 2), (2, 2), (4, 2)])
def test_epoch_sees_every_sample_exactly_once(shards, world, workers):
    """Across all ranks and workers; 4x2 = 8 slots > 6 shards exercises the sample-level split."""
    seen = []
    for rank in range(world):
        loader = ShardLoader(
            shards,
            batch_size=3,
            mode="epoch",
            num_workers=workers,
            rank=rank,
            world_size=world,
            with_meta=True,
            drop_last=False,
            seed=5,
        )
        seen += keys_of(loader)
    assert sorted(seen) == [f"{i:08d}" for i in range(60)]


def test_shuffling_is_seeded(shards):
    def order(seed, shuffle=True):
        return keys_of(
            ShardLoader(
                shards,
                batch_size=5,
                mode="epoch",
                num_workers=0,
                with_meta=True,
                seed=seed,
                shuffle=shuffle,
                shuffle_buffer=20,
            )
        )

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == sorted(order(2))
    assert order(0, shuffle=False) == [f"{i:08d}" for i in range(60)]


def test_epoch_mode_passes_reshuffle(shards):
    loader = ShardLoader(shards, batch_size=5, mode="epoch", num_workers=0, with_meta=True, seed=3)
    first, second = keys_of(loader), keys_of(loader)
    assert sorted(first) == sorted(second) and first != second


def test_loop_mode_runs_epochs_back_to_back(shards):
    loader = ShardLoader(shards, batch_size=6, mode="loop", num_workers=0, with_meta=True, seed=3)
    keys = keys_of(loader, n_batches=20)  # 120 samples = two epochs
    assert sorted(keys[:60]) == sorted(keys[60:]) == [f"{i:08d}" for i in range(60)]
    assert keys[:60] != keys[60:]


def test_resampled_mode_is_infinite_and_seeded(shards):
    def run(seed):
        return keys_of(
            ShardLoader(shards, batch_size=10, mode="resampled", num_workers=0, with_meta=True, seed=seed), n_batches=15
        )

    a = run(4)
    assert len(a) == 150 and a == run(4) and a != run(5)
    assert len(set(a)) < 150  # drawn with replacement


@pytest.mark.parametrize("mode, workers, cut", [("loop", 2, 7), ("loop", 2, 13), ("loop", 0, 9), ("epoch", 2, 5)])
def test_resume_continues_exactly(shards, mode, workers, cut):
    """State after batch k, loaded into a fresh loader, gives batches k+1.. of the uninterrupted run."""
    kw = dict(batch_size=4, mode=mode, num_workers=workers, with_meta=True, seed=11, shuffle_buffer=8)
    total = 14
    full = [b["key"] for b in _take(ShardLoader(shards, **kw), total)]
    first = ShardLoader(shards, **kw)
    head = [b["key"] for b in _take(first, cut)]
    state = json.loads(json.dumps(first.state_dict()))  # must survive a checkpoint
    second = ShardLoader(shards, **kw)
    second.load_state_dict(state)
    tail = [b["key"] for b in _take(second, total - cut)]
    assert head + tail == full


def _take(loader, n):
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            break
    return out


def test_resume_with_other_layout_falls_back_with_warning(shards, caplog):
    a = ShardLoader(shards, batch_size=4, mode="loop", num_workers=0, seed=1)
    _take(a, 20)  # into epoch 1
    b = ShardLoader(shards, batch_size=4, mode="loop", num_workers=2, seed=1, with_meta=True)
    with caplog.at_level("WARNING", logger="shards.stream"):
        b.load_state_dict(a.state_dict())
    (warning,) = caplog.messages
    assert warning.startswith("shard loader: its position was saved with other settings (num_workers 0 -> 2); ")
    assert "resuming at the start of epoch 1 instead of the exact position" in warning
    # Workers hand over b.parts batches at a time: the first item is worker 0's, the second worker 1's.
    batches = _take(b, 2 * b.parts)
    first = [k for batch in batches[: b.parts] for k in batch["key"]][:30]
    second = [k for batch in batches[b.parts :] for k in batch["key"]][:30]
    assert set(first) | set(second) == {f"{i:08d}" for i in range(60)}  # a whole epoch from its start


def test_corrupt_samples_and_shards_are_skipped_and_counted(tmp_path):
    root = make_shards(tmp_path / "s", n_shards=3, per_shard=8, corrupt=(3, 17))
    # Truncate the last shard in the middle of a member.
    last = root / "shard-000002.tar"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2 + 100])
    loader = ShardLoader(
        root, batch_size=2, mode="epoch", num_workers=0, with_meta=True, drop_last=False, shuffle=False
    )
    keys = keys_of(loader)
    assert "00000003" not in keys and "00000017" not in keys
    assert set(keys) >= {f"{i:08d}" for i in range(16) if i != 3}
    skipped = loader.skipped
    assert skipped["corrupt_image"] >= 1 and skipped.get("bad_shard", 0) + skipped["corrupt_image"] >= 2


@pytest.mark.parametrize("mode", ["loop", "resampled", "epoch"])
def test_shards_that_give_no_sample_stop_the_run_never_hang(tmp_path, mode):
    """Damaged through and through (the manifest counts samples the tars do not hold), or empty tar
    files: a loop run would otherwise look for a sample forever, an epoch pass end empty in silence."""
    root = make_shards(tmp_path / "s", n_shards=2, per_shard=4)
    for shard in root.glob("shard-*.tar"):
        shard.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    loader = ShardLoader(root, batch_size=2, mode=mode, num_workers=0)
    said = r"^data.shards: (the 2 shard\(s\) of this loader slot gave no sample|no shard of this slot could be read)"
    with pytest.raises(UserError, match=said):
        next(iter(loader))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(bytes(10240))  # a valid tar holding nothing
    loader = ShardLoader([str(empty)], batch_size=2, mode=mode, num_workers=0)
    with pytest.raises(UserError, match=r"the 1 shard\(s\) of this loader slot gave no sample .* e.g. .*empty.tar$"):
        next(iter(loader))


def test_wrong_size_sample_is_skipped(tmp_path):
    root = make_shards(tmp_path / "s", n_shards=1, per_shard=4)
    odd = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(odd, format="PNG")
    with wds.TarWriter(str(root / "shard-000001.tar"), mtime=0, encoder=False) as tw:
        tw.write({"__key__": "odd", "png": odd.getvalue(), "json": b"{}"})
    m = json.loads((root / "manifest.json").read_text())
    m["shards"].append("shard-000001.tar")
    (root / "manifest.json").write_text(json.dumps(m))
    # one odd sample in five is tolerated when the run allows that share, and counted
    kw = dict(batch_size=1, mode="epoch", num_workers=0, drop_last=False, shuffle=False)
    loader = ShardLoader(root, max_skipped_share=0.25, **kw)
    assert sum(b["image"].shape[0] for b in loader) == 4
    assert loader.skipped == {"bad_size": 1}
    with pytest.raises(UserError, match=r"1 of 5 samples \(20.0%\) lost this epoch \(1 of another image size\)"):
        list(ShardLoader(root, **kw))


def test_brace_pattern_and_list_inputs(shards):
    pattern = str(shards / "shard-{000000..000005}.tar")
    a = keys_of(ShardLoader(pattern, batch_size=5, mode="epoch", num_workers=0, with_meta=True, shuffle=False))
    b = keys_of(
        ShardLoader(
            sorted(str(p) for p in shards.glob("*.tar")),
            batch_size=5,
            mode="epoch",
            num_workers=0,
            with_meta=True,
            shuffle=False,
        )
    )
    assert a == b == [f"{i:08d}" for i in range(60)]


def test_bad_inputs(tmp_path, shards):
    with pytest.raises(UserError, match="no shard manifest"):
        ShardLoader(tmp_path, batch_size=2)
    with pytest.raises(UserError, match="not found"):
        ShardLoader(str(tmp_path / "x-{0..3}.tar"), batch_size=2)
    with pytest.raises(UserError, match="mode 'forever'"):
        ShardLoader(shards, batch_size=2, mode="forever")
    with pytest.raises(UserError, match="rank 2 outside world size 2"):
        ShardLoader(shards, batch_size=2, rank=2, world_size=2)


@pytest.mark.dist
def test_torchrun_two_ranks_two_workers_exactly_once(shards, tmp_path, repo_root):
    """Real 2-rank gloo group: ranks come from torch.distributed, each with 2 DataLoader workers."""
    script = repo_root / "tests" / "dist" / "stream_keys.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(shards),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    k0, k1 = ranks[0]["keys"], ranks[1]["keys"]
    assert not set(k0) & set(k1)
    assert sorted(k0 + k1) == [f"{i:08d}" for i in range(60)]


def test_a_position_saved_with_shuffle_is_not_replayed_without_it(shards, caplog):
    a = ShardLoader(shards, batch_size=4, mode="epoch", num_workers=0, seed=1, shuffle=True)
    _take(a, 3)
    b = ShardLoader(shards, batch_size=4, mode="epoch", num_workers=0, seed=1, shuffle=False)
    with caplog.at_level("WARNING", logger="shards.stream"):
        b.load_state_dict(a.state_dict())
    assert "(shuffle True -> False)" in caplog.text and "resuming at the start of epoch 0" in caplog.text
    old = {k: v for k, v in a.state_dict().items() if k != "shuffle"}  # written before shuffle was recorded
    c = ShardLoader(shards, batch_size=4, mode="epoch", num_workers=0, seed=1, shuffle=True)
    caplog.clear()
    c.load_state_dict(old)
    assert not caplog.text
