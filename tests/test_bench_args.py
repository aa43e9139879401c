"""Bench scripts end bad numbers with one ``error:`` line (exit 2) before any timing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench/edge.py", "--calib", "0"], "error: --calib 0: expected at least 1"),
        (["bench/edge.py", "--size", "16"], "error: --size 16: expected at least 32"),
        (["bench/optimizer.py", "--steps", "0"], "error: --steps 0: expected at least 1"),
        (["bench/optimizer.py", "--model", "nosuch"], "error: --model nosuch: not a timm model (see timm.list_models"),
        (["bench/probe.py", "--size", "0"], "error: --size 0: expected at least 32"),
        (["bench/augment.py", "--batch", "0"], "error: --batch 0: expected at least 1"),
        (["bench/loader.py", "--rounds", "0"], "error: --rounds 0: expected at least 1"),
        (["bench/pretrain_step.py", "--rounds", "0"], "error: --rounds 0: expected at least 1"),
    ],
)
def test_bad_numbers_are_one_line(args, message, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert done.stdout == ""


def test_edge_refuses_a_used_out_before_timing(tmp_path):
    (tmp_path / "mine.onnx").write_bytes(b"x")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "bench/edge.py", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: --out {tmp_path}: not empty; give a new folder for the ONNX files"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.onnx"]
