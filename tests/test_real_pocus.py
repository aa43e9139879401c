"""Shards from real device recordings: the itk-pocus 0.3.2 sdist's tests/data (Butterfly, Clarius,
Sonosite, Interson, Sonoque, Sonivate: mp4, MOV, .mha, .nrrd, .dcm, .cine, jpg, png). The data is
fetched once by `make` into .cache/ (see the Makefile); the tests never reach the network."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from shards.build import BuildSettings, build_shards


@pytest.fixture(scope="module")
def pocus_build(pocus_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pocus") / "s"
    build_shards(
        {"pocus": str(pocus_dir)}, out, BuildSettings(size=64, samples_per_shard=64, workers=2), progress=False
    )
    return out


def test_every_supported_file_gives_frames_and_rejects_are_counted(pocus_build):
    m = json.loads((pocus_build / "manifest.json").read_text())
    rejects = [json.loads(line) for line in (pocus_build / "rejects.jsonl").read_text().splitlines()]
    import webdataset as wds

    ds = wds.WebDataset([str(pocus_build / s) for s in m["shards"]], shardshuffle=False, empty_check=False)
    kept = Counter(json.loads(s["json"])["path"] for s in ds)
    files = [
        "butterfly-mean-crop.mp4", "butterfly-ocular-phantom.mp4", "butterfly-vsync.mp4",
        "butterfly_axial-lateral-resolution-2020.png", "clarius-ocular-image.png", "clarius-ocular-phantom.mp4",
        "clarius_axial-lateral-resolution-2020.png", "interson-image-annotation.jpg", "interson-image.jpg",
        "interson-phantom.png", "sonivate-anechoic_1-1.nrrd", "sonivate-snr-1.mha", "sonoque-mean-crop.MOV",
        "sonoque_anechoic-3mm-3mm.dcm", "sonoque_axial-lateral-resolution-2020.dcm", "sonosite-anon-eye1-video.mp4",
    ]  # fmt: skip
    assert [f for f in files if kept[f] == 0] == []  # every supported file gave at least one frame
    reasons = Counter(r["reason"] for r in rejects)
    assert reasons == Counter(m["rejected"])
    # the proprietary Interson .cine is counted under its own reason; nothing else is unreadable
    assert [r["path"] for r in rejects if r["reason"] == "unsupported_format"] == ["interson-video.cine"]
    assert not {"unreadable", "truncated", "undecodable", "not_image", "colour", "not_ultrasound"} & set(reasons)
    # the two Butterfly sweeps alternate between the eye phantom and the probe held in air
    air = Counter(r["path"] for r in rejects if r["reason"] == "no_tissue")
    assert set(air) == {"butterfly-mean-crop.mp4", "butterfly-vsync.mp4"} and sum(air.values()) >= 12
    # a still probe gives near-identical consecutive frames: most of the sonosite clip is one frame
    assert kept["sonosite-anon-eye1-video.mp4"] <= 3
    # clarius-ocular-short.mp4 is a cut of clarius-ocular-phantom.mp4: its frames are near duplicates
    assert kept["clarius-ocular-short.mp4"] <= 2 and reasons["near_duplicate"] >= 3
    stats = m["per_source"]["pocus"]
    assert stats["files"] == 19 and stats["clips"] == 8 and stats["kept"] == m["num_samples"]
    # Sonoque's region is the whole screen: single images are cropped by the heuristic, and the frames
    # of a clip by the one scan area found for the clip (issue 17)
    clips = sum(n for p, n in kept.items() if p.endswith((".mp4", ".MOV", ".mha")))
    assert stats["crop"] == {"heuristic": m["num_samples"] - clips, "clip": clips}


def test_rejects_contact_sheet(pocus_build, tmp_path):
    sheet = tmp_path / "rejects.png"
    proc = subprocess.run(
        [sys.executable, "-m", "shards.inspect", str(pocus_build), "--rejects", str(sheet), "--per-reason", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no_tissue" in proc.stdout and sheet.stat().st_size > 20_000
