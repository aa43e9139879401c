"""DeepSpeed ZeRO-2 through accelerate, one CPU process: checkpoints in DeepSpeed's layout, exact resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist.tiny_pretrain import REPO, TINY_YAML, tiny_overrides
from safetensors.torch import load_file

from pretrain.checkpoint import list_checkpoints, read_meta
from sonodistill.jsonl import read_jsonl

ACCELERATE = Path(sys.executable).parent / "accelerate"
DS_CONFIG = REPO / "launch" / "accelerate" / "deepspeed_zero2_cpu.yaml"


def _launch(*overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env["DS_ACCELERATOR"] = "cpu"
    cmd = [
        str(ACCELERATE),
        "launch",
        "--config_file",
        str(DS_CONFIG),
        str(REPO / "pretrain" / "run.py"),
        "--config",
        str(TINY_YAML),
        *overrides,
    ]
    # cwd = repo: the accelerate config names its DeepSpeed JSON relative to the repository root
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_zero2_save_and_exact_resume(shard_dir, tiny_teacher_dir, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run = dict(train__max_steps=6, train__save_every=2, train__keep_last=3, train__log_every=2)
    proc = _launch(*tiny_overrides(shard_dir, tiny_teacher_dir, full, **run))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [s for s, _ in list_checkpoints(full)] == [2, 4, 6]
    ckpt4 = full / "checkpoints" / "step_00000004"
    meta = read_meta(ckpt4)
    assert meta["distributed_type"] == "DistributedType.DEEPSPEED" and meta["accumulation"] == 2
    assert (ckpt4 / "pytorch_model").is_dir() and (ckpt4 / "latest").is_file()  # DeepSpeed's own layout

    # Resume the saved step-4 state in a fresh folder: steps 5-6 must reproduce the full run exactly.
    proc = _launch(*tiny_overrides(shard_dir, tiny_teacher_dir, resumed, resume=ckpt4, **run))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [s for s, _ in list_checkpoints(resumed)] == [6]
    assert [r["step"] for r in read_jsonl(resumed / "metrics.jsonl")] == [5, 6]
    a = load_file(str(full / "checkpoints" / "step_00000006" / "student.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_00000006" / "student.safetensors"))
    first = load_file(str(full / "checkpoints" / "step_00000002" / "student.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], first[k]) for k in a)  # and the weights did train
    la = {r["step"]: r["loss"] for r in read_jsonl(full / "metrics.jsonl")}
    lb = {r["step"]: r["loss"] for r in read_jsonl(resumed / "metrics.jsonl")}
    assert lb == {5: la[5], 6: la[6]}


@pytest.mark.slow
def test_zero2_in_bf16_autocasts_and_keeps_float32_weights(shard_dir, tiny_teacher_dir, tmp_path):
    """DeepSpeed's own bf16 mode would cast the student's weights but not BatchNorm's running
    statistics (the first BN fails) and save bf16-rounded weights; the run autocasts instead."""
    run = dict(train__max_steps=2, train__save_every=2, train__log_every=1)
    losses = {}
    for precision in ("bf16", "no"):
        out = tmp_path / precision
        proc = _launch(*tiny_overrides(shard_dir, tiny_teacher_dir, out, mixed_precision=precision, **run))
        assert proc.returncode == 0, proc.stderr[-4000:]
        weights = load_file(str(out / "checkpoints" / "step_00000002" / "student.safetensors"))
        floats = [v for v in weights.values() if v.is_floating_point()]
        assert floats and all(v.dtype == torch.float32 for v in floats)
        losses[precision] = [r["loss"] for r in read_jsonl(out / "metrics.jsonl")]
    # the same data and weights: bf16 autocast moves the loss a little, it does not leave it as is
    assert losses["bf16"] != losses["no"]
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.05)
