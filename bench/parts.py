"""Work in parts on this machine: the same sweep and the same shard build as 1 process and as 2 parts at once.

    .venv/bin/python bench/parts.py [--busi 120] [--corpus 3000] [--epochs 3] [--size 64] [--seeds 3] [--two-threads]

1. **Sweep.** A small mixed grid on synthetic BUSI (classification and segmentation; linear probes,
   fine-tuning and a KD row, two label fractions, three seeds: 30 cells), run in fresh processes as
   one process and as ``part=0/2`` with ``part=1/2`` at once (one thread each: one core per part,
   as one GPU per SLURM task), then the same command without ``part``, which only writes the
   tables (timed apart). The parts' cell metrics must equal the one-process run's. Target: one
   process / two parts >= 1.8 in wall time.
2. **Build.** ``python -m shards.build`` of a synthetic corpus (one worker), as one process and as
   ``--part 0/2`` with ``--part 1/2`` at once, then the merge (the same command without ``--part``);
   the shards must be byte-identical. Reported: the speed-up and the merge's share of the
   one-process build.
3. **Balance.** The slicing's expected cost per part (max / mean; 1.0 is even) for this sweep and for
   the paper's grid in ``--paper-parts`` parts, and the sweep parts' measured cell seconds.

Wall times include each process's start-up (imports), as a cluster task pays it. Each process's CPU
seconds are measured too: on a machine other jobs keep busy, wall time depends on their load, while
"on free cores" (one process's CPU seconds over the slowest part's, plus the merge's for the build)
is the speed-up two otherwise idle cores give. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sonodistill.arg_checks import at_least

REPO = Path(__file__).resolve().parents[1]


def _run_at_once(commands: list[list[str]], threads: int) -> tuple[float, list[float]]:
    """Start every command at once (fresh processes, ``threads`` intra-op threads each): the wall
    seconds until the last ends, and each process's CPU seconds (user + system, its children included)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    logs = [tempfile.TemporaryFile() for _ in commands]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(c, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT) for c, log in zip(commands, logs)
    ]
    cpu = []
    for p, log in zip(procs, logs):
        _, status, usage = os.wait4(p.pid, 0)  # this process's own rusage (Popen.wait would not give it)
        p.returncode = os.waitstatus_to_exitcode(status)
        cpu.append(usage.ru_utime + usage.ru_stime)
        if p.returncode != 0:
            log.seek(0)
            raise SystemExit(f"error: {' '.join(p.args)} exited {p.returncode}:\n{log.read().decode()[-3000:]}")
    return time.perf_counter() - t0, cpu


def _sweep_args(busi: Path, out: Path, epochs: int, size: int, seeds: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "downstream.sweep",
        "--config",
        str(REPO / "downstream/configs/tiny.yaml"),
        f"busi={busi}",
        f"out={out}",
        "tasks=[busi-cls,busi-seg]",
        "encoders=[R18=rand:resnet18]",
        "methods=[kd:vit_mobilenet]",
        "modes=[linear,finetune]",
        "fractions=[0.5,1.0]",
        "linear_fractions=[1.0]",
        f"seeds=[{','.join(map(str, range(seeds)))}]",
        "run.num_workers=0",
        f"run.image_size={size}",
        f"run.train.epochs={epochs}",
        "run.edge.onnx=never",
        "run.edge.runs=4",
    ]


