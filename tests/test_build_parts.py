"""shards.build --part I/N: slices, the spool, a merge byte-identical to one process, concurrency, resume, refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_build import sources_of, tree_bytes

import shards.build_parts as parts_mod
from shards.build import BuildSettings, build_part, build_shards
from shards.build_parts import SPOOL, part_inputs
from shards.catalogue import SourceConfig
from shards.options import SourceOptions
from shards.sources import open_source
from sonodistill.errors import UserError
from sonodistill.parts import Part
from sonodistill.stop import Stopped, StopRequest

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(size=48, samples_per_shard=5, workers=1)


@pytest.fixture(scope="module")
def configs(corpus_dir) -> list[SourceConfig]:
    """Three sources, one capped (whether it is full is only known in input order: the merge decides)."""
    src = sources_of(corpus_dir)
    return [
        SourceConfig("breast", src["breast"]),
        SourceConfig("cardiac", src["cardiac"], SourceOptions(max_images=6)),
        SourceConfig("thyroid", src["thyroid"]),
    ]


@pytest.fixture(scope="module")
def one_process(configs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "shards"
    build_shards(configs, out, BuildSettings(**SETTINGS), progress=False)
    return out


def test_slices_deterministic_disjoint_covering_balanced_by_size(configs):
    sources = [open_source(c.name, c.path, c.options) for c in configs]
    sizes = [s for src in sources for s in src.sizes()]
    slices = [part_inputs(sources, Part(i, 3)) for i in range(3)]
    assert slices == [part_inputs(sources, Part(i, 3)) for i in range(3)]
    assert sorted(i for s in slices for i in s) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in s) for s in slices]
    assert max(loads) - min(loads) <= max(sizes), loads
    assert all(s == sorted(s) for s in slices)


def test_parts_then_merge_byte_identical_without_extracting_again(configs, one_process, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    settings = BuildSettings(**SETTINGS)
    done = [build_part(configs, out, settings, Part(i, 3), progress=False) for i in range(3)]
    assert sum(d["inputs"] for d in done) == sum(len(open_source(c.name, c.path)) for c in configs)
    assert sorted(p.name for p in out.iterdir()) == [SPOOL]  # nothing but the spool before the merge

    def no_extraction(*args, **kwargs):
        raise AssertionError("the merge extracted an input again")

    monkeypatch.setattr("shards.extract.extract_item", no_extraction)
    manifest = build_shards(configs, out, settings, progress=False)
    assert tree_bytes(out) == tree_bytes(one_process) and not (out / SPOOL).exists()
    assert manifest["per_source"]["cardiac"]["kept"] == 6
    # after the merge: a part and the merge itself have nothing left to do
    assert build_part(configs, out, settings, Part(1, 3), progress=False)["built"]
    assert build_shards(configs, out, settings, progress=False) == manifest


def run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "shards.build", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_parts_at_once_in_two_processes_then_the_merge(corpus_dir, tmp_path):
    src = sources_of(corpus_dir)
    args = [f"--source={n}={src[n]}" for n in ("breast", "fetal", "thyroid")]
    args += ["--size=48", "--samples-per-shard=5", "--workers=1", "--quiet"]
    ref, out = tmp_path / "ref", tmp_path / "parts"
    procs = [run_cli(*args, f"--out={out}", f"--part={i}/2") for i in range(2)]
    procs.append(run_cli(*args, f"--out={ref}"))  # the one-process build, alongside
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert "part 0/2:" in outputs[0] and "the same command without --part merges them" in outputs[1]
    merge = subprocess.run(
        [sys.executable, "-m", "shards.build", *args, f"--out={out}"], cwd=REPO, capture_output=True, text=True
    )
    assert merge.returncode == 0, merge.stderr
    assert tree_bytes(out) == tree_bytes(ref)


def test_a_stopped_part_resumes_after_its_last_chunk(configs, one_process, tmp_path, monkeypatch):
    out, settings = tmp_path / "shards", BuildSettings(**SETTINGS)
    monkeypatch.setattr(parts_mod, "CHUNK_ITEMS", 4)
    real_write, calls = parts_mod._write_chunk, {"n": 0}

    def dying_write(folder, chunk):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # stopped while writing its third chunk
        real_write(folder, chunk)

    monkeypatch.setattr(parts_mod, "_write_chunk", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build_part(configs, out, settings, Part(0, 2), progress=False)
    folder = out / SPOOL / "part-0-of-2"
    kept = {p.name: p.stat().st_ino for p in folder.glob("chunk-*.pkl")}
    assert len(kept) == 2 and not (folder / "done.json").exists()
    with pytest.raises(UserError, match=r"build part\(s\) 0/2, 1/2 not finished; run them \(--part I/2\) first"):
        build_shards(configs, out, settings, progress=False)
    monkeypatch.setattr(parts_mod, "_write_chunk", real_write)
    summary = build_part(configs, out, settings, Part(0, 2), progress=False)
    assert summary["extracted"] == summary["inputs"] - 8  # two chunks of 4 were not redone
    assert all(p.stat().st_ino == ino for p in folder.glob("chunk-*.pkl") if (ino := kept.get(p.name)))
    build_part(configs, out, settings, Part(1, 2), progress=False)
    build_shards(configs, out, settings, progress=False)
    assert tree_bytes(out) == tree_bytes(one_process)


def test_a_signal_stops_a_part_after_the_current_input_its_work_spooled(configs, one_process, tmp_path, monkeypatch):
    out, settings = tmp_path / "shards", BuildSettings(**SETTINGS)
    monkeypatch.setattr(parts_mod, "CHUNK_ITEMS", 4)
    real_write = parts_mod._write_chunk

    def write_then_signal(folder, chunk):
        real_write(folder, chunk)
        if len(list(folder.glob("chunk-*.pkl"))) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as SLURM's preemption sends it

    monkeypatch.setattr(parts_mod, "_write_chunk", write_then_signal)
    with StopRequest(), pytest.raises(Stopped, match=r"^SIGTERM received; 4 of \d+ inputs of part 0/2 are spooled in "):
        build_part(configs, out, settings, Part(0, 2), progress=False)
    folder = out / SPOOL / "part-0-of-2"
    assert [p.name for p in folder.glob("chunk-*.pkl")] and not (folder / "done.json").exists()
    monkeypatch.setattr(parts_mod, "_write_chunk", real_write)
    summary = build_part(configs, out, settings, Part(0, 2), progress=False)
    assert summary["extracted"] == summary["inputs"] - 4  # the spooled inputs are not read again
    build_part(configs, out, settings, Part(1, 2), progress=False)
    build_shards(configs, out, settings, progress=False)
    assert tree_bytes(out) == tree_bytes(one_process)


def test_parts_of_other_settings_or_another_split_are_refused(configs, tmp_path):
    out = tmp_path / "shards"
    build_part(configs, out, BuildSettings(**SETTINGS), Part(0, 2), progress=False)
    with pytest.raises(UserError, match=r"holds parts of a different build \(settings differ \(size: 48 -> 64\)\)"):
        build_part(configs, out, BuildSettings(**{**SETTINGS, "size": 64}), Part(1, 2), progress=False)
    with pytest.raises(UserError, match=r"^--part 1/3: .* holds a build in 2 parts; use --part I/2"):
        build_part(configs, out, BuildSettings(**SETTINGS), Part(1, 3), progress=False)
    with pytest.raises(UserError, match=r"holds parts of a different build \(sources differ"):
        build_shards(configs[:2], out, BuildSettings(**SETTINGS), progress=False)
    assert part_refusal(configs[0].path, out, "2/2") == (
        "error: --part: expected I/N with 0 <= I < N (the I-th of N parts, from 0), got '2/2'"
    )


def test_a_file_modified_between_the_parts_and_the_merge_is_refused(corpus_dir, tmp_path):
    """Same name and size, new pixels: the merge would replay the spooled old image."""
    import shutil

    src = tmp_path / "breast"
    shutil.copytree(sources_of(corpus_dir)["breast"], src)  # copytree keeps modification times
    configs = [SourceConfig("breast", str(src))]
    out = tmp_path / "shards"
    for i in range(2):
        build_part(configs, out, BuildSettings(**SETTINGS), Part(i, 2), progress=False)
    edited = sorted(src.rglob("*.png"))[0]
    data = bytearray(edited.read_bytes())
    data[-20] ^= 0xFF
    edited.write_bytes(bytes(data))
    message = r"holds parts of a build whose files were modified since \(source breast: modification times differ"
    with pytest.raises(UserError, match=message):
        build_shards(configs, out, BuildSettings(**SETTINGS), progress=False)
    assert not (out / "manifest.json").exists()


HOLD = (
    "import sys, time; from pathlib import Path; from sonodistill.lock import exclusive\n"
    "with exclusive(Path(sys.argv[1]), 'x'):\n    print('held', flush=True); time.sleep(60)"
)


def test_a_part_beside_the_merge_and_the_merge_beside_a_starting_part_are_refused(configs, tmp_path):
    """A merge submitted without --dependency, or a part rerun while the merge runs: neither may start
    beside the other (the part's spool would be left next to the finished shards, unused)."""
    out = tmp_path / "shards"
    out.mkdir()
    for lock, run, message in (
        (
            out / ".lock",  # held by a plain build
            lambda: build_part(configs, out, BuildSettings(**SETTINGS), Part(0, 2), progress=False),
            f"--out {out} --part 0/2: a build without --part (pid {{pid}}) is writing to it; "
            "parts run before that merge, not beside it",
        ),
        (
            out / SPOOL / ".lock-part-1-of-2",  # held by a part that has not written build.json yet
            lambda: build_shards(configs, out, BuildSettings(**SETTINGS), progress=False),
            f"--out {out}: build part(s) 1/2 (pid {{pid}}) running; merge once every part is done",
        ),
    ):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "held"
            with pytest.raises(UserError) as exc:
                run()
            assert str(exc.value) == message.format(pid=proc.pid)
        finally:
            proc.kill()
            proc.wait()
    assert sorted(p.name for p in out.iterdir()) == [".lock", SPOOL]  # the holders' files only
    assert [p.name for p in (out / SPOOL).iterdir()] == [".lock-part-1-of-2"]


def part_refusal(source: str, out: Path, part: str) -> str:
    """The one line ``shards.build --part PART`` ends with (exit 2)."""
    cmd = [sys.executable, "-m", "shards.build", f"--source=a={source}", f"--out={out}", f"--part={part}"]
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    (line,) = bad.stderr.strip().splitlines()
    assert bad.returncode == 2, bad.stderr
    return line


def test_an_empty_part_is_refused_not_a_whole_build(configs, tmp_path):
    assert part_refusal(configs[0].path, tmp_path / "o", "") == (
        "error: --part: expected I/N with 0 <= I < N (the I-th of N parts, from 0), got ''"
    )
    assert not (tmp_path / "o").exists()


def _parts(configs, out: Path, count: int = 2) -> None:
    for i in range(count):
        build_part(configs, out, BuildSettings(**SETTINGS), Part(i, count), progress=False)


@pytest.mark.parametrize("fault", ["disk full", "killed"])
def test_a_merge_stopped_at_its_manifest_is_finished_by_the_next_run(
    configs, one_process, tmp_path, monkeypatch, fault
):
    """Disk full on the manifest (rejects renamed, no manifest: the rerun must keep the rejects, not
    zero-fill them) or killed right after it (the rerun finds it built and clears the spool and journal)."""
    import errno

    import shards.build as build_mod

    out = tmp_path / "shards"
    _parts(configs, out)
    real = build_mod.write_json

    def failing(path, obj):
        if fault == "killed":
            real(path, obj)
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(build_mod, "write_json", failing)
    with pytest.raises((OSError, KeyboardInterrupt)):
        build_shards(configs, out, BuildSettings(**SETTINGS), progress=False)
    assert (out / SPOOL).is_dir() and (out / "rejects.jsonl").is_file()
    monkeypatch.setattr(build_mod, "write_json", real)
    build_shards(configs, out, BuildSettings(**SETTINGS), progress=False)
    assert tree_bytes(out) == tree_bytes(one_process)  # no spool, journal or lock left; rejects intact


def test_a_part_checks_the_folder_before_doing_its_work(configs, tmp_path, monkeypatch):
    import shards.build as build_mod

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"not empty and not a shard build \(found notes.txt\); use an empty folder"):
        build_part(configs, notes, BuildSettings(**SETTINGS), Part(0, 2), progress=False)
    assert [p.name for p in notes.iterdir()] == ["notes.txt"]

    out, real = tmp_path / "shards", build_mod._write_shard
    monkeypatch.setattr(build_mod, "_write_shard", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # an unfinished one-process build at size 48
        build_shards(configs, out, BuildSettings(**SETTINGS), progress=False)
    monkeypatch.setattr(build_mod, "_write_shard", real)
    with pytest.raises(UserError, match=r"holds a different, unfinished build \(settings differ \(size: 48 -> 64\)\)"):
        build_part(configs, out, BuildSettings(**{**SETTINGS, "size": 64}), Part(0, 2), progress=False)
    assert not (out / SPOOL).exists()


def test_a_damaged_spool_is_named_and_running_the_part_again_redoes_only_that(
    configs, one_process, tmp_path, monkeypatch
):
    monkeypatch.setattr(parts_mod, "CHUNK_ITEMS", 3)
    out = tmp_path / "shards"
    _parts(configs, out)
    folder = out / SPOOL / "part-1-of-2"
    chunks = sorted(folder.glob("chunk-*.pkl"))
    assert len(chunks) >= 4
    cut, gone = chunks[0], chunks[2]  # a chunk cut short, a chunk in the middle deleted
    cut.write_bytes(cut.read_bytes()[:100])
    gone.unlink()
    damaged = rf"the spool of build part 1/2 is damaged \({cut.name} missing or cut short\); run --part 1/2 again"
    with pytest.raises(UserError, match=damaged):
        build_shards(configs, out, BuildSettings(**SETTINGS), progress=False)
    summary = build_part(configs, out, BuildSettings(**SETTINGS), Part(1, 2), progress=False)
    assert summary["extracted"] == 6  # the two chunks of 3, not the part's other inputs
    build_shards(configs, out, BuildSettings(**SETTINGS), progress=False)
    assert tree_bytes(out) == tree_bytes(one_process)


def test_an_unreadable_chunk_or_spool_record_is_one_line(configs, tmp_path):
    out = tmp_path / "shards"
    _parts(configs, out)
    chunk = sorted((out / SPOOL / "part-0-of-2").glob("chunk-*.pkl"))[-1]
    chunk.write_bytes(b"\0" * chunk.stat().st_size)  # right size, garbage inside
    with pytest.raises(UserError, match=rf"{chunk.name}: unreadable \(\w+\); delete it, run --part 0/2 again"):
        build_shards(configs, out, BuildSettings(**SETTINGS), progress=False)
    (out / SPOOL / "build.json").write_text("{")
    with pytest.raises(UserError, match=r"build.json: unreadable record of the parts' build; delete .*\.parts to run"):
        build_part(configs, out, BuildSettings(**SETTINGS), Part(0, 2), progress=False)


def test_a_source_spelled_another_way_is_the_same_build(corpus_dir, tmp_path, monkeypatch):
    """``DIR``, ``DIR/`` and a relative path from elsewhere name the same files."""
    src = sources_of(corpus_dir)["thyroid"]
    out = tmp_path / "shards"
    build_part([SourceConfig("thyroid", src)], out, BuildSettings(**SETTINGS), Part(0, 2), progress=False)
    build_part([SourceConfig("thyroid", src + "/")], out, BuildSettings(**SETTINGS), Part(1, 2), progress=False)
    monkeypatch.chdir(Path(src).parent)
    build_shards([SourceConfig("thyroid", "./thyroid")], out, BuildSettings(**SETTINGS), progress=False)
    one = tmp_path / "one"
    build_shards([SourceConfig("thyroid", "./thyroid")], one, BuildSettings(**SETTINGS), progress=False)
    assert tree_bytes(out) == tree_bytes(one)  # the manifest records the merge's spelling


def test_a_source_with_a_file_added_is_named(corpus_dir, tmp_path):
    import shutil

    src = tmp_path / "thyroid"
    shutil.copytree(sources_of(corpus_dir)["thyroid"], src)
    out = tmp_path / "shards"
    build_part([SourceConfig("thyroid", str(src))], out, BuildSettings(**SETTINGS), Part(0, 2), progress=False)
    n = len(open_source("thyroid", str(src)))
    shutil.copy(sorted(src.rglob("*.png"))[0], src / "added.png")
    with pytest.raises(UserError, match=rf"source 'thyroid' has {n + 1} input files, the recorded build {n}"):
        build_part([SourceConfig("thyroid", str(src))], out, BuildSettings(**SETTINGS), Part(1, 2), progress=False)


def test_out_set_to_a_source_folder_is_named(corpus_dir, tmp_path):
    src = sources_of(corpus_dir)["thyroid"]
    with pytest.raises(UserError, match=r"^--source thyroid=.*: is the --out folder; write the shards elsewhere$"):
        build_shards([SourceConfig("thyroid", src)], src, BuildSettings(**SETTINGS), progress=False)
