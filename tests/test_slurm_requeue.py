"""launch/slurm_run.sh on a real SLURM: a step that exits 75 requeues its own job only, a job
that cannot be requeued fails (so that ``--dependency=afterok`` never starts a merge after it), and a
job the user cancels stays cancelled.

The step here is a one-line stand-in for the real ones (tests/test_slurm_parts.py and
tests/test_slurm_pretrain.py run those): it exits 75 in the first run of the task that carries the
array's own job id, which is the task a requeue of ``$SLURM_JOB_ID`` would take the whole array with.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from slurm.cluster import FINISHED

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
WAIT = 120

SCRIPT = """#!/bin/bash
#SBATCH --requeue
#SBATCH --open-mode=append
REPO={repo}
source "$REPO/launch/slurm_run.sh"
echo "task ${{SLURM_ARRAY_TASK_ID:-none}} job $SLURM_JOB_ID run ${{SLURM_RESTART_COUNT:-0}}"
sonodistill_run step bash -c '
  if [ "$SLURM_JOB_ID" = "${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}" ] && [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then
    exit 75
  fi
  sleep {sleep}'
"""


# stands in for a step that keeps its work on SIGTERM and exits 75, as pretraining and the sweep do
STOPPABLE = """#!/bin/bash
#SBATCH --requeue
#SBATCH --open-mode=append
REPO={repo}
source "$REPO/launch/slurm_run.sh"
echo "job $SLURM_JOB_ID run ${{SLURM_RESTART_COUNT:-0}}"
sonodistill_run step bash -c 'trap "exit 75" TERM; touch {ready}; while :; do sleep 0.2; done'
"""


def write_script(folder: Path, sleep: int) -> Path:
    path = folder / "step.sbatch"
    path.write_text(SCRIPT.format(repo=REPO, sleep=sleep))
    return path


def test_an_array_task_that_exits_75_requeues_itself_not_its_array(slurm_cluster, tmp_path):
    # the other task sleeps through its sibling's requeue: a requeue of the whole array would restart it
    script = write_script(tmp_path, sleep=8)
    array = slurm_cluster.sbatch("--cpus-per-task=1", "--array=0-1", f"--output={tmp_path}/task-%a.out", str(script))
    done = lambda: _array_finished(slurm_cluster, array)  # noqa: E731
    slurm_cluster.wait_for(done, WAIT, f"array {array}", tmp_path / "task-0.out")
    runs = slurm_cluster.array_runs(array)
    owner = next(i for i, r in runs.items() if r[0]["JobId"] == str(array))  # the task with the array's id
    other = 1 - owner
    logs = {i: (tmp_path / f"task-{i}.out").read_text() for i in (0, 1)}
    assert [r["JobState"] for r in runs[owner]] == ["PENDING", "COMPLETED"], (runs, logs)
    assert [r["JobState"] for r in runs[other]] == ["COMPLETED"], (runs, logs)  # ran once, never cancelled
    assert f"requeueing job {array}_{owner}" in logs[owner] and "could not be requeued" not in logs[owner], logs[owner]
    assert "DUE TO JOB REQUEUE" not in logs[other] and "run 1" not in logs[other], logs[other]


def test_a_job_that_cannot_be_requeued_fails_with_the_steps_code(slurm_cluster, tmp_path):
    script = write_script(tmp_path, sleep=0)
    output = tmp_path / "job.out"
    job = slurm_cluster.sbatch("--cpus-per-task=1", "--no-requeue", f"--output={output}", str(script))
    final = slurm_cluster.wait_job(job, WAIT, output)
    text = output.read_text()
    assert final["JobState"] == "FAILED" and final["ExitCode"] == "75:0", (final, text)
    assert f"error: job {job} could not be requeued (Requested operation is presently disabled" in text, text
    assert "its work is kept: submit the same command again" in text, text
    assert len(slurm_cluster.runs(job)) == 1


def test_a_cancelled_job_stays_cancelled(slurm_cluster, tmp_path):
    """``scancel`` sends the SIGTERM a preemption sends: the step keeps its work and exits 75, but the
    job must not requeue itself (it did: a plain ``scancel`` could not stop a job)."""
    ready, output = tmp_path / "ready", tmp_path / "job.out"
    script = tmp_path / "stoppable.sbatch"
    script.write_text(STOPPABLE.format(repo=REPO, ready=ready))
    job = slurm_cluster.sbatch("--cpus-per-task=1", f"--output={output}", str(script))
    slurm_cluster.wait_for(ready.exists, WAIT, f"job {job} to start", output)
    slurm_cluster.run("scancel", str(job))
    final = slurm_cluster.wait_job(job, WAIT, output)
    text = output.read_text()
    assert final["JobState"] == "CANCELLED" and len(slurm_cluster.runs(job)) == 1, (slurm_cluster.runs(job), text)
    assert f"job {job} was cancelled: not requeued; step kept its work" in text and "requeueing" not in text, text
    assert "run 1" not in text, text


def _array_finished(cluster, array: int) -> bool:
    runs = cluster.array_runs(array)
    return len(runs) == 2 and all(r[-1]["JobState"] in FINISHED for r in runs.values())
