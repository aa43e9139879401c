"""Faults in a shard build's inputs that used to pass in silence (issue 16): symlink loops, dangling
links, named pipes and arrays holding NaN are counted under their own reasons, and no reject record
names a file by its absolute path."""

from __future__ import annotations

import json
import os

import numpy as np
from test_build import png_bytes, speckle_frame

from shards.build import BuildSettings, build_shards
from shards.readers import ReadError
from shards.readers.base import to_uint8


def test_links_pipes_and_nan_arrays_are_counted_not_skipped(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "good.png").write_bytes(png_bytes(speckle_frame(seed=3)))
    (src / "sub" / "good2.png").write_bytes(png_bytes(speckle_frame(seed=4)))
    os.symlink(src, src / "sub" / "again")  # a folder link back up the tree
    os.symlink("self.png", src / "self.png")  # a link to itself
    os.symlink(tmp_path / "gone.png", src / "gone.png")  # points nowhere
    os.mkfifo(src / "pipe.png")  # opening it would block the build forever
    frame = speckle_frame(seed=5).astype(np.float32) / 255
    frame[:4] = np.nan
    np.save(src / "nan.npy", frame)
    m = build_shards({"s": str(src)}, tmp_path / "out", BuildSettings(size=64, workers=1), progress=False)
    assert m["num_samples"] == 2
    assert m["rejected"] == {"broken_link": 1, "non_finite": 1, "special_file": 1, "symlink_loop": 2}
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    text = json.dumps(rejects)
    assert str(tmp_path) not in text  # paths relative to the source, in records and details
    nan = next(r for r in rejects if r["reason"] == "non_finite")
    assert "NaN or infinite" in json.dumps(nan)


def test_a_symlinked_folder_that_does_not_loop_is_read(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "a.png").write_bytes(png_bytes(speckle_frame(seed=6)))
    src = tmp_path / "src"
    src.mkdir()
    (src / "b.png").write_bytes(png_bytes(speckle_frame(seed=7)))
    os.symlink(real, src / "linked")
    m = build_shards({"s": str(src)}, tmp_path / "out", BuildSettings(size=64, workers=1), progress=False)
    assert m["num_samples"] == 2 and not m["rejected"]


def test_float_pixels_with_nan_are_not_turned_into_black():
    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    assert to_uint8(a).max() == 255
    a[0, 0] = np.inf
    try:
        to_uint8(a)
    except ReadError as exc:
        assert exc.reason == "non_finite" and "1.56%" in exc.detail
    else:
        raise AssertionError("NaN/inf pixels must be rejected")


def test_a_signal_to_the_whole_build_keeps_its_finished_shards_and_the_rerun_is_identical(corpus_dir, tmp_path):
    """Group SIGTERM mid-build: exit 75 with one line, no worker crash; the same command then ends
    with the shards a build that was never stopped writes, byte for byte."""
    import signal
    import subprocess
    import sys
    import time

    sources = [f"--source={p.name}={p}" for p in sorted(corpus_dir.iterdir()) if p.is_dir()]
    cmd = [sys.executable, "-m", "shards.build", *sources, "--size", "64", "--samples-per-shard", "8"]
    out = tmp_path / "stopped"
    proc = subprocess.Popen([*cmd, "--workers", "2", "--out", str(out)], stderr=subprocess.PIPE, text=True,
                            process_group=0)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(out.glob("*.tar")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-4000:]
    lines = [line for line in err.splitlines() if line.startswith(("stopped:", "error:", "Traceback"))]
    assert len(lines) == 1 and lines[0].startswith("stopped: SIGTERM received;"), err[-2000:]
    assert "BrokenProcessPool" not in err
    assert subprocess.run([*cmd, "--workers", "2", "--out", str(out)], capture_output=True).returncode == 0
    ref = tmp_path / "straight"
    assert subprocess.run([*cmd, "--workers", "1", "--out", str(ref)], capture_output=True).returncode == 0
    names = sorted(p.name for p in ref.glob("*.tar"))
    assert names == sorted(p.name for p in out.glob("*.tar"))
    assert all((ref / n).read_bytes() == (out / n).read_bytes() for n in names)
