"""downstream.sweep part=I/N: slices by expected cost, one plan for every part, parts at once on one out,
a stopped part (exit 75) that continues, and a merge equal to one process."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from test_downstream_models import one_thread, save_encoder  # noqa: F401  (shared helper + fixture)

from downstream.sweep import SweepConfig, cells_to_run, parse_grid, plan_cells, run_sweep
from downstream.sweep_parts import drop_plans, read_results
from sonodistill.config import load_config
from sonodistill.parts import Part

REPO = Path(__file__).resolve().parents[1]


def paper_like(busi_dir, ddti_dir, export, out) -> SweepConfig:
    """The paper's grid at its real shape (3 tasks, 2 encoders x 2 protocols, 5 fractions, 3 seeds, 2 KD rows)."""
    return load_config(
        SweepConfig,
        None,
        [
            f"busi={busi_dir}",
            f"ddti={ddti_dir}",
            f"out={out}",
            "tasks=[ddti-seg,busi-seg,busi-cls]",
            f"encoders=[R50-Rand=rand,R50-Distill={export}]",
            "methods=[kd:vit_mobilenet,kd:seg_unet]",
            "kd_presets=[tiny]",
        ],
    )


def test_slices_cover_the_cells_once_balanced_and_stay_one_plan(busi_dir, ddti_dir, tmp_path, caplog):
    export = save_encoder(tmp_path / "export", "resnet18", seed=1)
    out = tmp_path / "sweep"
    cfg = paper_like(busi_dir, ddti_dir, export, out)
    plan = plan_cells(cfg, parse_grid(cfg))
    assert len(plan) == 3 * (2 * (5 + 1) + 2 * 5) * 3  # (2 encoders x (5 finetune + 1 linear) + 2 KD) x 3 seeds
    n = 4
    slices = [cells_to_run(out, plan, Part(i, n)) for i in range(n)]
    keys = [[p.key for p in s] for s in slices]
    assert sorted(k for s in keys for k in s) == sorted(p.key for p in plan)  # disjoint and covering
    assert keys == [[p.key for p in cells_to_run(out, plan, Part(i, n))] for i in range(n)]  # deterministic
    assert len(list((out / "parts").glob("plan-4-*.json"))) == 1

    # the slow rows spread: every part has KD and fine-tuning cells, and no part is above the mean by
    # more than the largest unit (a KD cell at the full label set)
    costs = [sum(p.work.cost for p in s) for s in slices]
    kd = [sum(p.work.row == "kd" for p in s) for s in slices]
    assert max(costs) <= sum(costs) / n + max(p.work.cost for p in plan) and min(kd) >= 7, (costs, kd)
    assert all(Counter(p.work.row for p in s)["finetune"] >= 10 for s in slices)
    # linear probes sharing one encoder's features on one task are in one part (extracted once)
    owner = {p.key: i for i, s in enumerate(slices) for p in s}
    for group in ({p.key for p in plan if p.work.features == f} for f in {p.work.features for p in plan} - {None}):
        assert len({owner[k] for k in group}) == 1

    # part 0 finishes cells: every part keeps the slice it was given when the plan was made
    done = slices[0][:5]
    with open(out / "results.part-0-of-4.jsonl", "w") as fh:
        fh.writelines(json.dumps({"key": p.key}) + "\n" for p in done)
    assert [p.key for p in cells_to_run(out, plan, Part(1, n))] == keys[1]
    assert [p.key for p in cells_to_run(out, plan, Part(0, n))] == keys[0][5:]
    # another N plans what is still to do now
    rest = [p for i in range(3) for p in cells_to_run(out, plan, Part(i, 3))]
    finished = {p.key for p in done}
    assert sorted(p.key for p in rest) == sorted(p.key for p in plan if p.key not in finished)
    # results gone after a plan was made: said, left to the merge; planned again once the plans are dropped
    assert len([p for i in range(2) for p in cells_to_run(out, plan, Part(i, 2))]) == len(plan) - 5
    (out / "results.part-0-of-4.jsonl").unlink()
    with caplog.at_level(logging.WARNING, logger="downstream.sweep"):
        assert len([p for i in range(2) for p in cells_to_run(out, plan, Part(i, 2))]) == len(plan) - 5
    assert "5 cell(s) to do are not in the parts' plan" in caplog.text
    drop_plans(out)
    assert sorted(p.key for i in range(2) for p in cells_to_run(out, plan, Part(i, 2))) == sorted(p.key for p in plan)


