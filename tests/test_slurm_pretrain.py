"""launch/slurm_pretrain.sbatch on a real SLURM (throw-away, one CPU node): stopped twice, requeued, exact.

The tiny config runs on 2 ranks (srun, gloo) and is interrupted the two ways a cluster does it:
SLURM's time-limit signal (SIGUSR1 to the ranks, what ``#SBATCH --signal=USR1@300`` sends; here
``scancel --signal=USR1``) and a preemption (``scontrol requeue``: SIGTERM to every process of the
job, batch script and loader workers included, SIGKILL after KillWait, then SLURM requeues it).
Each time the ranks checkpoint and exit 75, the job comes back and resumes; its final weights and
per-step losses equal those of the same job run straight through.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from dist.tiny_pretrain import REPO, TINY_YAML, tiny_overrides
from safetensors.torch import load_file
from slurm.cluster import FINISHED, Cluster, free_port

from pretrain.checkpoint import list_checkpoints, read_meta, step_dir
from sonodistill.jsonl import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SBATCH = REPO / "launch" / "slurm_pretrain.sbatch"
# One CPU node instead of the script's GPU nodes: options before the script override its #SBATCH lines.
# The time limit stays above the script's --signal=USR1@300, which would otherwise fire at once.
CPU_NODE = ["--gpus-per-node=0", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10:00"]
STEPS = 16
RUN = dict(train__max_steps=STEPS, train__log_every=1, train__save_every=100, mixup__prob=1.0)
WAIT = 240  # seconds, per wait: a run starts in ~30 s on 2 busy cores


def submit(cluster: Cluster, name: str, out: Path, shards: Path, teacher: Path) -> tuple[int, Path]:
    """The sbatch file as a user submits it, from the repository; its job id and output file."""
    output = out.parent / f"{name}.out"
    job = cluster.sbatch(
        *CPU_NODE,
        f"--job-name={name}",
        f"--output={output}",
        str(SBATCH),
        "--config",
        str(TINY_YAML),
        *tiny_overrides(shards, teacher, out, **RUN),
        cwd=REPO,
        env=cluster.env(PYTHON=sys.executable, MASTER_PORT=str(free_port())),
    )
    return job, output


def last_step(out: Path) -> int:
    records = read_jsonl(out / "metrics.jsonl")
    return records[-1]["step"] if records else 0


def interrupt(cluster: Cluster, job: int, output: Path, out: Path, run: int, at_step: int, *command: str) -> int:
    """Once the job's run ``run`` (0 = first) has logged ``at_step``, send ``command``; wait for that run to
    end and return the step of the checkpoint it wrote."""

    def running_at_step() -> bool:
        rec = cluster.job(job)
        if rec is None or rec["JobState"] in FINISHED:
            raise AssertionError(
                f"job {job} ended before run {run} could be interrupted\n{cluster.output_tail(output)}"
            )
        return rec["JobState"] == "RUNNING" and rec["Restarts"] == str(run) and last_step(out) >= at_step

    def requeued() -> bool:  # pending again: every process of the run has ended (SLURM's requeue logs at once)
        rec = cluster.job(job)
        return (
            rec is None or rec["JobState"] in FINISHED or (rec["JobState"] == "PENDING" and int(rec["Restarts"]) > run)
        )

    cluster.wait_for(running_at_step, WAIT, f"run {run} of job {job} at step {at_step}", output)
    cluster.run(*command)
    cluster.wait_for(requeued, WAIT, f"run {run} of job {job} to end", output)
    return list_checkpoints(out)[-1][0]


def test_sbatch_stopped_requeued_and_resumed_equals_a_straight_job(
    slurm_cluster, shard_dir, tiny_teacher_dir, tmp_path
):
    cluster = slurm_cluster
    out, ref = tmp_path / "interrupted", tmp_path / "straight"
    job, output = submit(cluster, "interrupted", out, shard_dir, tiny_teacher_dir)
    ref_job, ref_output = submit(cluster, "straight", ref, shard_dir, tiny_teacher_dir)  # runs while job waits
    try:
        k1 = interrupt(cluster, job, output, out, 0, 2, "scancel", "--signal=USR1", str(job))
        k2 = interrupt(cluster, job, output, out, 1, k1 + 2, "scontrol", "requeue", str(job))
        final = cluster.wait_job(job, WAIT, output)
        ref_final = cluster.wait_job(ref_job, WAIT, ref_output)
    finally:
        cluster.run("scancel", str(job), str(ref_job), check=False)  # a failing test leaves no job behind

    log = output.read_text()
    runs = cluster.runs(job)
    # Requeued twice (a requeued run ends PENDING), then done; the ranks' step exited 75 in the first run
    # (srun's line: the run's DerivedExitCode misses the 75 when the script's requeue reaches slurmctld
    # before the step's completion does).
    assert [r["JobState"] for r in runs] == ["PENDING", "PENDING", "COMPLETED"], runs
    assert re.search(r"srun: error: .*: tasks? [0-9,-]+: Exited with exit code 75", log), log
    assert final["ExitCode"] == "0:0", runs
    assert 2 <= k1 < k2 < STEPS
    assert f"stopped by SIGUSR1 after step {k1}" in log and f"stopped by SIGTERM after step {k2}" in log, log
    assert log.count("pretrain/run.py exited with 75") == 2 and "pretrain/run.py exited with 0" in log, log
    assert "could not be requeued" not in log, log  # the requeue's own SIGTERM is not a refusal
    for k in (k1, k2):
        assert f"resumed from {step_dir(out, k)} at step {k}" in log, log
    assert ref_final["JobState"] == "COMPLETED" and len(cluster.runs(ref_job)) == 1
    assert "stopped by" not in ref_output.read_text()

    # A real 2-rank group under srun on CPU (not two processes that each think they are alone).
    meta = read_meta(step_dir(out, STEPS))
    assert meta["world_size"] == 2 and meta["distributed_type"] == "DistributedType.MULTI_CPU"

    got = load_file(str(step_dir(out, STEPS) / "student.safetensors"))
    want = load_file(str(step_dir(ref, STEPS) / "student.safetensors"))
    assert got.keys() == want.keys()
    differing = [name for name in want if not torch.equal(got[name], want[name])]
    assert not differing, differing[:5]
    losses = [(r["step"], r["loss"]) for r in read_jsonl(out / "metrics.jsonl")]
    assert losses == [(r["step"], r["loss"]) for r in read_jsonl(ref / "metrics.jsonl")] and len(losses) == STEPS
