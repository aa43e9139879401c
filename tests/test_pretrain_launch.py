"""launch/: accelerate and DeepSpeed configs parse, and the SLURM script requeues a preempted run.

SLURM itself is not available here, so `srun` and `scontrol` are stand-ins on PATH: srun runs the
one task in place (recording its pid, as slurmstepd would know it) and scontrol logs its calls.
The test then plays SLURM's part: USR1 to the rank (``--signal=USR1@300``), TERM to the batch script.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dist.tiny_pretrain import REPO, TINY_YAML, tiny_overrides

from pretrain.checkpoint import list_checkpoints
from sonodistill.jsonl import read_jsonl

LAUNCH = REPO / "launch"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "name", ["cpu", "single_gpu", "multi_gpu", "multi_node", "deepspeed_zero2", "deepspeed_zero2_cpu"]
)
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = LAUNCH / "accelerate" / f"{name}.yaml"
    cfg = load_config_from_file(str(path))
    raw = yaml.safe_load(path.read_text())
    assert str(cfg.distributed_type).split(".")[-1] == raw["distributed_type"]
    assert cfg.num_processes == raw["num_processes"]
    if "deepspeed" in name:
        ds_file = REPO / cfg.deepspeed_config["deepspeed_config_file"]
        ds = json.loads(ds_file.read_text())
        assert ds["zero_optimization"]["stage"] == 2
        # filled from the pretraining config by the trainer / accelerate
        assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == "auto"
    if name == "multi_node":
        assert cfg.num_machines == 2 and cfg.num_processes == 16


def _fake_slurm(bindir: Path) -> None:
    bindir.mkdir()
    (bindir / "srun").write_text(
        '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
        "export SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_LOCALID=0 SLURM_NTASKS_PER_NODE=1\n"
        'echo $$ > "$FAKE_SLURM_DIR/task.pid"\nexec "$@"\n'
    )
    (bindir / "scontrol").write_text(
        '#!/bin/bash\necho "$*" >> "$FAKE_SLURM_DIR/scontrol.log"\n[ "$1" = show ] && echo localhost\nexit 0\n'
    )
    for f in ("srun", "scontrol"):
        (bindir / f).chmod((bindir / f).stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow
def test_sbatch_checkpoints_and_requeues_on_preemption(shard_dir, tiny_teacher_dir, tmp_path):
    _fake_slurm(tmp_path / "bin")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE"))}
    env.update(
        PATH=f"{tmp_path / 'bin'}:{env['PATH']}",
        FAKE_SLURM_DIR=str(tmp_path),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="node001",
        SLURM_SUBMIT_DIR=str(REPO),
        PYTHON=sys.executable,
        MASTER_PORT=str(_free_port()),
    )
    cmd = [
        "bash",
        str(LAUNCH / "slurm_pretrain.sbatch"),
        "--config",
        str(TINY_YAML),
        *tiny_overrides(shard_dir, tiny_teacher_dir, out, train__max_steps=12, train__log_every=1),
    ]
    with (tmp_path / "job1.log").open("w") as log:
        job = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 240
            while time.time() < deadline and job.poll() is None:
                steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
                if steps and steps[-1] >= 2:
                    os.kill(int((tmp_path / "task.pid").read_text()), signal.SIGUSR1)  # SLURM -> every rank
                    os.kill(job.pid, signal.SIGTERM)  # preemption also reaches the batch script
                    break
                time.sleep(0.05)
            rc = job.wait(timeout=240)
        finally:
            if job.poll() is None:  # a failed run must not outlive the test
                if (tmp_path / "task.pid").is_file():
                    os.kill(int((tmp_path / "task.pid").read_text()), signal.SIGKILL)
                job.kill()
    text = (tmp_path / "job1.log").read_text()
    assert rc == 0, text[-3000:]
    assert "SIGTERM received, waiting for pretrain/run.py to keep its work" in text and "requeueing job 4242" in text
    assert "requeue 4242" in (tmp_path / "scontrol.log").read_text()
    ckpts = list_checkpoints(out)
    assert len(ckpts) == 1 and 2 <= ckpts[0][0] < 12

    # The requeued job: same command, resumes from the checkpoint and finishes without requeueing.
    (tmp_path / "scontrol.log").unlink()
    job2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert job2.returncode == 0, job2.stdout[-3000:] + job2.stderr[-3000:]
    assert "requeue" not in (tmp_path / "scontrol.log").read_text()
    assert list_checkpoints(out)[-1][0] == 12
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, 13))


@pytest.mark.slow
def test_a_run_compiled_by_accelerate_saves_plain_keys_that_export(shard_dir, tiny_teacher_dir, tmp_path):
    """``accelerate launch --dynamo_backend`` wraps the student in torch.compile's OptimizedModule,
    whose state_dict prefixes every key with ``_orig_mod.``: the saved student must not carry it."""
    from safetensors.torch import load_file

    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    out = tmp_path / "run"
    run = tiny_overrides(shard_dir, tiny_teacher_dir, out, train__max_steps=2, train__save_every=2)
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--config_file", str(LAUNCH / "accelerate" / "cpu.yaml")]
    cmd += ["--dynamo_backend", "eager", str(REPO / "pretrain" / "run.py"), "--config", str(TINY_YAML), *run]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    keys = load_file(str(out / "checkpoints" / "step_00000002" / "student.safetensors")).keys()
    assert keys and not any(k.startswith("_orig_mod.") for k in keys)
    cmd = [sys.executable, "-m", "pretrain.export", "--checkpoint", str(out), "--out", str(tmp_path / "export")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "export" / "model.safetensors").is_file()
