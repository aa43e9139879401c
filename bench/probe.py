"""Linear-probe classification sweep: cached frozen features vs recomputing them in every cell.

Runs the same grid (label fractions x seeds, BUSI 3-way classification on the synthetic BUSI
layout, a fixed ResNet-50 encoder folder like ``pretrain.export`` writes) twice in one process:
once with one shared feature cache (features extracted once), once with a fresh cache per cell
(features extracted in every cell), checks both give identical test metrics, and prints the
speed-up. The last line is a JSON object with the figures.

    .venv/bin/python bench/probe.py [--n 120] [--size 128] [--seeds 0,1,2]
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
    p.add_argument("--n", type=int, default=120, help="synthetic BUSI images")
    p.add_argument("--size", type=int, default=128, help="input side")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--fractions", default="0.05,0.1,0.2,0.5,1.0")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--edge", action="store_true", help="also record the edge column in every cell")
    args = p.parse_args()
    at_least(args, {"n": 12, "size": 32, "workers": 0})
    return args


def write_inputs(args: argparse.Namespace, tmp: Path) -> None:
    """Synthetic BUSI and a random ``--arch`` encoder folder (as ``pretrain.export`` writes one) under ``tmp``."""
    import timm
    import torch
    from timm.models import save_for_hf

    from shards.synth import write_busi

    write_busi(tmp / "busi", n=args.n, seed=0)
    torch.manual_seed(0)
    save_for_hf(timm.create_model(args.arch, num_classes=0), tmp / "encoder", safe_serialization=True)


def cell_config(args: argparse.Namespace, tmp: Path, f: float, s: int, tag: str):
    """The linear-probe run of one cell (label fraction ``f``, seed ``s``), its output under ``tmp/tag``."""
    from downstream.config import RunConfig

    c = RunConfig(
        task="busi-cls",
        data=str(tmp / "busi"),
        encoder=str(tmp / "encoder"),
        mode="linear",
        fraction=f,
        seed=s,
        out=str(tmp / tag / f"f{f:g}_s{s}"),
        image_size=args.size,
    )
    c.split.file = str(tmp / "splits.json")
    c.num_workers = args.workers
    c.train.save_checkpoint = False
    c.edge.enabled = args.edge  # the edge column costs the same on both sides; bench/sweep_overhead.py times it
    return c


def run_grid(args: argparse.Namespace, tmp: Path, grid: list[tuple[float, int]], acc) -> dict:
    """The grid with one shared feature cache, then with a fresh cache per cell: test metrics and seconds."""
    from downstream.probe import FeatureCache
    from downstream.runner import run

    t0 = time.perf_counter()
    shared = FeatureCache(tmp / "cache")
    cached = [run(cell_config(args, tmp, f, s, "cached"), accelerator=acc, cache=shared)["test"] for f, s in grid]
    t_cached = time.perf_counter() - t0

    t0 = time.perf_counter()
    fresh = []
    for k, (f, s) in enumerate(grid):
        cfg = cell_config(args, tmp, f, s, "fresh")
        fresh.append(run(cfg, accelerator=acc, cache=FeatureCache(tmp / f"fresh_cache_{k}"))["test"])
    t_fresh = time.perf_counter() - t0
    return dict(cached=cached, fresh=fresh, t_cached=t_cached, t_fresh=t_fresh, misses=shared.misses)


def main() -> dict:
    args = parse_args()

    from downstream.probe import FeatureCache
    from downstream.runner import run
    from sonodistill.world import make_accelerator

    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench_probe_"))
    try:
        write_inputs(args, tmp)
        acc = make_accelerator("auto")
        grid = [(f, s) for f in fractions for s in seeds]
        warmup = cell_config(args, tmp, fractions[0], seeds[0], "warmup")
        run(warmup, accelerator=acc, cache=FeatureCache(tmp / "warm"))  # imports, splits
        r = run_grid(args, tmp, grid, acc)
        cached, t_cached, t_fresh = r["cached"], r["t_cached"], r["t_fresh"]
        identical = all(
            a["accuracy"] == b["accuracy"] and a["macro_f1"] == b["macro_f1"] for a, b in zip(cached, r["fresh"])
        )
        figures = {
            "bench": "probe",
            "cells": len(grid),
            "images": args.n,
            "size": args.size,
            "arch": args.arch,
            "cpu_count": os.cpu_count(),
            "loader_workers": args.workers,
            "cached_s": round(t_cached, 2),
            "recompute_s": round(t_fresh, 2),
            "speedup": round(t_fresh / t_cached, 2),
            "feature_passes_cached": r["misses"],
            "feature_passes_recompute": len(grid),
            "identical_metrics": identical,
            "mean_accuracy": round(sum(c["accuracy"] for c in cached) / len(cached), 4),
        }
        print(
            f"{len(grid)} linear-probe cells ({len(fractions)} fractions x {len(seeds)} seeds), "
            f"{args.n} images at {args.size}px, {args.arch}"
        )
        print(f"cached features   : {t_cached:7.2f} s  ({r['misses']} feature pass)")
        print(f"recompute per cell: {t_fresh:7.2f} s  ({len(grid)} feature passes)")
        print(f"speed-up {t_fresh / t_cached:.2f}x, identical test metrics: {identical}")
        print(json.dumps(figures))
        return figures
    finally:  # the work folder is the benchmark's own: nothing of it is left behind
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
