"""The corpus catalogue (--corpus corpus.yaml): validation, per-source options and counts, and resume
of a build whose clips span shards."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shards.build as build_mod
from shards.build import BuildSettings, build_shards
from shards.catalogue import load_catalogue
from shards.inspect import reread_frame
from shards.synth.media import clip_frames, write_dicom, write_video
from sonodistill.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cat")
    write_video(root / "clips", n=2, seed=5, frames=18)
    write_dicom(root / "dicom", n=6, seed=5)
    (root / "imgs" / "masks").mkdir(parents=True)
    for i, f in enumerate(clip_frames(np.random.default_rng(9), 5, step=40)):
        Image.fromarray(f).save(root / "imgs" / f"frame_{i}.png")
        Image.fromarray((f > 128).astype(np.uint8) * 255).save(root / "imgs" / "masks" / f"frame_{i}_mask.png")
    return root


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shards.build", *args], capture_output=True, text=True, timeout=300)


def test_catalogue_errors_name_the_source(tmp_path, corpus):
    cases = [
        ("sources:\n  - {name: a, path: x, fram: all}\n", "source 'a': unknown key 'fram'; valid keys: name, path"),
        ("sources:\n  - {name: a, path: x, frames: {fps: 0}}\n", "source 'a': frames: fps expects a positive"),
        ("sources:\n  - {name: a, path: x, volume: cube}\n", "source 'a': 'volume' expects one of"),
        ("sources:\n  - {name: a, path: x, volume_axis: true}\n", "'volume_axis' expects one of 0, 1, 2, got True"),
        ("sources:\n  - {name: a, path: x, volume_axis: 1.0}\n", "'volume_axis' expects one of 0, 1, 2, got 1.0"),
        ("sources:\n  - {path: x}\n", "source #1: 'name' is required"),
        ("sources:\n  - {name: a, path: x}\n  - {name: a, path: y}\n", "given twice"),
        ("srcs: []\n", "expected a mapping with a non-empty 'sources' list"),
        # several bad values: globs are checked first, then choices, integers, strings, frames
        ("sources:\n  - {name: a, path: x, frames: 3, anatomy: 1, max_images: 0, include: 4}\n", "'include' expects"),
        ("sources:\n  - {name: a, path: x, frames: 3, anatomy: 1, max_images: 0}\n", "'max_images' expects a"),
        ("sources:\n  - {name: a, path: x, frames: 3, anatomy: 1}\n", "'anatomy' expects a string, got 1"),
        # PyYAML alone keeps the last of two equal keys: a second path, a second list, in silence
        ("sources:\n  - name: a\n    path: x\n    path: y\n", "key 'path' given twice (lines 3 and 4)"),
        ("sources:\n  - {name: a, path: x}\nsources:\n  - {name: b, path: y}\n", "key 'sources' given twice"),
    ]
    for text, msg in cases:
        with pytest.raises(UserError, match=re.escape(msg)):
            load_catalogue(write_yaml(tmp_path / "c.yaml", text))
    (tmp_path / "latin1.yaml").write_bytes(b"# \xe9t\xe9\nsources:\n  - {name: a, path: x}\n")
    with pytest.raises(UserError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset 2\)$"):
        load_catalogue(tmp_path / "latin1.yaml")
    cat = write_yaml(tmp_path / "missing.yaml", "sources:\n  - {name: gone, path: /no/such/folder}\n")
    proc = run_cli("--corpus", str(cat), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --corpus {cat}: source 'gone' (path /no/such/folder): folder does not exist"
    ]
    cat = write_yaml(tmp_path / "excl.yaml", f"sources:\n  - {{name: a, path: {corpus}}}\nexclude: eval/splits.json\n")
    proc = run_cli("--corpus", str(cat), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --corpus {cat}: exclude {tmp_path}/eval/splits.json: {tmp_path}/eval/splits.json is neither a "
        "splits.json nor a folder of images"
    ]


def test_one_file_is_a_source_and_urls_are_refused_with_one_line(tmp_path, corpus, capsys):
    import h5py

    # the template's Stanford thyroid entry: one HDF5 file holding every cine
    with h5py.File(tmp_path / "dataset.hdf5", "w") as f:
        frames = np.stack(clip_frames(np.random.default_rng(2), 4, step=40))
        frames[2] = 0  # a black frame: rejected, and shown on the rejects sheet as the build read it
        f["image"] = frames
        f["label"] = np.zeros((4, 8, 8), np.uint8)
    entry = "{name: thy, path: dataset.hdf5, array_key: image, frames: all}"
    cat = write_yaml(tmp_path / "one.yaml", f"sources:\n  - {entry}\n")
    m = build_shards(load_catalogue(cat), tmp_path / "o", BuildSettings(size=64, workers=1), progress=False)
    assert m["inputs"] == 1 and m["sources"]["thy"] + sum(m["rejected"].values()) == 4
    assert m["per_source"]["thy"]["files"] == 1
    rejects = [json.loads(r) for r in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    black = next(r for r in rejects if r.get("frame") == 2)
    assert np.array_equal(reread_frame(m, black), frames[2])  # with the source's array_key, not the defaults
    out = str(tmp_path / "x")
    bad = [
        (["--source", f"a={corpus}", "--out", "s3://b/s"], "--out s3://b/s: shards are written to a local folder"),
        (["--source", "a=https://h/b", "--out", out], "--source a=https://h/b: a URL; sources are read from local"),
        (["--source", f"a={corpus}", "--out", out, "--near-dup-distance", "300"], "--near-dup-distance 300: expected"),
    ]
    for args, msg in bad:
        with pytest.raises(SystemExit) as exc:
            build_mod.main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {msg}"), err
    assert not Path("s3:").exists() and not (tmp_path / "x").exists()


def test_shipped_template_catalogue_is_valid():
    cfgs = load_catalogue(REPO / "shards" / "catalogues" / "public_ultrasound.yaml")
    assert len(cfgs) >= 20 and len({c.options.anatomy for c in cfgs}) >= 9
    busi = next(c for c in cfgs if c.name == "busi")
    assert busi.options.exclude == ("*_mask*",) and busi.options.frames.spec() == "fps=3,max=30"


def test_options_identity_is_what_builds_stored(tmp_path):
    """manifest.json keeps each source's options (a changed one refuses to resume): the same keys, order
    and JSON values as builds made before the options became one type."""
    text = "sources:\n  - {name: a, path: x, frames: {every: 2}, include: '*.png', anatomy: liver, volume_axis: 2}\n"
    (cfg,) = load_catalogue(write_yaml(tmp_path / "c.yaml", text))
    assert json.dumps(cfg.options.identity()) == json.dumps(
        {
            "frames": "every=2",  # no max given: none
            "max_frames_per_clip": 1000,
            "array_key": None,
            "array_layout": "auto",
            "volume": "sequence",
            "volume_axis": 2,
            "include": ["*.png"],
            "exclude": [],
            "max_images": None,
            "anatomy": "liver",
            "annotations": "inpaint",  # issue 17: a new option joins every build's identity
        }
    )


def test_corpus_build_with_options_and_source_next_to_it(tmp_path, corpus):
    cat = write_yaml(
        tmp_path / "corpus.yaml",
        f"""sources:
  - name: clips
    path: {corpus / "clips"}
    frames: {{every: 3, max: 4}}
    anatomy: thyroid
  - name: dicom
    path: {corpus / "dicom"}
    frames: all
    max_images: 9
  - name: imgs
    path: {corpus / "imgs"}
    exclude: ["masks/*"]
