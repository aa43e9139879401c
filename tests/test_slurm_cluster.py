"""The throw-away SLURM of the tests (tests/slurm/cluster.py): when it skips, what it runs, its requeue hold."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from slurm import cluster as cluster_module
from slurm.cluster import ClusterError, Unavailable, start, unavailable_reason

SELF_REQUEUE = """#!/bin/bash
#SBATCH --requeue
#SBATCH --open-mode=append
echo "run ${SLURM_RESTART_COUNT:-0}"
if [ "${SLURM_RESTART_COUNT:-0}" -eq 0 ]; then scontrol requeue "$SLURM_JOB_ID"; fi
"""


def test_skips_without_root(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert unavailable_reason() == "needs root: munged, slurmctld and slurmd run as root"
    with pytest.raises(Unavailable, match="needs root"):
        start()


def test_skips_without_the_binaries(monkeypatch, tmp_path):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(cluster_module, "SEARCH_PATH", str(tmp_path))  # an empty PATH
    reason = unavailable_reason()
    assert reason.startswith("missing munged slurmctld slurmd munge sbatch srun scontrol scancel sinfo squeue")
    assert "apt-get install slurm-wlm munge" in reason


@pytest.mark.slurm
def test_a_step_of_two_tasks_runs_on_the_node(slurm_cluster):
    proc = slurm_cluster.run(
        "srun", "--ntasks=2", "--cpus-per-task=1", "bash", "-c", "echo $SLURM_PROCID/$SLURMD_NODENAME"
    )
    assert sorted(proc.stdout.split()) == [f"0/{slurm_cluster.node}", f"1/{slurm_cluster.node}"]


@pytest.mark.slurm
def test_a_requeued_job_is_eligible_again_after_the_credential_lifetime_not_two_minutes(slurm_cluster, tmp_path):
    script = tmp_path / "requeue.sh"
    script.write_text(SELF_REQUEUE)
    output = tmp_path / "requeue.out"
    job = slurm_cluster.sbatch(f"--output={output}", str(script))
    final = slurm_cluster.wait_job(job, 120, output)
    runs = slurm_cluster.runs(job)
    assert [r["JobState"] for r in runs] == ["PENDING", "COMPLETED"] and final["ExitCode"] == "0:0", runs
    text = output.read_text()
    assert "run 0" in text and "run 1" in text, text
    # SLURM 22.05 sets a requeued job's begin time to its end + AuthInfo=cred_expire (10 here) + 1 s.
    ended = datetime.fromisoformat(runs[0]["EndTime"])
    eligible = datetime.fromisoformat(runs[1]["EligibleTime"])
    assert 11 <= (eligible - ended).total_seconds() <= 20, runs


@pytest.mark.slurm
def test_a_daemon_that_dies_fails_with_its_log_and_leaves_nothing_behind(monkeypatch):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no throw-away SLURM here: {reason}")
    render, mkdtemp, roots = cluster_module.render_conf, cluster_module.tempfile.mkdtemp, []
    monkeypatch.setattr(cluster_module, "render_conf", lambda *a: render(*a).replace("cons_tres", "no_such_plugin"))
    monkeypatch.setattr("tempfile.mkdtemp", lambda **kw: roots.append(mkdtemp(**kw)) or roots[-1])
    with pytest.raises(ClusterError) as err:
        start(timeout=30)
    message = str(err.value)
    assert "slurmctld (exit" in message and "select/no_such_plugin" in message, message  # the daemon's own words
    assert len(roots) == 1 and not Path(roots[0]).exists()
    leftovers = [p for p in Path("/proc").glob("[0-9]*/cmdline") if roots[0] in _read(p)]
    assert not leftovers, leftovers  # munged, started before slurmctld died, was stopped too


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process ended meanwhile
        return ""
