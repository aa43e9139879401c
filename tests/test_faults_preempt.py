"""A stop signal to the whole process group (SLURM preemption, scancel, Kubernetes, Ctrl-C): every
rank and every loader worker receives it. Pretraining must checkpoint and exit 75, not crash in a
worker (issue 16); the same command then finishes the run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dist.tiny_pretrain import REPO, TINY_YAML, tiny_overrides

from pretrain.checkpoint import list_checkpoints
from sonodistill.jsonl import read_jsonl
from sonodistill.stop import EXIT_PREEMPTED

RUN = dict(train__max_steps=10, train__log_every=1, train__save_every=100, num_workers=2, train__batch_size=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cmd: list[str], ranks: int, logs: Path) -> list[subprocess.Popen]:
    """``ranks`` processes of one gloo group in one new process group, as srun starts SLURM tasks."""
    port, procs = _free_port(), []
    for rank in range(ranks):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(ranks),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(ranks),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        group = {"process_group": 0 if rank == 0 else procs[0].pid}  # a new group of their own
        err = (logs / f"rank{rank}.txt").open("a")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, **group))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 300) -> list[int]:
    deadline = time.time() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:  # a hung run must not outlive the test
                p.kill()


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_group_checkpoints_on_two_ranks_and_the_rerun_finishes(
    shard_dir, tiny_teacher_dir, tmp_path, sig
):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "pretrain" / "run.py"), "--config", str(TINY_YAML)]
    cmd += tiny_overrides(shard_dir, tiny_teacher_dir, out, **RUN)
    procs = _launch(cmd, 2, tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and all(p.poll() is None for p in procs):
        steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
        if steps and steps[-1] >= 2:
            # workers have started by now: the signal reaches every rank and every loader worker
            assert len(subprocess.run(["pgrep", "-g", str(procs[0].pid)], capture_output=True).stdout.split()) > 2
            os.killpg(procs[0].pid, sig)
            break
        time.sleep(0.05)
    codes = _wait(procs)
    logs = "".join((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], logs[-3000:]
    assert "killed by signal" not in logs and "Traceback" not in logs
    ckpts = list_checkpoints(out)
    assert len(ckpts) == 1 and 2 <= ckpts[0][0] < 10, ckpts
    assert f"stopped by {signal.Signals(sig).name} after step {ckpts[0][0]}" in logs
    # the same command again continues from the checkpoint and finishes
    again = _launch(cmd, 2, tmp_path)
    assert _wait(again) == [0, 0], (tmp_path / "rank0.txt").read_text()[-3000:]
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    assert steps == list(range(1, 11))  # no step lost, none repeated


class _Pids(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, i: int):
        time.sleep(0.002)
        return torch.tensor(os.getpid())


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_loader_workers_outlive_a_signal_from_outside_and_end_with_their_loader():
    from downstream.loaders import make_loader

    dl = make_loader(_Pids(), 2, train=False, workers=2)
    it = iter(dl)
    pids = {int(next(it)[0]) for _ in range(8)}
    assert len(pids) == 2 and os.getpid() not in pids
    for pid in pids:  # as SLURM or a terminal sends them: not from the worker's parent
        for sig in ("TERM", "INT", "USR1"):
            subprocess.run(["kill", f"-{sig}", str(pid)], check=True)
    time.sleep(0.3)
    assert all(_alive(p) for p in pids)
    assert len([next(it) for _ in range(20)]) == 20  # still serving batches
    del it, dl  # the loader's own shutdown still ends them (it signals them as their parent)
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


@pytest.mark.slow
def test_a_signal_to_a_sweep_drops_only_the_running_cell(busi_dir, tmp_path):
    """Group SIGTERM while a fine-tuning cell trains (loader workers running): exit 75 with one
    ``stopped:`` line; the finished cell stays in results.jsonl and the rerun only runs the rest."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "downstream.sweep", f"busi={busi_dir}", f"out={out}", "tasks=[busi-cls]"]
    cmd += ["encoders=[B=rand:resnet18]", "modes=[finetune]", "fractions=[0.5,1.0]", "seeds=[0]"]
    cmd += ["run.image_size=32", "run.num_workers=1", "run.train.epochs=12", "run.train.batch_size=8"]
    cmd += ["run.train.save_checkpoint=false", "run.edge.enabled=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, process_group=0)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(read_jsonl(results)):
        time.sleep(0.1)
    time.sleep(1)  # into the second cell's training
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    last = [line for line in err.splitlines() if line.startswith(("stopped:", "error:"))]
    assert len(last) == 1 and "SIGTERM received" in last[0] and "1 of 2 cells finished and kept" in last[0], err[-2000:]
    assert "Traceback" not in err and len(list(read_jsonl(results))) == 1
    again = subprocess.run([*cmd[:-2], "run.train.save_checkpoint=false", "run.edge.enabled=false"], env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    keys = [r["key"] for r in read_jsonl(results)]
    assert len(keys) == 2 and len(set(keys)) == 2


@pytest.mark.slow
def test_a_signal_to_a_kd_run_keeps_its_finished_stages(busi_dir, tmp_path):
    """Group SIGTERM while the scratch student trains, after the teacher finished: exit 75 with one
    ``stopped:`` line naming the stage; the teacher stays, nothing of the stopped stage is kept, and
    the rerun reuses the teacher and trains the students."""
    out = tmp_path / "kd"
    cmd = [sys.executable, "-m", "downstream.kd", "train", "--recipe", "vit_mobilenet", "--data", str(busi_dir)]
    cmd += ["--out", str(out), "image_size=32", "num_workers=1", "efficiency.runs=0"]
    cmd += ["teacher.vit_kwargs={depth: 1, embed_dim: 32, num_heads: 2}", "teacher.head_hidden=16"]
    cmd += ["teacher.convnext_kwargs={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}", "teacher.train.epochs=1"]
    cmd += ["teacher.train.batch_size=16", "student.train.batch_size=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "student.train.epochs=200"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
        process_group=0,
    )  # fmt: skip
    teacher = out / "teacher" / "model.safetensors"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not teacher.exists():
        time.sleep(0.1)
    time.sleep(2)  # into the scratch student's training
    assert proc.poll() is None and teacher.exists(), proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    last = [line for line in err.splitlines() if line.startswith(("stopped:", "error:"))]
    assert len(last) == 1 and "SIGTERM received; scratch stopped in epoch" in last[0], err[-2000:]
    assert "Traceback" not in err and teacher.is_file() and not (out / "scratch" / "model.safetensors").exists()
    kept = teacher.read_bytes()
    again = subprocess.run([*cmd, "student.train.epochs=1"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing the finished stage" in again.stderr and teacher.read_bytes() == kept
    assert (out / "distilled" / "model.safetensors").is_file()