def bench_sweep(tmp: Path, busi: Path, args: argparse.Namespace) -> dict:
    from downstream.sweep_parts import read_results
    from sonodistill.jsonl import read_jsonl

    one, two, parts = tmp / "sweep_1x1", tmp / "sweep_1x2", tmp / "sweep_parts"
    grid = (args.epochs, args.size, args.seeds)
    t_one, (c_one,) = _run_at_once([_sweep_args(busi, one, *grid)], threads=1)
    t_parts, c_parts = _run_at_once([[*_sweep_args(busi, parts, *grid), f"part={i}/2"] for i in range(2)], 1)
    t_merge, (c_merge,) = _run_at_once([_sweep_args(busi, parts, *grid)], threads=1)
    ref = {r["key"]: r["metrics"] for r in read_results(one)}
    rows = read_results(parts)
    same = sorted(ref) == sorted(r["key"] for r in rows) and all(
        r["metrics"].get("test") == ref[r["key"]].get("test") for r in rows
    )
    cell_s = [sum(r["metrics"]["time_s"] for r in read_jsonl(parts / f"results.part-{i}-of-2.jsonl")) for i in range(2)]
    overrides = _sweep_args(busi, one, *grid)[5:]  # after `python -m downstream.sweep --config tiny.yaml`
    expected = expected_balance(REPO / "downstream/configs/tiny.yaml", overrides, 2, tmp / "plan")
    out = {
        "cells": len(ref),
        "cells_per_part": [len(read_jsonl(parts / f"results.part-{i}-of-2.jsonl")) for i in range(2)],
        "cell_seconds_per_part": [round(c, 1) for c in cell_s],
        "measured_max_over_mean": round(max(cell_s) * 2 / sum(cell_s), 3),
        "expected": expected,
        "one_process_s": round(t_one, 1),
        "two_parts_at_once_s": round(t_parts, 1),
        "merge_s": round(t_merge, 1),
        "speedup": round(t_one / t_parts, 2),
        "one_process_cpu_s": round(c_one, 1),
        "parts_cpu_s": [round(c, 1) for c in c_parts],
        "merge_cpu_s": round(c_merge, 1),
        "speedup_on_free_cores": round(c_one / max(c_parts), 2),  # each part alone on a core
        "metrics_equal": same,
    }
    if args.two_threads:
        t_two, _ = _run_at_once([_sweep_args(busi, two, *grid)], threads=2)
        out.update(one_process_2_threads_s=round(t_two, 1), speedup_vs_2_threads=round(t_two / t_parts, 2))
    return out


def expected_balance(config: Path, overrides: list[str], count: int, scratch: Path) -> dict:
    """The slicing's own estimate for ``count`` parts (:data:`downstream.sweep_parts.COST`): each part's
    expected cost, and the largest over the mean (1.0: perfectly even)."""
    from downstream.sweep import SweepConfig, cells_to_run, parse_grid, plan_cells
    from downstream.sweep_parts import FEATURES
    from sonodistill.config import load_config
    from sonodistill.parts import Part

    cfg = load_config(SweepConfig, config, [*overrides, f"out={scratch}"])
    plan = plan_cells(cfg, parse_grid(cfg))
    costs, kd = [], []
    for i in range(count):
        mine = cells_to_run(scratch, plan, Part(i, count))  # writes the plan under scratch, as a part does
        units = {p.work.features for p in mine} - {None}
        costs.append(sum(p.work.cost for p in mine) + FEATURES * len(units))
        kd.append(sum(p.work.row == "kd" for p in mine))
    return {
        "parts": count,
        "cells": len(plan),
        "expected_cost_per_part": [round(c, 2) for c in costs],
        "kd_cells_per_part": kd,
        "max_over_mean": round(max(costs) * count / sum(costs), 3),
    }


def paper_balance(tmp: Path, busi: Path, count: int) -> dict:
    """The paper's grid (its config; encoders as random ResNet-50s: slicing reads only the grid) in ``count`` parts."""
    from shards.synth import write_ddti

    write_ddti(tmp / "ddti", n=20, seed=0)
    overrides = [
        f"busi={busi}",
        f"ddti={tmp / 'ddti'}",
        "encoders=[R50-Rand=rand,R50-Distill-Default=rand:resnet50,R50-Distill-US=rand:resnet50,ViT=rand:resnet50]",
        "methods=[kd:vit_mobilenet,kd:seg_unet?teacher.encoder=@R50-Distill-US]",
    ]
    return expected_balance(REPO / "downstream/configs/paper.yaml", overrides, count, tmp / "paper_plan")


