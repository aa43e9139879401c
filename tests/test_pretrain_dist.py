"""Two CPU ranks (torchrun, gloo): one model, disjoint data; and the launch that must refuse."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist.tiny_pretrain import REPO, TINY_YAML, tiny_overrides

from pretrain.checkpoint import list_checkpoints, read_meta

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
def test_two_ranks_train_one_model_on_disjoint_samples(shard_dir, tiny_teacher_dir, tmp_path):
    out = tmp_path / "ddp"
    steps, batch = 5, 4
    num_samples = json.loads((shard_dir / "manifest.json").read_text())["num_samples"]
    assert steps * batch * 2 <= num_samples  # within one epoch: no sample may repeat
    cmd = [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "dist" / "pretrain_worker.py"),
        str(shard_dir),
        str(tiny_teacher_dir),
        str(out),
        f"train.max_steps={steps}",
        f"train.batch_size={batch}",
        "train.global_batch=8",
        "data.record_keys=true",
        "train.save_every=5",
        "train.log_every=2",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK"))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=420)
    assert proc.returncode == 0, proc.stderr[-4000:]

    p0 = torch.load(out / "params_rank0.pt")
    p1 = torch.load(out / "params_rank1.pt")
    assert p0.keys() == p1.keys()
    assert all(torch.equal(p0[k], p1[k]) for k in p0), "ranks diverged"
    meta = read_meta(list_checkpoints(out)[-1][1])
    assert meta["world_size"] == 2 and meta["distributed_type"] == "DistributedType.MULTI_CPU"
    assert meta["accumulation"] == 1 and meta["global_batch"] == 8
    assert all((list_checkpoints(out)[-1][1] / f"loader_rank{r}.json").is_file() for r in (0, 1))

    keys = {}
    for r in (0, 1):
        lines = [json.loads(ln) for ln in (out / "keys" / f"rank{r}.jsonl").read_text().splitlines()]
        assert [ln["step"] for ln in lines] == list(range(1, steps + 1))
        keys[r] = [k for ln in lines for k in ln["keys"]]
        assert len(keys[r]) == steps * batch and len(set(keys[r])) == len(keys[r])
    assert not set(keys[0]) & set(keys[1]), "a sample was trained on by both ranks"

    # rank 1's position lost: every rank restarts one reshuffled stream (said once, from rank 0),
    # not rank 0 its old stream and rank 1 a new one, which would overlap
    (list_checkpoints(out)[-1][1] / "loader_rank1.json").write_text("{")
    more = [c if not c.startswith("train.max_steps=") else f"train.max_steps={steps + 3}" for c in cmd]
    proc = subprocess.run(more, capture_output=True, text=True, env=env, timeout=420)
    assert proc.returncode == 0, proc.stderr[-4000:]
    said = "resume: loader_rank1.json of the checkpoint missing or unreadable: data order restarts on every rank"
    assert said in proc.stderr, proc.stderr[-4000:]
    later = [
        {k for ln in map(json.loads, (out / "keys" / f"rank{r}.jsonl").read_text().splitlines()) if ln["step"] > steps
         for k in ln["keys"]}
        for r in (0, 1)
    ]  # fmt: skip
    assert len(later[0]) == len(later[1]) == 3 * batch and not later[0] & later[1]


@pytest.mark.dist
def test_multi_gpu_launch_on_cpu_host_refuses(shard_dir, tiny_teacher_dir, tmp_path):
    """`accelerate launch --multi_gpu` where no GPU exists: 2 processes that each think they are alone."""
    out = tmp_path / "refused"
    cmd = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_machines",
        "1",
        str(REPO / "pretrain" / "run.py"),
        "--config",
        str(TINY_YAML),
        *tiny_overrides(shard_dir, tiny_teacher_dir, out),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    # Each process refuses with one line (the launcher may stop the second before it prints).
    assert "error: launch: the launcher started WORLD_SIZE=2 processes" in proc.stderr, proc.stderr[-3000:]
    assert "but accelerate sees 1 (DistributedType.NO)" in proc.stderr
    assert "distill:" not in proc.stderr  # no training step started
    assert not out.exists() or not list_checkpoints(out)
