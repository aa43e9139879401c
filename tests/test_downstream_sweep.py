"""End-to-end sweeps on synthetic BUSI and DDTI: tables in the paper's layout, plots, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from test_downstream_models import one_thread, save_encoder  # noqa: F401  (shared helper + fixture)

from downstream.sweep import SweepConfig, parse_grid, plan_cells, run_sweep
from sonodistill.config import load_config
from sonodistill.jsonl import read_jsonl as read_results

REPO = Path(__file__).resolve().parents[1]


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def check_splits_and_cells(out: Path, busi_dir: Path, ddti_dir: Path, metric) -> None:
    """The sweep's splits (one per dataset, patients whole) and each cell's own outputs."""
    # one split per dataset, shared by busi-seg and busi-cls; DDTI patients never straddle splits
    splits = sorted((out / "splits").glob("*.json"))
    assert len(splits) == 2 and splits[0].name.startswith(busi_dir.name) and splits[1].name.startswith(ddti_dir.name)
    ddti = json.loads(splits[1].read_text())
    groups = {p: {i.split("/")[-1].split("_")[0] for i in ddti[p]} for p in ("train", "val", "test")}
    assert (
        not (groups["train"] & groups["test"])
        and not (groups["train"] & groups["val"])
        and not (groups["val"] & groups["test"])
    )

    # per-cell outputs; label subsets nested and stratified
    _, r = metric("busi-cls", "R50-Rand", "linear", 0.5, "accuracy")
    cell = Path(r["config"]["out"])
    for name in ("metrics.json", "config.yaml", "subset.json", "confusion.png", "curves.png"):
        assert (cell / name).is_file(), name
    half = set(json.loads((cell / "subset.json").read_text())["train"])
    full = set(json.loads((cell.parent / "f1_s0" / "subset.json").read_text())["train"])
    assert half < full and {i.split("/")[0] for i in half} == {"normal", "benign", "malignant"}
    seg_cell = Path(metric("busi-seg", "R50-Distill", "linear", 1.0, "dice")[1]["config"]["out"])
    assert (seg_cell / "predictions.png").is_file() and any((seg_cell / "tb").iterdir())
    per_image = json.loads((seg_cell / "metrics.json").read_text())["test_per_image"]
    busi_split = json.loads(splits[0].read_text())
    assert sorted(p["id"] for p in per_image) == sorted(busi_split["test"])


def test_tiny_sweep_end_to_end(busi_dir, ddti_dir, tmp_path):
    export = save_encoder(tmp_path / "export", "resnet50", seed=3)
    out = tmp_path / "sweep"
    cfg = load_config(
        SweepConfig,
        REPO / "downstream/configs/tiny.yaml",
        [
            f"busi={busi_dir}",
            f"ddti={ddti_dir}",
            f"out={out}",
            f"encoders=[R50-Rand=rand,R50-Distill={export}]",
            "tasks=[ddti-seg,busi-seg,busi-cls]",
            "methods=[]",  # KD rows: tests/test_kd_sweep.py
            "modes=[linear]",
            "linear_fractions=[0.5,1.0]",
            "run.edge.onnx=never",  # ONNX / INT8 of the edge column: tests/test_edge.py, tests/test_kd_sweep.py
            "run.edge.runs=2",
            "run.train.epochs=1",
            "run.num_workers=0",
            "run.probe.epochs=30",
            "run.image_size=32",
        ],
    )
    summary = run_sweep(cfg)
    assert summary == {"ran": 12, "remaining": 0, "cells": 12, "done": 12}  # 3 tasks x 2 encoders x 2 fractions
    rows = read_results(out / "results.jsonl")
    assert len(rows) == 12 and len({r["key"] for r in rows}) == 12
    assert all(r["config"]["image_size"] == 32 and r["config"]["encoder"] in ("rand", str(export)) for r in rows)

    def metric(task, enc, mode, frac, key):
        [r] = [
            r
            for r in rows
            if (r["cell"]["task_key"], r["cell"]["encoder_name"], r["cell"]["mode"], r["cell"]["fraction"])
            == (task, enc, mode, frac)
        ]
        return r["metrics"]["test"][key], r

    tables = (out / "tables.md").read_text()
    assert (
        "| Model | DDTI Seg. Dice | DDTI Seg. IoU | BUSI Seg. Dice | BUSI Seg. IoU | BUSI Cls. Acc | BUSI Cls. F1 |"
        in tables
    )
    t1 = tables.split("## Table 1")[1].split("## Table 2")[0]
    row = next(line for line in t1.splitlines() if line.startswith("| R50-Distill |"))
    cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
    assert cells[1] == f"{metric('ddti-seg', 'R50-Distill', 'linear', 1.0, 'dice')[0]:.4f} (1)"  # no provenance:
    assert cells[6] == f"{metric('busi-cls', 'R50-Distill', 'linear', 1.0, 'macro_f1')[0]:.4f} (1)"  # marked
    rand = t1.split("| R50-Rand |")[1].split("\n")[0]  # random init: nothing to check, nothing marked
    assert "\n(1) not checked for test-set contamination (no provenance)" in t1 and " (" not in rand
    assert "## Table 3: Limited labels, linear probing" in tables and "BUSI Cls. Acc 50%" in tables
    assert "## Table 2: Full fine-tuning on all labeled data\n\nNot run in this sweep" in tables
    assert (out / "fractions_linear.png").stat().st_size > 1000 and not (out / "fractions_finetune.png").exists()
    assert json.loads((out / "summary.json").read_text())["cells"] == 12
    assert "### DDTI Seg. Threads: 1." in tables  # every cell records its edge column
    _, seg = metric("ddti-seg", "R50-Distill", "linear", 1.0, "dice")
    assert seg["metrics"]["edge"]["params_m"] > 30 and seg["metrics"]["edge"]["eager_ms"] > 0  # the whole U-Net

    check_splits_and_cells(out, busi_dir, ddti_dir, metric)

    # the grid narrowed to one task: the tables and plots are of that grid, none left of the wider one
    (out / "fractions_finetune.png").write_bytes(b"an earlier grid's plot")
    narrow = dataclasses.replace(cfg, tasks=["busi-cls"])
    assert run_sweep(narrow)["ran"] == 0
    plots = json.loads((out / "summary.json").read_text())["plots"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(plots) == ["fractions_linear.png", "pareto_BUSI_Cls.png"]


def _resume_cfg(busi_dir, export, out) -> list[str]:
    return [
        f"busi={busi_dir}",
        f"out={out}",
        "tasks=[busi-cls]",
        f"encoders=[A={export},B=rand:resnet18]",
        "modes=[linear]",
        "linear_fractions=[0.5,1.0]",
        "seeds=[0,1]",
        "run.image_size=32",
        "run.num_workers=0",
        "run.probe.epochs=20",
        "run.train.save_checkpoint=false",
        "run.edge.onnx=never",
        "run.edge.runs=2",
    ]


def test_sweep_resume_after_kill(busi_dir, tmp_path):
    export = save_encoder(tmp_path / "export", "resnet18", seed=5)
    full = run_sweep(load_config(SweepConfig, None, _resume_cfg(busi_dir, export, tmp_path / "full")))
    assert full["ran"] == 8
    reference = {r["key"]: r["metrics"]["test"] for r in read_results(tmp_path / "full" / "results.jsonl")}

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "downstream.sweep", *_resume_cfg(busi_dir, export, out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while len(_lines(out / "results.jsonl")) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    finished = len(_lines(out / "results.jsonl"))
    assert 1 <= finished < 8  # killed mid-sweep
    with open(out / "results.jsonl", "a") as fh:  # a write torn by the kill
        fh.write('{"key": "busi-cls|A|linear|0.5|0|')

    again = run_sweep(load_config(SweepConfig, None, _resume_cfg(busi_dir, export, out)))
    assert again["ran"] == 8 - finished and again["done"] == 8
    rows = read_results(out / "results.jsonl")
    assert sorted(r["key"] for r in rows) == sorted(reference)  # each cell exactly once
    for r in rows:
        assert r["metrics"]["test"]["accuracy"] == reference[r["key"]]["accuracy"]
    assert run_sweep(load_config(SweepConfig, None, _resume_cfg(busi_dir, export, out)))["ran"] == 0
    # how fast a cell runs is not what it computes: another worker count finds every cell done
    assert (
        run_sweep(load_config(SweepConfig, None, [*_resume_cfg(busi_dir, export, out), "run.num_workers=1"]))["ran"]
        == 0
    )
    # rows stored under the keys of older sweeps still count: before input stamps, and before
    # num_workers left keys
    for era in (0, 1):
        legacy = tmp_path / f"legacy{era}"
        legacy.mkdir()
        cfg = load_config(SweepConfig, None, _resume_cfg(busi_dir, export, legacy))
        old_key = {p.key: p.legacy_keys[era] for p in plan_cells(cfg, parse_grid(cfg))}
        assert all(new != old for new, old in old_key.items())
        rows_then = [{**r, "key": old_key[r["key"]]} for r in read_results(out / "results.jsonl")]
        (legacy / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_then))
        assert run_sweep(cfg) == {"ran": 0, "remaining": 0, "cells": 8, "done": 8}
    # a changed setting is a different cell: it runs again instead of being skipped
    changed = run_sweep(
        load_config(
            SweepConfig,
            None,
            [*_resume_cfg(busi_dir, export, out), "run.probe.epochs=21", "seeds=[0]", "linear_fractions=[1.0]"],
        )
    )
    assert changed["ran"] == 2


def test_cells_run_again_when_their_data_or_encoder_changed(busi_dir, tmp_path, caplog):
    """An edited mask or a re-exported encoder folder is not the input a finished cell saw."""
    import logging
    import shutil

    import numpy as np
    from PIL import Image

    data = tmp_path / "busi"
    shutil.copytree(busi_dir, data)
    export = save_encoder(tmp_path / "export", "resnet18", seed=5)
    argv = [*_resume_cfg(data, export, tmp_path / "out"), "encoders=[A=" + str(export) + "]", "seeds=[0]"]
    argv.append("linear_fractions=[1.0]")

    def sweep() -> dict:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="downstream.sweep"):
            return run_sweep(load_config(SweepConfig, None, argv))

    def warned() -> str:
        return "\n".join(r.getMessage() for r in caplog.records if r.name == "downstream.sweep")

    assert sweep()["ran"] == 1 and sweep()["ran"] == 0
    mask = sorted(data.glob("malignant/*_mask.png"))[0]
    pixels = np.asarray(Image.open(mask))
    Image.fromarray(np.ascontiguousarray(pixels[::-1])).save(mask)  # the lesion drawn elsewhere
    assert sweep() == {"ran": 1, "remaining": 0, "cells": 1, "done": 1}
    assert warned() == "sweep: changed since their cells ran, so those cells run again: task busi-cls's data (1 cell)"
    save_encoder(export, "resnet18", seed=6)  # exported again into the same folder
    assert sweep()["ran"] == 1 and warned().endswith(f"run again: encoder {export} (1 cell)")
    assert sweep()["ran"] == 0 and warned() == ""
    rows = read_results(tmp_path / "out" / "results.jsonl")
    assert len(rows) == 3 and len({r["key"] for r in rows}) == 3
    assert rows[0]["inputs"]["data"] != rows[1]["inputs"]["data"] == rows[2]["inputs"]["data"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cells"] == 1  # the tables hold the cell of the current inputs only
    assert summary["results"][0]["accuracy"] == [rows[2]["metrics"]["test"]["accuracy"]]


def test_tables_paper_layout_mean_std():
    from downstream.tables import TaskColumn, aggregate, render_tables

    def row(task, enc, mode, frac, seed, test, params=23.508):
        return {
            "cell": {"task_key": task, "encoder_name": enc, "mode": mode, "fraction": frac, "seed": seed},
            "metrics": {"test": test, "params_m": params},
        }

    rows = []
    for seed, (d, acc) in enumerate([(0.60, 0.70), (0.80, 0.90)]):
        rows += [
            row("ddti-seg", "R50-Distill-US", "finetune", 1.0, seed, {"dice": d, "iou": d / 2}),
            row("busi-cls", "R50-Distill-US", "finetune", 1.0, seed, {"accuracy": acc, "macro_f1": acc - 0.1}),
            row("ddti-seg", "R50-Distill-US", "finetune", 0.05, seed, {"dice": d - 0.2, "iou": 0.1}),
        ]
    rows.append(row("ddti-seg", "R50-Rand", "finetune", 1.0, 0, {"dice": 0.5, "iou": 0.4}))
    rows.append(row("ddti-seg", "DINOv3 ViT-B/16", "finetune", 1.0, 0, {"dice": 0.79, "iou": 0.48}, params=85.66))
    tasks = [TaskColumn("busi-cls", "BUSI Cls.", "cls"), TaskColumn("ddti-seg", "DDTI Seg.", "seg")]
    md = render_tables(
        aggregate(rows),
        ["R50-Rand", "R50-Distill-US", "DINOv3 ViT-B/16"],
        tasks,
        {"finetune": [0.05, 1.0], "linear": [1.0]},
        seeds=2,
    )
    t2 = md.split("## Table 2")[1].split("## Table 3")[0]
    # paper column order (DDTI before BUSI) whatever the config order; mean ± sample std over seeds
    assert "| Model | DDTI Seg. Dice | DDTI Seg. IoU | BUSI Cls. Acc | BUSI Cls. F1 |" in t2
    # a column with a single filled cell has nothing to be best against: no bold
    assert "| R50-Distill-US | 0.7000 ± 0.1414 | 0.3500 ± 0.0707 | 0.8000 ± 0.1414 | 0.7000 ± 0.1414 |" in t2
    assert "| DINOv3 ViT-B/16 | **0.7900** | **0.4800** | – | – |" in t2
    assert "Not run in this sweep" in md.split("## Table 1")[1].split("## Table 2")[0]
    t3 = md.split("## Table 3")[1].split("## Table 4")[0]
    assert "DDTI Seg. Dice 5%" in t3 and "| R50-Distill-US | 0.5000 ± 0.1414 | – |" in t3
    t4 = md.split("## Table 4")[1]
    assert "| Model | Params (M) | DDTI Seg. Dice | BUSI Cls. Acc |" in t4
    assert "| DINOv3 ViT-B/16 | 85.7 | **0.7900** | – |" in t4 and "| R50-Rand | 23.5 | 0.5000 | – |" in t4


def test_cross_task_mean_ranks_by_hand():
    from downstream.ranks import render_ranks
    from downstream.tables import TaskColumn, aggregate

    def row(task, name, mode, frac, test, seed=0):
        return {
            "cell": {"task_key": task, "encoder_name": name, "mode": mode, "fraction": frac, "seed": seed},
            "metrics": {"test": test, "params_m": 1.0},
        }

    rows = [
        # task A (seg): B > A > KD; task B (cls): KD = A > B (tie shares rank 1.5); task C: KD n/a
        row("A", "R50-Rand", "finetune", 0.1, {"dice": 0.5}),
        row("A", "R50-Distill", "finetune", 0.1, {"dice": 0.7}),
        row("A", "kd:x", "finetune", 0.1, {"dice": 0.4}),
        row("B", "R50-Rand", "finetune", 0.1, {"accuracy": 0.8}),
        row("B", "R50-Rand", "finetune", 0.1, {"accuracy": 0.6}, seed=1),  # mean over seeds: 0.7
        row("B", "R50-Distill", "finetune", 0.1, {"accuracy": 0.6}),
        row("B", "kd:x", "finetune", 0.1, {"accuracy": 0.7}),
        row("C", "R50-Rand", "finetune", 0.1, {"dice": 0.2}),
        row("C", "R50-Distill", "finetune", 0.1, {"dice": 0.3}),
        {"cell": {"task_key": "C", "encoder_name": "kd:x", "mode": "finetune", "fraction": 0.1, "seed": 0},
         "metrics": {"na": "x: segmentation recipe"}},
    ]  # fmt: skip
    tasks = [TaskColumn("A", "A Seg.", "seg"), TaskColumn("B", "B Cls.", "cls"), TaskColumn("C", "C Seg.", "seg")]
    md, data = render_ranks(aggregate(rows), ["R50-Rand", "R50-Distill", "kd:x"], tasks, {"finetune": [0.1]})
    ranks = data["finetune@0.1"]
    assert ranks["R50-Rand"] == {"mean_rank": (2 + 1.5 + 2) / 3, "tasks": 3}
    assert ranks["R50-Distill"] == {"mean_rank": (1 + 3 + 1) / 3, "tasks": 3}
    assert ranks["kd:x"] == {"mean_rank": (3 + 1.5) / 2, "tasks": 2}  # n/a on C: not ranked there
    assert "| kd:x | 2.25 (2) |" in md and "mean rank over 3 tasks" in md


def test_suite_config_lists_ultrabench_tasks():
    from downstream.sweep import resolve_tasks

    cfg = load_config(SweepConfig, REPO / "downstream/configs/suite.yaml", ["busi=b", "ddti=d"])
    tasks = resolve_tasks(cfg)
    ub = [t for t in tasks if t.data.startswith("ub:")]
    assert len(ub) == 14 and sum(t.kind == "seg" for t in ub) == 7  # UltraBench: 7 + 7 tasks
    psfhs = next(t for t in ub if "psfhs" in t.data)
    assert (psfhs.reader.layout, psfhs.reader.mask_column, psfhs.reader.mask_values) == ("ub", "psfh_mask", [2])
    assert cfg.methods and "finetune" in cfg.modes