def parts_args(busi_dir, out) -> list[str]:
    """4 fine-tuning cells (2 label fractions x 2 seeds), 2 per part: a stop signal after a part's first
    cell lands in the training of its second (a few seconds), where the cell stops at its next step."""
    return [
        f"busi={busi_dir}",
        f"out={out}",
        "tasks=[busi-cls]",
        "encoders=[B=rand:resnet18]",
        "modes=[finetune]",
        "fractions=[0.5,1.0]",
        "seeds=[0,1]",
        "run.image_size=32",
        "run.num_workers=0",
        "run.train.epochs=4",
        "run.train.batch_size=8",
        "run.train.save_checkpoint=false",
        "run.edge.onnx=never",
        "run.edge.runs=2",
    ]


def _sweep(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "downstream.sweep", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def headline_tables(out: Path) -> str:
    """tables.md without the edge section (latencies are measured, not computed)."""
    return (out / "tables.md").read_text().split("## Edge")[0]


def test_two_parts_at_once_one_stopped_then_the_merge_equals_one_process(busi_dir, tmp_path):
    out, one = tmp_path / "parts", tmp_path / "one"
    args = parts_args(busi_dir, out)
    procs = [_sweep([*args, f"part={i}/2"]) for i in range(2)]
    try:
        deadline = time.time() + 240
        while _lines(out / "results.part-0-of-2.jsonl") < 1 and procs[0].poll() is None and time.time() < deadline:
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGUSR1)  # SLURM's time-limit signal: part 0 stops in its second cell
        (_, err0), (_, err1) = (p.communicate(timeout=300) for p in procs)
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode == 0, err1.decode()[-2000:]
    assert procs[0].returncode == 75, err0.decode()[-2000:]
    stopped = err0.decode().strip().splitlines()[-1]
    assert stopped.startswith("stopped: SIGUSR1 received; 1 of 2 cells finished and kept in "), stopped
    assert _lines(out / "results.part-0-of-2.jsonl") == 1 and _lines(out / "results.part-1-of-2.jsonl") == 2

    assert run_sweep(load_config(SweepConfig, None, [*args, "part=0/2"]))["ran"] == 1  # the requeued part
    assert run_sweep(load_config(SweepConfig, None, [*args, "part=1/2"])) == {
        "part": "1/2",
        "ran": 0,
        "remaining": 0,
        "cells": 4,
        "done": 4,
    }  # nothing to do: no tables written by a part
    assert not (out / "tables.md").exists() and not (out / "results.jsonl").exists()
    merged = run_sweep(load_config(SweepConfig, None, args))
    assert merged == {"ran": 0, "remaining": 0, "cells": 4, "done": 4}  # the merge only writes the tables
    assert not list((out / "parts").glob("plan-*.json"))  # the grid done: parts started again plan afresh
    assert run_sweep(load_config(SweepConfig, None, [*args, "part=1/2"]))["ran"] == 0
    assert not list((out / "parts").glob("plan-*.json"))  # nothing to do plans nothing
    assert not list((out / "parts").glob(".grid-*"))  # a part's grid record goes when it ends

    assert run_sweep(load_config(SweepConfig, None, parts_args(busi_dir, one)))["ran"] == 4
    rows, ref = read_results(out), {r["key"]: r for r in read_results(one)}
    assert sorted(r["key"] for r in rows) == sorted(ref)  # the same cell keys, each once
    for r in rows:
        for field in ("test", "val", "best_epoch", "n_train"):
            assert r["metrics"][field] == ref[r["key"]]["metrics"][field], (r["key"], field)
    assert headline_tables(out) == headline_tables(one)
    assert len(list((out / "splits").glob("*.json"))) == 1  # made once, by whichever part was first


