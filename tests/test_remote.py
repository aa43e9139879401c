"""Shard sets over HTTP: manifest and shards by folder URL, retries, skipped shards, exact resume.

A real server runs for every test: Python's own ``python -m http.server`` in a subprocess for the
plain case, and a small threaded server in the test that cuts connections mid-shard for the rest.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from shards import remote
from shards.stream import ShardLoader
from sonodistill.errors import UserError


class CuttingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; the first ``cuts[name]`` requests for a file stop halfway through its body."""

    cuts: dict[str, int] = {}
    requests: Counter

    def log_message(self, *args) -> None:
        """No request log: it would interleave with the test/benchmark output."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        name = self.path.rsplit("/", 1)[-1]
        self.requests[name] += 1
        if self.cuts.get(name, 0) >= self.requests[name] or self.cuts.get(name) == -1:
            data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-shard
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def serve():
    servers = []

    def start(root: Path, cuts: dict[str, int] | None = None) -> tuple[str, Counter]:
        handler = type("H", (CuttingHandler,), {"cuts": cuts or {}, "requests": Counter()})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", handler.requests

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(remote, "RETRY_BACKOFF_S", 0.01)
    monkeypatch.setattr(remote, "SHARD_RETRIES", 2)


@pytest.fixture(scope="module")
def stock_server(shard_dir):
    """``python -m http.server`` serving the folder that holds the session's shard set."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(shard_dir.parent)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/{shard_dir.name}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def epoch_keys(shards, world: int = 1, workers: int = 1, **kw) -> list[str]:
    keys = []
    for rank in range(world):
        loader = ShardLoader(
            shards, 4, mode="epoch", rank=rank, world_size=world, num_workers=workers, with_meta=True, seed=4, **kw
        )
        keys += [k for b in loader for k in b["key"]]
    return keys


def test_remote_folder_streams_exactly_like_the_local_one(shard_dir, stock_server):
    local, url = ShardLoader(shard_dir, 4), ShardLoader(stock_server, 4)
    assert url.manifest == local.manifest and url.num_samples == local.num_samples
    assert url.urls == [f"{stock_server}/{s}" for s in local.manifest["shards"]]
    assert epoch_keys(stock_server, world=2) == epoch_keys(shard_dir, world=2)  # same order, same split


def test_dropped_connections_are_retried(shard_dir, serve):
    names = json.loads((shard_dir / "manifest.json").read_text())["shards"]
    base, requests = serve(shard_dir.parent, cuts=dict.fromkeys(names, 1))  # every shard: first read cut
    url = f"{base}/{shard_dir.name}"
    loader = ShardLoader(url, 4, mode="epoch", num_workers=1, with_meta=True, seed=4, drop_last=False)
    keys = [k for b in loader for k in b["key"]]
    assert keys == epoch_keys(shard_dir, drop_last=False)
    assert loader.skipped == {}
    assert all(requests[n] == 2 for n in names)


def test_a_shard_that_keeps_failing_is_skipped_and_counted(shard_dir, serve):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    bad = manifest["shards"][1]
    base, requests = serve(shard_dir.parent, cuts={bad: -1})
    url = f"{base}/{shard_dir.name}"  # one shard of 8: tolerated only when the run allows that share
    loader = ShardLoader(url, 4, mode="epoch", num_workers=0, with_meta=True, drop_last=False, max_skipped_share=0.5)
    keys = [k for b in loader for k in b["key"]]
    lost = manifest["shard_samples"][1]
    local = ShardLoader(shard_dir, 4, mode="epoch", num_workers=0, with_meta=True, drop_last=False)
    expected = [k for b in local for k in b["key"]]
    assert len(keys) == len(expected) - lost and set(keys) < set(expected)
    assert loader.skipped == {"unreadable_shard": 1}
    assert requests[bad] == 1 + remote.SHARD_RETRIES


def test_remote_resume_is_exact(shard_dir, serve):
    base, _ = serve(shard_dir.parent)
    url = f"{base}/{shard_dir.name}"
    kw = dict(batch_size=4, mode="loop", num_workers=1, with_meta=True, seed=9, shuffle_buffer=16, batches_per_item=2)
    full = [b["key"] for _, b in zip(range(12), ShardLoader(url, **kw))]
    first = ShardLoader(url, **kw)
    head = [b["key"] for _, b in zip(range(5), first)]
    second = ShardLoader(url, **kw)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + [b["key"] for _, b in zip(range(7), second)] == full


def test_inspect_and_embed_take_a_folder_url(shard_dir, stock_server, capsys):
    from downstream.embed import collect
    from shards.inspect import main as inspect_main

    inspect_main([stock_server])
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert f"samples: {manifest['num_samples']} in {len(manifest['shards'])} shards" in capsys.readouterr().out
    images, sources = collect(stock_server, max_samples=10, seed=0, num_workers=2)
    assert images.shape == (10, 1, 64, 64) and len(sources) == 10


def test_inspect_of_a_remote_set_draws_its_rejects_and_never_calls_a_partial_count_complete(
    shard_dir, corpus_dir, serve, tmp_path, capsys
):
    from shards.inspect import main as inspect_main

    manifest = json.loads((shard_dir / "manifest.json").read_text())
    names = manifest["shards"]
    base, _ = serve(shard_dir.parent, cuts={names[1]: -1})  # one shard fails on every try
    url = f"{base}/{shard_dir.name}"
    inspect_main([url, "--rejects", str(tmp_path / "r.png"), "--per-reason", "2"])
    assert (tmp_path / "r.png").stat().st_size > 10_000  # rejects.jsonl read from the store, frames from the sources
    evals = tmp_path / "eval"
    evals.mkdir()
    shutil.copyfile(next(p for p in sorted((corpus_dir / "breast").iterdir()) if p.suffix == ".png"), evals / "e.png")
    with pytest.raises(SystemExit) as exc:
        inspect_main([url, "--overlap", str(evals), "--overlap-sheet", str(tmp_path / "ov.png")])
    out, err = capsys.readouterr()
    lost = manifest["shard_samples"][1]
    gaps = f"{lost} of {manifest['num_samples']} samples not read (1 shard(s) unreadable)"
    assert exc.value.code == 2 and f"incomplete: {gaps}; the counts above are a lower bound" in out
    assert err.strip().splitlines()[-1] == f"error: --overlap: {gaps}; the overlap counts are a lower bound"
    # a store that went away: a few shards in a row, then one line (not minutes of retries per shard)
    base, requests = serve(shard_dir.parent, cuts=dict.fromkeys(names, -1))
    with pytest.raises(SystemExit):
        inspect_main([f"{base}/{shard_dir.name}", "--overlap", str(evals), "--overlap-sheet", str(tmp_path / "o.png")])
    assert "error: " + f"{base}/{shard_dir.name}: 3 shards in a row could not be read" in capsys.readouterr().err
    assert sum(requests[n] for n in names) == 3 * (1 + remote.SHARD_RETRIES)


def test_a_missing_remote_manifest_is_one_clear_error(serve, tmp_path):
    base, _ = serve(tmp_path)
    with pytest.raises(UserError, match=r"manifest.json: cannot read the shard manifest \(.*not found\)"):
        ShardLoader(f"{base}/nothing-here", 4)
    with pytest.raises(UserError, match="not a URL fsspec knows"):
        ShardLoader("nosuch://bucket/shards", 4)
