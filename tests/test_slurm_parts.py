"""launch/slurm_sweep.sbatch and launch/slurm_build.sbatch on a real SLURM (throw-away, one CPU node).

Each is submitted as a user would: an array of 2 (each task runs part ``$SLURM_ARRAY_TASK_ID`` of
``$SLURM_ARRAY_TASK_COUNT``), then the same script as a plain job with ``--dependency=afterok`` on the
array, which only merges. Both arrays and both merges are submitted at once, so SLURM runs them as
its CPUs free up. Sweep part 0 gets SLURM's time-limit signal after its first cell: its second cell
stops at its next training step and is dropped, the task exits 75 and is requeued; the requeued task
runs the cell left. The merged sweep equals
a one-process sweep in every metric, and the merged build is byte-identical to a one-process build.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from slurm.cluster import FINISHED, Cluster
from test_build import tree_bytes
from test_downstream_models import one_thread  # noqa: F401  (autouse fixture: one thread, as the one-CPU tasks)
from test_sweep_parts import headline_tables, parts_args

from downstream.sweep import SweepConfig, run_sweep
from downstream.sweep_parts import read_results
from shards.build import BuildSettings, build_shards
from sonodistill.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[1]
# One CPU per task instead of the scripts' GPUs (options before the script override its #SBATCH lines);
# the time limit stays above the sweep script's --signal=USR1@300.
CPU_TASK = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=10:00"]
WAIT = 300  # seconds, per wait: on 2 busy cores a sweep task starts in ~15 s
BUILD_SOURCES = ("breast", "fetal", "thyroid")


def submit(cluster: Cluster, script: str, name: str, folder: Path, args: list[str], *options: str) -> int:
    """The script as a user submits it, from the repository; its (array) job id."""
    output = folder / (f"{name}-%a.out" if any(o.startswith("--array") for o in options) else f"{name}.out")
    return cluster.sbatch(
        *CPU_TASK,
        *options,
        f"--job-name={name}",
        f"--output={output}",
        str(REPO / "launch" / script),
        *args,
        cwd=REPO,
        env=cluster.env(PYTHON=sys.executable),
    )


def submit_array_then_merge(cluster: Cluster, script: str, name: str, folder: Path, args: list[str]) -> tuple[int, int]:
    """docs/cluster.md's two lines: ``jid=$(sbatch --parsable --array=0-1 ...)``, then ``--dependency=afterok:$jid``."""
    array = submit(cluster, script, name, folder, args, "--array=0-1")
    merge = submit(cluster, script, f"{name}-merge", folder, args, f"--dependency=afterok:{array}")
    return array, merge


@pytest.fixture(scope="module")
def jobs(slurm_cluster, busi_dir, corpus_dir, tmp_path_factory) -> dict:
    """Both arrays and both merges, submitted at once."""
    tmp = tmp_path_factory.mktemp("slurm_parts")
    sweep_args = parts_args(busi_dir, tmp / "sweep")
    build_args = [f"--source={n}={corpus_dir / n}" for n in BUILD_SOURCES]
    build_args += [f"--out={tmp / 'shards'}", "--size=48", "--samples-per-shard=5", "--quiet"]
    sweep = submit_array_then_merge(slurm_cluster, "slurm_sweep.sbatch", "sweep", tmp, sweep_args)
    build = submit_array_then_merge(slurm_cluster, "slurm_build.sbatch", "build", tmp, build_args)
    yield {"tmp": tmp, "sweep": sweep, "sweep_args": sweep_args, "build": build}
    slurm_cluster.run("scancel", *map(str, (*sweep, *build)), check=False)  # a failing test leaves no job behind


def test_sweep_array_of_two_with_a_requeued_part_then_the_merge_equals_one_process(slurm_cluster, jobs, busi_dir):
    cluster, tmp = slurm_cluster, jobs["tmp"]
    array, merge = jobs["sweep"]
    out = tmp / "sweep"

    def first_cell_of_part_0() -> bool:
        if (out / "results.part-0-of-2.jsonl").is_file():
            return True
        if any(runs[-1]["JobState"] in FINISHED for runs in cluster.array_runs(array).values()):
            raise AssertionError(f"a sweep task ended early\n{cluster.output_tail(tmp / 'sweep-0.out')}")
        return False

    cluster.wait_for(first_cell_of_part_0, WAIT, "sweep part 0's first cell", tmp / "sweep-0.out")
    cluster.run("scancel", "--signal=USR1", f"{array}_0")  # the time-limit signal, to task 0 only
    # meanwhile, the same sweep in this process, one thread as the one-CPU tasks
    one = tmp / "one"
    reference = run_sweep(load_config(SweepConfig, None, parts_args(busi_dir, one)))
    assert reference["ran"] == 4
    final = cluster.wait_job(merge, WAIT, tmp / "sweep-merge.out")

    tasks = cluster.array_runs(array)
    logs = {i: (tmp / f"sweep-{i}.out").read_text() for i in (0, 1)}
    assert [r["JobState"] for r in tasks[0]] == ["PENDING", "COMPLETED"], (tasks, logs[0])  # requeued once
    assert "task 0: Exited with exit code 75" in logs[0] and [r["JobState"] for r in tasks[1]] == ["COMPLETED"]
    assert "stopped: SIGUSR1 received; 1 of 2 cells finished and kept" in logs[0], logs[0]
    assert f"downstream.sweep exited with 75 (stopped by a signal, its work kept); requeueing job {array}_0" in logs[0]
    assert "could not be requeued" not in logs[0], logs[0]
    assert "part 1/2" in logs[1] and "downstream.sweep exited with 0" in logs[1], logs[1]
    assert final["JobState"] == "COMPLETED" and final["ExitCode"] == "0:0"
    merge_log = (tmp / "sweep-merge.out").read_text()
    [summary] = [json.loads(line) for line in merge_log.splitlines() if line.startswith("{")]
    assert summary == {"ran": 0, "remaining": 0, "cells": 4, "done": 4}  # the merge only wrote the tables

    rows, ref = read_results(out), {r["key"]: r for r in read_results(one)}
    assert sorted(r["key"] for r in rows) == sorted(ref)
    for r in rows:
        for field in ("test", "val", "best_epoch", "n_train"):
            assert r["metrics"][field] == ref[r["key"]]["metrics"][field], (r["key"], field)
    assert headline_tables(out) == headline_tables(one)


def test_build_array_of_two_then_the_merge_is_byte_identical_to_one_process(slurm_cluster, jobs, corpus_dir):
    cluster, tmp = slurm_cluster, jobs["tmp"]
    array, merge = jobs["build"]
    one = tmp / "one_shards"
    sources = {n: str(corpus_dir / n) for n in BUILD_SOURCES}
    build_shards(sources, one, BuildSettings(size=48, samples_per_shard=5, workers=1), progress=False)
    final = cluster.wait_job(merge, WAIT, tmp / "build-merge.out")
    tasks = cluster.array_runs(array)
    assert [[r["JobState"] for r in runs] for runs in tasks.values()] == [["COMPLETED"], ["COMPLETED"]], tasks
    for i in (0, 1):
        log = (tmp / f"build-{i}.out").read_text()
        assert f"part {i}/2: " in log and "inputs cleaned and spooled" in log, log
    assert final["JobState"] == "COMPLETED" and "samples in" in (tmp / "build-merge.out").read_text()
    assert tree_bytes(tmp / "shards") == tree_bytes(one)
