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
