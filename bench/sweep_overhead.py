"""How much of a KD sweep cell's wall time is shared machinery rather than training.

Runs one limited-label sweep with a KD method only (default ``kd:vit_mobilenet`` with the tiny
teacher preset, MobileNetV3-Small student) on synthetic BUSI, at two label fractions, and reads
each cell's timing: training = the seconds of the recipe's training stages (``downstream.fit``:
optimiser steps, the loader feeding them, per-epoch validation for model selection; and what a
stage computes before fitting, such as the teacher's logits for the distilled student); shared =
everything else the cell does (reading the data, splits and the label subset, test evaluation of
teacher / scratch / student, metrics and report, the edge column: GMACs, CPU latency, ONNX export,
INT8 quantisation and scoring). The first cell also pays one-off costs of the process (imports,
the first latency measurement of an architecture); the second cell is what every further cell
of a sweep costs, and is the headline. Target: shared <= 10 % of the cell.

    .venv/bin/python bench/sweep_overhead.py [--n 240] [--size 128] [--epochs 6] [--method kd:vit_mobilenet]

The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from sonodistill.arg_checks import at_least


def parse_args() -> argparse.Namespace:
    """The command line (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=240, help="synthetic BUSI images")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6, help="epochs of every training stage")
    p.add_argument("--method", default="kd:vit_mobilenet")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = p.parse_args()
    at_least(args, {"n": 12, "size": 32, "epochs": 1, "workers": 0, "threads": 0})
    return args


def run_sweep_on_synthetic(args: argparse.Namespace, tmp: Path) -> tuple[Path, float]:
    """Write synthetic BUSI and run the one-method sweep at two label fractions; its folder and wall seconds."""
    from downstream.sweep import SweepConfig, run_sweep
    from shards.synth import write_busi
    from sonodistill.config import load_config

    write_busi(tmp / "busi", n=args.n, seed=0)
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(
        SweepConfig,
        repo / "downstream/configs/tiny.yaml",
        [
            f"busi={tmp / 'busi'}",
            f"out={tmp / 'sweep'}",
            "tasks=[busi-cls]",
            "encoders=[]",
            f"methods=[{args.method}]",
            "fractions=[0.5,1.0]",
            f"run.image_size={args.size}",
            f"run.train.epochs={args.epochs}",
            "run.train.batch_size=16",
            f"run.num_workers={args.workers}",
        ],
    )
    t0 = time.perf_counter()
    run_sweep(cfg)
    return tmp / "sweep", time.perf_counter() - t0


def cell_timings(sweep: Path) -> list[dict]:
    """Each cell's split of its wall time (training, shared, edge, evaluation and report) from results.jsonl."""
    from sonodistill.jsonl import read_jsonl

    cells = []
    for r in read_jsonl(sweep / "results.jsonl"):
        m = r["metrics"]
        t = m["timing"]
        cells.append(
            {
                "fraction": r["cell"]["fraction"],
                "n_train": m["n_train"],
                "cell_s": m["time_s"],
                "train_s": t["train_s"],
                "shared_s": t["shared_s"],
                "shared_frac": round(t["shared_s"] / m["time_s"], 4),
                "prepare_s": t["prepare_s"],
                "evaluate_report_s": round(t["recipe_s"] - t["train_s"], 2),
                "edge_s": t["edge_s"],
                "edge_latency_cached": m["edge"]["latency_cached"],
                "int8_speedup": m["edge"]["onnx"]["int8_speedup"],
            }
        )
    return cells


def print_cells(args: argparse.Namespace, cells: list[dict]) -> None:
    """The table: one row per cell."""
    print(f"{args.method} on {args.n} synthetic BUSI images, {args.size} px, {args.epochs} epochs per stage")
    print(f"{'fraction':>8s} {'train imgs':>10s} {'cell s':>8s} {'train s':>8s} {'shared s':>9s} {'shared':>7s} "
          f"{'edge s':>7s} {'eval+report s':>13s}")  # fmt: skip
    for c in cells:
        print(
            f"{c['fraction']:8g} {c['n_train']:10d} {c['cell_s']:8.1f} {c['train_s']:8.1f} {c['shared_s']:9.1f} "
            f"{100 * c['shared_frac']:6.1f}% {c['edge_s']:7.1f} {c['evaluate_report_s']:13.1f}"
        )


def main() -> dict:
    args = parse_args()

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_overhead_"))
    try:
        sweep, wall = run_sweep_on_synthetic(args, tmp)
        cells = cell_timings(sweep)
        print_cells(args, cells)
        steady = cells[-1]
        figures = {
            "bench": "sweep_overhead",
            "method": args.method,
            "images": args.n,
            "size": args.size,
            "epochs": args.epochs,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "sweep_wall_s": round(wall, 1),
            "cells": cells,
            "shared_fraction": steady["shared_frac"],
            "edge_s_per_cell": steady["edge_s"],
            "target_met": steady["shared_frac"] <= 0.10,
        }
        print(json.dumps(figures))
        return figures
    finally:  # the work folder is the benchmark's own: nothing of it is left behind
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
