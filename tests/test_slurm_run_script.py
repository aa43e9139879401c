"""launch/slurm_run.sh's own logic, run by bash outside SLURM (the paths that reach no SLURM
command): a step's exit code is the job's, whatever it is; the environment each step gets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMP_"))}
    return subprocess.run(
        ["bash", "-c", f'REPO={REPO}; source "$REPO/launch/slurm_run.sh"; {script}'],
        env={**base, "PYTHON": "python3", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("code", [0, 1, 2, 127, 137])
def test_the_steps_exit_code_ends_the_job(code):
    """127 included: a step whose command is not found must fail the job, not end it COMPLETED."""
    done = _run(f"sonodistill_run step bash -c 'exit {code}'")
    assert done.returncode == code, done
    assert f"sonodistill: step exited with {code}" in done.stdout


def test_a_missing_python_is_one_error_line():
    done = _run("echo unreachable", PYTHON="/nonexistent/python")
    assert done.returncode == 2 and "unreachable" not in done.stdout
    said = f"no Python at /nonexistent/python (run `make venv` in {REPO}, or set PYTHON=/path/to/python)"
    assert done.stderr.strip() == f"sonodistill: error: {said}"


def test_threads_follow_the_tasks_cpus_not_the_submitting_shell():
    done = _run('echo "threads=$OMP_NUM_THREADS"', SLURM_CPUS_PER_TASK="3", OMP_NUM_THREADS="16")
    assert "threads=3" in done.stdout, done
    assert "threads=16" in _run('echo "threads=$OMP_NUM_THREADS"', OMP_NUM_THREADS="16").stdout
    assert "threads=1" in _run('echo "threads=$OMP_NUM_THREADS"').stdout
