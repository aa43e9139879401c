"""Faults in a shard build's inputs that used to pass in silence (issue 16): symlink loops, dangling
links, named pipes and arrays holding NaN are counted under their own reasons, and no reject record
names a file by its absolute path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
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
    with pytest.raises(ReadError) as exc:
        to_uint8(a)
    assert exc.value.reason == "non_finite" and exc.value.detail == "1 of 64 pixels are NaN or infinite"


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


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (zombies, already dead, are not counted)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_build_killed_outright_takes_its_workers_with_it():
    """SIGKILL (or the OOM killer) gives the main process no chance to stop its pool; the workers
    ignore the stop signals, so without the kernel's help they would wait for work forever."""
    code = (
        "import time\nfrom shards.ordered_pool import ordered_map\n"
        "list(ordered_map(time.sleep, [60] * 4, workers=2, chunk=1))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 60
        workers: list[int] = []
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = [p for p in _children(proc.pid) if "spawn_main" in open(f"/proc/{p}/cmdline").read()]
        assert len(workers) == 2, "the pool's two workers never started"
        time.sleep(1.0)  # past their initializer
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)]
    finally:
        proc.kill()
        for p in _children(proc.pid):
            os.kill(p, signal.SIGKILL)


def test_a_truncated_volume_and_a_name_not_in_utf8_are_counted_and_kept(tmp_path):
    """A MetaImage whose header reads but whose pixels stop short is one ``unreadable`` rejection
    (ITK's reason, no local path), not the end of the build; a file named in Latin-1 bytes is read."""
    import SimpleITK as sitk

    src = tmp_path / "src"
    src.mkdir()
    clip = np.stack([speckle_frame(seed=s) for s in (6, 7, 8)])
    sitk.WriteImage(sitk.GetImageFromArray(clip), str(tmp_path / "whole.mha"))
    data = (tmp_path / "whole.mha").read_bytes()
    (src / "cut.mha").write_bytes(data[: len(data) // 2])
    (src / os.fsdecode(b"lat\xe9n.png")).write_bytes(png_bytes(speckle_frame(seed=9)))
    m = build_shards({"s": str(src)}, tmp_path / "out", BuildSettings(size=64, workers=1), progress=False)
    assert m["num_samples"] == 1 and m["rejected"] == {"unreadable": 1}
    (cut,) = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert cut["path"] == "cut.mha" and "cannot be read" in cut["values"]["detail"]
    assert str(tmp_path) not in json.dumps(cut)


def test_a_second_build_into_a_folder_being_written_is_refused_and_a_dead_writer_never_blocks(tmp_path):
    """Two builds interleaving their files in one --out (a requeued job overlapping the old one) is
    refused with one line naming the writer; the lock dies with its holder, and a finished build
    leaves no lock behind."""
    import pytest

    from shards.build import build_part
    from sonodistill.errors import UserError
    from sonodistill.parts import Part

    src = tmp_path / "src"
    src.mkdir()
    for s in (1, 2):
        (src / f"{s}.png").write_bytes(png_bytes(speckle_frame(seed=s)))
    out, settings = tmp_path / "out", BuildSettings(size=64, workers=1)
    part = Part(0, 2)
    for lock, build, said in (
        (out / ".lock", lambda: build_shards({"s": str(src)}, out, settings, progress=False), f"--out {out}"),
        (
            out / ".parts" / f".lock-{part.tag}",
            lambda: build_part({"s": str(src)}, out, settings, part, progress=False),
            f"--out {out} --part 0/2",
        ),
    ):
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time\nfrom pathlib import Path\nfrom sonodistill.lock import exclusive\n"
                f"with exclusive(Path({str(lock)!r}), 'x'):\n    print('held', flush=True)\n    time.sleep(60)\n",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(UserError, match=rf"{said}: another process \(pid {holder.pid}\) is writing to it"):
                build()
        finally:
            holder.kill()
            holder.wait()
    shutil.rmtree(out / ".parts")
    m = build_shards({"s": str(src)}, out, BuildSettings(size=64, workers=1), progress=False)
    assert m["num_samples"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "rejects.jsonl", "shard-000000.tar"]
    # refused before it started: a folder that is not a build keeps no lock of ours
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not empty and not a shard build"):
        build_shards({"s": str(src)}, tmp_path / "mine", BuildSettings(size=64, workers=1), progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_killed_writers_forked_children_delay_the_next_writer_not_refuse_it(tmp_path):
    """SIGKILL leaves the writer's forked children (loader workers) holding the lock for a few
    seconds: they write nothing, so nobody is reported as writing, and the next writer waits."""
    import time

    from sonodistill.lock import exclusive, holder

    lock = tmp_path / ".lock"
    code = (
        "import os, sys, time\nfrom pathlib import Path\nfrom sonodistill.lock import exclusive\n"
        f"with exclusive(Path({str(lock)!r}), 'x'):\n"
        "    if os.fork() == 0:\n        time.sleep(3); os._exit(0)\n"  # a worker with the descriptor
        "    print('held', flush=True); time.sleep(60)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "held"
    assert holder(lock) == str(writer.pid)
    writer.kill()
    writer.wait()
    assert holder(lock) is None  # its child still holds the lock, but writes nothing
    t0 = time.monotonic()
    with exclusive(lock, "--out x"):
        waited = time.monotonic() - t0
    assert 0.5 < waited < 10, waited


def test_a_filesystem_without_file_locks_builds_with_one_warning(tmp_path, monkeypatch, caplog):
    """Lustre mounted noflock: flock fails with ENOSYS; the build and its parts run, the guard off."""
    import errno
    import logging

    import sonodistill.lock as lock_mod
    from shards.build import build_part
    from sonodistill.parts import Part

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(lock_mod.fcntl, "flock", no_flock)
    monkeypatch.setattr(lock_mod, "_warned", [])
    src = tmp_path / "src"
    src.mkdir()
    for s in (1, 2):
        (src / f"{s}.png").write_bytes(png_bytes(speckle_frame(seed=s)))
    out, settings = tmp_path / "out", BuildSettings(size=64, workers=1)
    with caplog.at_level(logging.WARNING, logger="sonodistill.lock"):
        for i in range(2):
            build_part({"s": str(src)}, out, settings, Part(i, 2), progress=False)
        m = build_shards({"s": str(src)}, out, settings, progress=False)
    assert m["num_samples"] == 2
    warned = [r.getMessage() for r in caplog.records if r.name == "sonodistill.lock"]
    assert warned == [  # once, not once per lock taken
        f"{out / '.parts'}: the filesystem does not support file locks (Function not implemented); "
        "two commands writing into the same folder will not be refused"
    ]


def test_a_finished_build_missing_a_shard_is_not_called_built(tmp_path):
    import pytest

    from sonodistill.errors import UserError

    src = tmp_path / "src"
    src.mkdir()
    for s in (1, 2, 3):
        (src / f"{s}.png").write_bytes(png_bytes(speckle_frame(seed=s)))
    settings = BuildSettings(size=64, workers=1, samples_per_shard=1)
    m = build_shards({"s": str(src)}, tmp_path / "out", settings, progress=False)
    assert build_shards({"s": str(src)}, tmp_path / "out", settings, progress=False) == m  # nothing to do
    (tmp_path / "out" / m["shards"][1]).unlink()
    with pytest.raises(UserError, match=r"lists 1 shard\(s\) no longer there \(e.g. shard-000001.tar\)"):
        build_shards({"s": str(src)}, tmp_path / "out", settings, progress=False)