def test_the_merge_waits_for_running_parts_and_parts_for_the_merge(busi_dir, tmp_path):
    """Started while a part runs, the run without part= would run that part's cells again into the same
    cell folders (and a part started beside the merge likewise): each is refused with one line."""
    import pytest

    from sonodistill.errors import UserError

    out = tmp_path / "out"
    args = [f"busi={busi_dir}", f"out={out}", "tasks=[busi-cls]", "encoders=[R=rand]", "methods=[]"]
    holding = [
        "import sys, time; from pathlib import Path; from sonodistill.lock import exclusive\n"
        "with exclusive(Path(sys.argv[1]), 'x'):\n    print('held', flush=True); time.sleep(60)"
    ]
    for lock, part, message in (
        (
            out / "parts" / ".lock-part-1-of-2",
            "",
            "sweep part=1/2 is still running (pid {pid}); run the sweep without part= once every part has finished",
        ),
        (out / ".lock", "part=0/2", "a sweep without part= (pid {pid}) is running in it; start the parts after it"),
        (
            out / "parts" / ".lock-part-0-of-2",
            "part=0/3",
            "sweep part=0/2 is running (pid {pid}); the parts of one sweep share N (part=I/2), or wait for it to end",
        ),
    ):
        proc = subprocess.Popen(
            [sys.executable, "-c", *holding, str(lock)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout.readline().strip() == "held"
            with pytest.raises(UserError) as exc:
                run_sweep(load_config(SweepConfig, None, [*args, *([part] if part else [])]))
            assert str(exc.value) == f"out {out}: " + message.format(pid=proc.pid)
        finally:
            proc.kill()
            proc.wait()
    assert not (out / "results.jsonl").exists()


def test_a_bad_part_is_refused_before_out_is_created(busi_dir, tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "downstream.sweep", *parts_args(busi_dir, out), "part=a/b"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: part: expected I/N with 0 <= I < N (the I-th of N parts, from 0), got 'a/b'"
    ]
    assert not out.exists()


def test_a_cell_run_again_after_a_kill_keeps_one_set_of_curves(busi_dir, tmp_path):
    """A killed part's cell starts over when rerun: the TensorBoard file of the killed attempt goes."""
    out = tmp_path / "sweep"
    args = parts_args(busi_dir, out)
    assert run_sweep(load_config(SweepConfig, None, args), max_cells=1)["ran"] == 1
    (first,) = list(out.glob("runs/**/events.out.tfevents.*"))
    (out / "results.jsonl").write_text("")  # as if killed before the cell was recorded
    assert run_sweep(load_config(SweepConfig, None, args), max_cells=1)["ran"] == 1
    (again,) = list(out.glob("runs/**/events.out.tfevents.*"))
    assert again.parent == first.parent and again != first


def test_a_kd_cell_resumed_keeps_the_curves_of_the_stages_it_reuses(tmp_path):
    """A KD cell stopped in its distilled stage reuses teacher and scratch when run again: their
    TensorBoard files were removed as "an earlier run of this cell" (the only curves they will have)."""
    from downstream.sweep import _drop_stale_curves

    cell = tmp_path / "cell"
    (cell / "tb").mkdir(parents=True)
    files = [cell / "tb" / f"events.out.tfevents.{k}" for k in range(3)]
    for f in files:
        f.write_bytes(b"x")
    _drop_stale_curves(cell)  # no finished stage: the cell starts over
    assert not any(f.exists() for f in files)
    for f in files:
        f.write_bytes(b"x")
    (cell / "teacher").mkdir()
    (cell / "teacher" / "stage.json").write_text("{}")
    _drop_stale_curves(cell)
    assert all(f.exists() for f in files)


def test_a_part_given_the_merges_print_tables_flag_says_where_they_come_from(busi_dir, tmp_path, capsys):
    """A SLURM array task passes the merge's arguments: --print-tables must not fail the part."""
    from downstream.sweep import main as sweep_main

    out = tmp_path / "sweep"
    summary = sweep_main([*parts_args(busi_dir, out), "part=1/2", "--max-cells", "0", "--print-tables"])
    assert summary["ran"] == 0 and not (out / "tables.md").exists()
    said = capsys.readouterr()
    assert "--print-tables: a part writes no tables; the same command without part= writes and prints them" in said.err
    assert json.loads(said.out) == summary  # stdout: the summary only


def test_a_part_of_another_grid_running_in_the_same_out_is_refused(tmp_path):
    """Two parts on one out with other grids (seeds=[0,1] and seeds=[0,1,2]) made two plans and ran the
    same cell into the same folder at once: the second is refused while the first runs."""
    import hashlib

    import pytest

    from downstream.sweep_parts import planned
    from sonodistill.errors import UserError

    out = tmp_path / "out"
    (out / "parts").mkdir(parents=True)
    grid_a, grid_b = ["k1", "k2", "k3"], ["k1", "k2", "k3", "k4"]
    (out / "parts" / ".grid-part-1-of-2").write_text(hashlib.sha1("\n".join(grid_b).encode()).hexdigest()[:12])
    holding = (
        "import sys, time; from pathlib import Path; from sonodistill.lock import exclusive\n"
        "with exclusive(Path(sys.argv[1]), 'x'):\n    print('held', flush=True); time.sleep(60)"
    )
    lock = out / "parts" / ".lock-part-1-of-2"
    proc = subprocess.Popen([sys.executable, "-c", holding, str(lock)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as exc:
            planned(out, Part.parse("0/2"), grid_a, grid_a)
        assert str(exc.value) == (
            f"out {out}: sweep part=1/2 (pid {proc.pid}) is running another grid (a setting of the sweep differs: "
            "tasks, encoders, methods, modes, fractions, seeds or a run setting; or their inputs changed since it "
            "started: dataset files, an encoder folder, a teacher checkpoint): the parts of one sweep share one "
            "config; wait for it, or use another out"
        )
        assert not list((out / "parts").glob("plan-*"))
        assert planned(out, Part.parse("0/2"), grid_b, grid_b[1:]) == grid_b[1:]  # the same grid: one plan
    finally:
        proc.kill()
        proc.wait()
    # the other part has ended with cells of its plan left (the config edited while array tasks were
    # queued): a part of the new grid would slice other cells, and the merge quietly run the rest
    (plan_b,) = (out / "parts").glob("plan-2-*.json")
    with pytest.raises(UserError) as exc:
        planned(out, Part.parse("0/2"), grid_a, grid_a)
    assert str(exc.value) == (
        f"out {out}: the parts of another sweep config planned {plan_b.name} and have 3 cell(s) left; the parts of "
        f"one sweep share one config: run them with the config they started with, or delete {plan_b} to give them up"
    )
    # once those cells are done (or the plan deleted), the new grid plans afresh
    (out / "results.part-1-of-2.jsonl").write_text("".join(json.dumps({"key": k}) + "\n" for k in grid_b[1:]))
    assert planned(out, Part.parse("0/2"), grid_a, grid_a) == grid_a


def test_an_empty_part_is_refused_and_the_merge_says_it_runs_what_the_parts_left(busi_dir, tmp_path, caplog):
    """`part=$PART` with PART unset is `part=`: an error, not the whole sweep in every task. The
    merge after parts that left cells runs them in one process, and says so."""
    out = tmp_path / "sweep"
    args = parts_args(busi_dir, out)
    proc = subprocess.run(
        [sys.executable, "-m", "downstream.sweep", *args, "part="], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: part: expected I/N with 0 <= I < N (the I-th of N parts, from 0), got ''"
    ]
    assert not out.exists()
    cfg = load_config(SweepConfig, None, args)
    plan = plan_cells(cfg, parse_grid(cfg))
    assert len(cells_to_run(out, plan, Part(0, 2))) == 2  # part 0 planned, then never ran
    with caplog.at_level(logging.WARNING, logger="downstream.sweep"):
        assert run_sweep(cfg, max_cells=0)["remaining"] == 4
    assert "sweep: the parts left 4 cell(s) to do; running them here, in this one process" in caplog.text