""",
    )
    out = tmp_path / "out"
    proc = run_cli("--corpus", str(cat), "--source", f"extra={corpus / 'imgs'}", "--out", str(out), "--size", "48")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    ps = m["per_source"]
    assert ps["clips"]["files"] == 2 and ps["clips"]["clips"] == 2 and ps["clips"]["frames"] == 8  # 4 per clip
    assert ps["clips"]["anatomy"] == "thyroid"
    assert m["sources"]["dicom"] == 9 and ps["dicom"]["crop"]["dicom_region"] >= 1  # capped at max_images
    assert ps["imgs"]["files"] == 5  # masks excluded
    # the same PNGs again under another name are duplicates; its binary masks are not ultrasound
    assert ps["extra"]["files"] == 10 and ps["extra"]["kept"] == 0
    assert ps["extra"]["rejected"]["duplicate"] >= ps["imgs"]["kept"] >= 3
    assert ps["extra"]["rejected"]["not_ultrasound"] == 5
    assert m["num_samples"] == sum(m["sources"].values()) == sum(m["shard_samples"])
    assert "clips" in proc.stdout and "extra" in proc.stdout


def test_clip_build_resumes_byte_identical(corpus, tmp_path, monkeypatch):
    sources = {"clips": str(corpus / "clips"), "dicom": str(corpus / "dicom")}
    settings = BuildSettings(size=40, samples_per_shard=4, workers=1)
    ref = tmp_path / "ref"
    build_shards(sources, ref, settings, progress=False)
    assert len(json.loads((ref / "manifest.json").read_text())["shards"]) >= 4
    out = tmp_path / "resumed"
    real_write = build_mod._write_shard
    calls = {"n": 0}

    def dying_write(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(build_mod, "_write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build_shards(sources, out, settings, progress=False)
    assert (out / ".rejects-partial.jsonl").exists() and not (out / "manifest.json").exists()
    monkeypatch.setattr(build_mod, "_write_shard", real_write)
    build_shards(sources, out, settings, progress=False)
    for p in sorted(ref.iterdir()):
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    assert sorted(x.name for x in out.iterdir()) == sorted(x.name for x in ref.iterdir())


def test_files_past_max_images_are_listed_as_not_read(corpus, tmp_path):
    """Past a source's cap its files are not read; each is one rejects line, so a user can list the
    recordings that never made it in (they used to leave no trace)."""
    cat = tmp_path / "corpus.yaml"
    cat.write_text(
        f"sources:\n  - name: imgs\n    path: {corpus / 'imgs'}\n    exclude: ['masks/*']\n    max_images: 2\n"
    )
    out = tmp_path / "out"
    proc = run_cli("--corpus", str(cat), "--out", str(out), "--size", "48")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    unread = [r for r in rejects if r["values"] == {"read": False}]
    assert m["sources"]["imgs"] == 2 and unread
    assert all(r["reason"] == "over_max_images" and "frame" not in r for r in unread)
    listed = {p.relative_to(corpus / "imgs").as_posix() for p in (corpus / "imgs").glob("*.png")}
    assert m["per_source"]["imgs"]["files"] + len(unread) == len(listed)
    assert {r["path"] for r in unread} < listed
