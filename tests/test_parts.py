"""sonodistill.parts: ``I/N`` parsed once, work dealt longest first; atomic.write_once; an array task's part."""

from __future__ import annotations

import os
import random
import subprocess
import threading
from pathlib import Path

import pytest

from sonodistill.atomic import write_once
from sonodistill.errors import UserError
from sonodistill.parts import Part, assign

REPO = Path(__file__).resolve().parents[1]


def test_part_parse_and_names():
    assert Part.parse("0/4") == Part(0, 4) and Part.parse(" 3 / 4 ") == Part(3, 4)
    assert str(Part(2, 16)) == "2/16" and Part(2, 16).tag == "part-2-of-16"
    for bad in ("4/4", "1/0", "-1/2", "1", "a/b", "1/2/3", ""):
        with pytest.raises(UserError, match=rf"--part: expected I/N with 0 <= I < N .*got '{bad}'"):
            Part.parse(bad, "--part")


def test_assign_is_longest_first_to_the_least_loaded_by_hand():
    # order by cost: 5 (p0), 4 (p1), 3 (p1: 4 < 5), 3 (p0: 5 < 7), 2 (p1: 7 < 8), 1 (p0: 8 < 9)
    assert assign([5, 4, 3, 3, 2, 1], 2) == [0, 1, 1, 0, 1, 0]
    # equal costs: the earlier item first, ties between parts to the lower part number
    assert assign([1, 1, 1, 1, 1], 3) == [0, 1, 2, 0, 1]
    assert assign([], 3) == [] and assign([2.0, 1.0], 1) == [0, 0]
    assert assign([7.0], 4) == [0]  # more parts than items: the others are empty
    # far more parts than items (a typo in N): the same slices, without a heap of N parts
    assert assign([3, 0, 0, 5, 1], 10**9) == [1, 3, 3, 0, 2] == assign([3, 0, 0, 5, 1], 5)  # cost 0 adds no load


def test_assign_deterministic_disjoint_covering_balanced():
    rng = random.Random(0)
    costs = [rng.choice([0.1, 0.1, 1.0, 1.5, 4.0]) * rng.uniform(0.5, 1.5) for _ in range(300)]
    for n in (1, 2, 3, 16):
        owner = assign(costs, n)
        assert owner == assign(list(costs), n)  # the same slices in every process
        assert sorted(set(owner)) == list(range(n))  # every item in exactly one part, every part used
        loads = [sum(c for c, p in zip(costs, owner) if p == k) for k in range(n)]
        # the greedy rule's guarantee: no part above the mean by more than the largest item
        assert max(loads) <= sum(costs) / n + max(costs) + 1e-9, loads


def test_write_once_first_writer_wins(tmp_path):
    path = tmp_path / "sub" / "plan.json"
    assert write_once(path, "first") and path.read_text() == "first"
    assert not write_once(path, b"second") and path.read_text() == "first"
    # racing threads: exactly one wins, the file is whole, no temporary is left behind
    racing = tmp_path / "race.bin"
    wins: list[bool] = []
    blobs = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=lambda b=b: wins.append(write_once(racing, b))) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1 and racing.read_bytes() in blobs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race.bin", "sub"]


def _part_of_task(**env: str) -> subprocess.CompletedProcess:
    """launch/slurm_run.sh's sonodistill_part, as a batch script calls it, with SLURM's array variables."""
    return subprocess.run(
        ["bash", "-c", "source launch/slurm_run.sh && sonodistill_part"],
        cwd=REPO,
        env={"PATH": os.environ["PATH"], "REPO": str(REPO), **env},
        capture_output=True,
        text=True,
    )


def test_sbatch_array_task_to_part():
    def part(task: int, first: int, last: int, count: int, step: int = 1) -> str:
        env = dict(SLURM_ARRAY_TASK_ID=task, SLURM_ARRAY_TASK_MIN=first, SLURM_ARRAY_TASK_MAX=last)
        env.update(SLURM_ARRAY_TASK_COUNT=count, SLURM_ARRAY_TASK_STEP=step)
        proc = _part_of_task(**{k: str(v) for k, v in env.items()})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert [part(i, 0, 15, 16) for i in (0, 15)] == ["0/16", "15/16"]  # --array=0-15
    assert [part(i, 1, 16, 16) for i in (1, 16)] == ["0/16", "15/16"]  # --array=1-16: still from 0
    assert part(4, 0, 6, 4, step=2) == "2/4"  # --array=0-6:2
    assert _part_of_task().stdout == ""  # a plain job: no part
    listed = _part_of_task(
        SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="5", SLURM_ARRAY_TASK_COUNT="3"
    )  # --array=1,2,5
    assert listed.returncode == 2 and "sbatch --array: give a range such as --array=0-15" in listed.stderr


def test_a_one_task_array_is_refused_not_run_as_the_whole_sweep():
    """`sbatch --array=2` to rerun one failed task: SLURM gives it a count of 1, so it would be part 0/1."""
    env = dict(SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_MIN="2", SLURM_ARRAY_TASK_MAX="2", SLURM_ARRAY_TASK_COUNT="1")
    proc = _part_of_task(**env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "sbatch --array=2: a one-task array cannot tell how many parts there are" in proc.stderr


@pytest.mark.parametrize(
    "args, shown",
    [
        (["--config", "c.yaml", "part=1/4", "out=o"], "1/4"),
        (["--part", "3/8", "--out", "o"], "3/8"),
        (["--part=0/2", "src=d"], "0/2"),
        (["--config", "c.yaml", "out=o"], ""),
    ],
)
def test_the_part_given_on_the_command_line_is_found_for_the_log(args, shown):
    script = 'source launch/slurm_run.sh && sonodistill_given_part "$@"'
    proc = subprocess.run(
        ["bash", "-c", script, "x", *args],
        cwd=REPO,
        env={"PATH": os.environ["PATH"], "REPO": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == shown, proc.stderr


def test_srun_steps_get_the_jobs_cpus_per_task():
    """srun stopped reading SLURM_CPUS_PER_TASK in SLURM 22.05: SRUN_CPUS_PER_TASK carries it."""
    script = 'source launch/slurm_run.sh && echo "${SRUN_CPUS_PER_TASK:-unset}"'
    env = {"PATH": os.environ["PATH"], "REPO": str(REPO)}

    def run(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", script], cwd=REPO, env={**env, **extra}, capture_output=True, text=True)

    assert run(SLURM_CPUS_PER_TASK="8").stdout.strip() == "8"
    assert run().stdout.strip() == "unset"  # outside SLURM: nothing set