def bench_build(tmp: Path, corpus: Path) -> dict:
    sources = [f"--source={p.name}={p}" for p in sorted(corpus.iterdir()) if p.is_dir()]
    base = [sys.executable, "-m", "shards.build", *sources, "--size=256", "--workers=1", "--quiet"]
    one, parts = tmp / "shards_one", tmp / "shards_parts"
    t_one, (c_one,) = _run_at_once([[*base, f"--out={one}"]], threads=1)
    t_parts, c_parts = _run_at_once([[*base, f"--out={parts}", f"--part={i}/2"] for i in range(2)], threads=1)
    t_merge, (c_merge,) = _run_at_once([[*base, f"--out={parts}"]], threads=1)
    identical = sorted(p.name for p in one.iterdir()) == sorted(p.name for p in parts.iterdir()) and all(
        (parts / p.name).read_bytes() == p.read_bytes() for p in one.iterdir()
    )
    return {
        "inputs": sum(1 for f in corpus.rglob("*") if f.is_file()),
        "one_process_s": round(t_one, 1),
        "two_parts_at_once_s": round(t_parts, 1),
        "merge_s": round(t_merge, 1),
        "speedup": round(t_one / (t_parts + t_merge), 2),
        "one_process_cpu_s": round(c_one, 1),
        "parts_cpu_s": [round(c, 1) for c in c_parts],
        "merge_cpu_s": round(c_merge, 1),
        "speedup_on_free_cores": round(c_one / (max(c_parts) + c_merge), 2),
        "merge_share_of_one_process": round(t_merge / t_one, 3),
        "merge_cpu_share_of_one_process": round(c_merge / c_one, 3),
        "byte_identical": identical,
    }


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busi", type=int, default=120, help="synthetic BUSI images for the sweep")
    p.add_argument("--corpus", type=int, default=3000, help="synthetic corpus images for the build")
    p.add_argument("--epochs", type=int, default=3, help="epochs of every training stage of the sweep")
    p.add_argument("--size", type=int, default=64, help="sweep image size")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the sweep (10 cells each)")
    p.add_argument("--two-threads", action="store_true", help="also time the sweep as one process with 2 threads")
    p.add_argument("--paper-parts", type=int, default=16, help="parts of the paper grid's expected-cost balance")
    args = p.parse_args()
    at_least(args, {"busi": 12, "corpus": 1, "epochs": 1, "size": 32, "seeds": 1, "paper_parts": 1})
    with tempfile.TemporaryDirectory(prefix="bench_parts_") as folder:
        return _bench(Path(folder), args)


def _bench(tmp: Path, args: argparse.Namespace) -> dict:
    from shards.synth import write_busi, write_corpus

    write_busi(tmp / "busi", n=args.busi, seed=0)
    write_corpus(tmp / "corpus", n=args.corpus, seed=0)
    load = os.getloadavg()[0]
    balance = paper_balance(tmp, tmp / "busi", args.paper_parts)
    sweep = bench_sweep(tmp, tmp / "busi", args)
    build = bench_build(tmp, tmp / "corpus")
    _print_table(sweep, build, balance)
    figures = {
        "bench": "parts",
        "cpu_count": os.cpu_count(),
        "load_avg_1min_before": round(load, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "sweep": sweep,
        "build": build,
        "paper_grid_balance": balance,
        "target_met": sweep["speedup"] >= 1.8 and sweep["metrics_equal"] and build["byte_identical"],
    }
    print(json.dumps(figures))
    return figures


def _print_table(sweep: dict, build: dict, balance: dict) -> None:
    print(f"{'wall s (CPU s)':32s} {'1 process':>16s} {'2 parts at once':>22s} {'merge':>14s} {'speed-up':>9s}")
    rows = [
        (f"sweep, {sweep['cells']} cells", sweep, sweep["speedup"]),
        (f"build, {build['inputs']} inputs", build, build["speedup"]),
    ]
    for name, r, speedup in rows:
        parts_cpu = "+".join(f"{c:.0f}" for c in r["parts_cpu_s"])
        print(
            f"{name:32s} {r['one_process_s']:7.1f} ({r['one_process_cpu_s']:5.1f}) "
            f"{r['two_parts_at_once_s']:10.1f} ({parts_cpu:>9s}) {r['merge_s']:6.1f} ({r['merge_cpu_s']:4.1f}) "
            f"{speedup:8.2f}x  (on free cores: {r['speedup_on_free_cores']:.2f}x)"
        )
    if "one_process_2_threads_s" in sweep:
        print(f"sweep, 1 process with 2 threads: {sweep['one_process_2_threads_s']:.1f} s")
    print(
        f"sweep cells per part {sweep['cells_per_part']}, cell seconds per part {sweep['cell_seconds_per_part']}; "
        f"build merge = {100 * build['merge_share_of_one_process']:.1f} % of the one-process build "
        f"({100 * build['merge_cpu_share_of_one_process']:.1f} % of its CPU time)"
    )
    e = sweep["expected"]
    print(
        f"balance, max part / mean part: sweep expected {e['max_over_mean']:.3f}, measured "
        f"{sweep['measured_max_over_mean']:.3f}; paper grid ({balance['cells']} cells) in {balance['parts']} parts "
        f"expected {balance['max_over_mean']:.3f}, KD cells per part {min(balance['kd_cells_per_part'])}-"
        f"{max(balance['kd_cells_per_part'])}"
    )


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
