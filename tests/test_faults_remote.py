"""Remote and local shard reads that fail (issue 16): a store that goes away stops the run with one
line naming a URL, in ``loop`` mode too (it never waits forever), and a pass that loses more than
``max_skipped_share`` of its samples never ends in silence."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import threading
import time

import pytest
from test_remote import quick_retries, serve  # noqa: F401  (fixtures: a real HTTP server, fast retries)

from shards.stream import ShardLoader
from sonodistill.errors import UserError, user_message


def _names(shard_dir) -> list[str]:
    return json.loads((shard_dir / "manifest.json").read_text())["shards"]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_store_that_goes_away_mid_run_stops_a_loop_run_naming_a_url(shard_dir, workers):
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    handler = functools.partial(quiet, directory=str(shard_dir.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    kw = dict(mode="loop", num_workers=workers, shuffle_buffer=8, stall_timeout_s=15)
    loader = ShardLoader(f"{base}/{shard_dir.name}", 4, **kw)
    t0 = time.time()
    with pytest.raises(UserError) as exc:
        for i, _ in enumerate(loader):
            if i == 2:  # the server goes away mid-epoch: every later read is refused
                server.shutdown()
                server.server_close()
    msg = user_message(exc.value)
    assert msg.startswith("data.shards: ") and f"{base}/{shard_dir.name}/" in msg and "\n" not in msg
    # a refused read is skipped at once (too much lost); a read stuck on a dead connection, by the stall time
    assert "more than data.max_skipped_share=0.01" in msg or "no batch from the shard readers for 15 s" in msg
    assert time.time() - t0 < 60


def test_nothing_read_for_the_stall_time_stops_the_run(shard_dir, serve):  # noqa: F811
    names = _names(shard_dir)
    base, _ = serve(shard_dir.parent, cuts=dict.fromkeys(names, -1))  # the shards are there, every read fails
    urls = [f"{base}/{shard_dir.name}/{n}" for n in names]
    loader = ShardLoader(urls, 4, mode="loop", num_workers=0, max_skipped_share=1.0, stall_timeout_s=1e-3)
    with pytest.raises(UserError, match=r"data.shards: nothing read for \d+ s .*last failure http"):
        next(iter(loader))


def test_a_list_of_only_missing_shards_is_an_error_not_a_hang(shard_dir, serve, tmp_path):  # noqa: F811
    base, _ = serve(tmp_path)
    urls = [f"{base}/{n}" for n in _names(shard_dir)]  # no manifest: the share is unknown
    with pytest.raises(
        UserError, match=rf"data.shards: none of the {len(urls)} listed shard\(s\) could be found, e.g. http"
    ):
        ShardLoader(urls, 4, mode="loop", num_workers=0)


def test_one_missing_shard_of_a_list_is_skipped_with_a_warning(shard_dir, serve, caplog):  # noqa: F811
    base, _ = serve(shard_dir.parent)
    names = _names(shard_dir)
    urls = [f"{base}/{shard_dir.name}/{n}" for n in names] + [f"{base}/{shard_dir.name}/gone.tar"]
    with caplog.at_level(logging.WARNING, logger="shards.stream"):
        loader = ShardLoader(urls, 4, mode="epoch", num_workers=0, drop_last=False, max_skipped_share=0.2)
        n = sum(len(b["image"]) for b in loader)
    assert n == json.loads((shard_dir / "manifest.json").read_text())["num_samples"]
    assert loader.skipped == {"unreadable_shard": 1}
    assert any("gone.tar: shard skipped, not found" in r.getMessage() for r in caplog.records)
    # more missing than data.max_skipped_share allows (a brace range past the last shard): refused
    with pytest.raises(UserError) as exc:
        ShardLoader([*urls, f"{base}/{shard_dir.name}/gone2.tar"], 4, mode="loop", num_workers=0)
    assert user_message(exc.value) == (
        f"data.shards: 2 of {len(names) + 2} listed shards ({2 / (len(names) + 2):.0%}) not found, more than "
        f"data.max_skipped_share=0.01; e.g. {base}/{shard_dir.name}/gone.tar (check the list or its brace range)"
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_a_missing_listed_shard_never_leaves_a_worker_without_shards(shard_dir, workers):
    """Three listed shards, one missing, two workers: dealt, the missing one would be one worker's
    only shard and end the run; it is left out before the deal."""
    names = _names(shard_dir)[:2]
    counts = json.loads((shard_dir / "manifest.json").read_text())["shard_samples"][:2]
    urls = [str(shard_dir / names[0]), str(shard_dir / "gone.tar"), str(shard_dir / names[1])]
    for mode in ("epoch", "loop"):
        loader = ShardLoader(urls, 2, mode=mode, num_workers=workers, drop_last=False, seed=1, max_skipped_share=0.5)
        if mode == "epoch":
            assert sum(len(b["image"]) for b in loader) == sum(counts)
        else:
            batches = iter(loader)
            assert all(len(next(batches)["image"]) == 2 for _ in range(3 * sum(counts)))
        assert loader.skipped == {"unreadable_shard": 1}


@pytest.mark.parametrize("manifest", [True, False])
def test_losses_before_a_resumed_position_are_not_counted_again(shard_dir, tmp_path, manifest):
    """A truncated shard counted before a checkpoint is not counted again by the resumed run, at
    every position (within its window, on a window's edge, past it), with a manifest or a list."""
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in shard_dir.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    bad = damaged / _names(shard_dir)[1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    source = damaged if manifest else sorted(str(p) for p in damaged.glob("*.tar"))
    _resumed_like_straight(source, slice(None, -1), num_workers=0, shuffle_buffer=8)


def _resumed_like_straight(source, positions: slice, **settings) -> None:
    """A straight epoch over ``source`` (one truncated shard in it), then a run resumed from each
    saved position in ``positions``: the rest of the samples, in order, and the loss counts are the same."""
    settings = dict(batch_size=4, mode="epoch", with_meta=True, drop_last=False, batches_per_item=1, **settings)
    straight = ShardLoader(source, max_skipped_share=0.9, **settings)
    states, keys = [], []
    for b in straight:
        keys += b["key"]
        states.append((len(keys), json.loads(json.dumps(straight.state_dict()))))
    assert straight.skipped.get("bad_shard") == 1
    for at, state in states[positions]:
        resumed = ShardLoader(source, max_skipped_share=0.9, **settings)
        resumed.load_state_dict(state)
        rest = [k for b in resumed for k in b["key"]]
        assert rest == keys[at:] and resumed.skipped == straight.skipped, at


def test_an_epoch_pass_losing_too_much_is_an_error_not_a_short_epoch(shard_dir, serve):  # noqa: F811
    bad = _names(shard_dir)[1]
    base, _ = serve(shard_dir.parent, cuts={bad: -1})
    loader = ShardLoader(f"{base}/{shard_dir.name}", 4, mode="epoch", num_workers=0, drop_last=False)
    said = rf"lost this epoch \(\d+ in 1 unreadable shard\(s\)\), .* e.g. {base}/{shard_dir.name}/{bad}"
    with pytest.raises(UserError, match=said):
        list(loader)


def test_raw_shards_resumed_in_a_window_do_not_count_its_losses_again(corpus_dir, tmp_path):
    """Raw shards read by workers plan a whole window's copies at its first fill, opening every shard
    of it: a run resumed inside that window must not count that window's losses again."""
    from shards.build import BuildSettings, build_shards

    built = tmp_path / "raw"
    sources = {p.name: str(p) for p in sorted(corpus_dir.iterdir()) if p.is_dir()}
    build_shards(sources, built, BuildSettings(size=64, samples_per_shard=8, workers=1, encoding="raw"), progress=False)
    bad = built / _names(built)[2]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    # early positions: the damaged shard still ahead of the position in its window
    _resumed_like_straight(built, slice(0, 4), num_workers=2, shuffle=False)


class _Stalling(http.server.SimpleHTTPRequestHandler):
    """Serves files until ``stall`` is set; then a shard request gets no answer (a store that hangs)."""

    stall = threading.Event()
    shard_requests = 0

    def log_message(self, *args) -> None:
        """Quiet."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.endswith(".tar"):
            type(self).shard_requests += 1
            if self.stall.is_set():
                time.sleep(120)
                return
        super().do_GET()


def test_a_stop_signal_while_the_store_stalls_checkpoints_and_exits_75(shard_dir, tiny_teacher_dir, tmp_path):
    """SLURM's preemption during a remote-store stall: the run used to wait out data.stall_timeout_s
    and fail (exit 2, no requeue, no checkpoint); it now checkpoints its last step within seconds."""
    import os
    import signal
    import subprocess
    import sys

    from dist.tiny_pretrain import REPO, TINY_YAML, tiny_overrides

    from pretrain.checkpoint import list_checkpoints
    from sonodistill.jsonl import read_jsonl
    from sonodistill.stop import EXIT_PREEMPTED

    handler = type("H", (_Stalling,), {"stall": threading.Event(), "shard_requests": 0})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(shard_dir.parent))
    )
    server.daemon_threads, server.block_on_close = True, False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "run"
    shards = f"http://127.0.0.1:{server.server_address[1]}/{shard_dir.name}"
    run = dict(train__max_steps=100_000, train__log_every=1, train__save_every=100_000, data__stall_timeout_s=90)
    cmd = [sys.executable, str(REPO / "pretrain" / "run.py"), "--config", str(TINY_YAML)]
    cmd += tiny_overrides(shards, tiny_teacher_dir, out, **run)
    log = (tmp_path / "log.txt").open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and len(read_jsonl(out / "metrics.jsonl")) < 2:
            time.sleep(0.05)
        handler.stall.set()  # every later shard read hangs; the loader's prefetched batches run out
        seen, still = -1, time.time()
        while time.time() < deadline and proc.poll() is None and time.time() - still < 4:
            if (n := len(read_jsonl(out / "metrics.jsonl"))) != seen:  # prefetched batches still train
                seen, still = n, time.time()
            time.sleep(0.1)
        # no step for 4 s: the run waits on the stalled read (the old code waited out the 90 s)
        t0 = time.time()
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        server.shutdown()
        server.server_close()
    said = (tmp_path / "log.txt").read_text()
    assert code == EXIT_PREEMPTED and time.time() - t0 < 20, said[-3000:]
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    [(saved, _)] = list_checkpoints(out)
    assert saved >= steps[-1] >= 2 and f"stopped by SIGTERM after step {saved}" in said
    assert "no batch from the shard readers" not in said
