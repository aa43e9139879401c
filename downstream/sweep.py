"""``python -m downstream.sweep``: encoders x tasks x modes x label fractions x seeds.

Every finished cell appends one line to ``OUT/results.jsonl`` (its full resolved config and
metrics, fsynced). A re-run skips cells whose key (identity + a hash of the resolved config)
is already there, so a killed sweep loses at most the cell that was running and changing a
setting re-runs only what it affects. After the grid: ``tables.md`` (the paper's Tables 1-4),
``summary.json`` and ``fractions_<mode>.png``. Splits are written once per dataset under
``OUT/splits/`` and frozen features are cached under ``OUT/cache/``.

Example::

    python -m downstream.sweep --config downstream/configs/paper.yaml busi=data/BUSI ddti=data/DDTI \\
        'encoders=[R50-Rand=rand,R50-Distill-US=runs/export]' out=runs/paper
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from downstream.config import TASK_KIND, Mode, RunConfig, Settings, run_config
from downstream.tables import TaskColumn, aggregate, render_tables, task_label
from sonodistill.atomic import write_json, write_text
from sonodistill.config import add_config_args, config_from_args, save_config, to_dict
from sonodistill.errors import UserError, cli_main
from sonodistill.jsonl import append_jsonl, read_jsonl

log = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    out: str = "runs/sweep"
    busi: str = ""  # BUSI folder for busi-seg / busi-cls
    ddti: str = ""  # DDTI folder for ddti-seg
    tasks: list[str] = field(default_factory=lambda: ["ddti-seg", "busi-seg", "busi-cls"])  # also seg:DATA, cls:DATA
    encoders: list[str] = field(default_factory=lambda: ["R50-Rand=rand"])  # NAME=SPEC (or SPEC)
    modes: list[Mode] = field(default_factory=lambda: ["linear", "finetune"])
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.5, 1.0])  # fine-tuning
    linear_fractions: list[float] = field(default_factory=lambda: [1.0])  # linear probing
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    run: Settings = field(default_factory=Settings)


@dataclass(frozen=True)
class Cell:
    task_key: str
    task: str
    data: str
    dataset: str
    encoder_name: str
    encoder: str
    mode: str
    fraction: float
    seed: int


def parse_encoder(item: str) -> tuple[str, str]:
    """``NAME=SPEC`` -> (NAME, SPEC), split at the first ``=``; a bare SPEC names itself (a spec
    that itself contains ``=`` therefore needs a name)."""
    name, sep, spec = item.partition("=")
    if sep and name.strip() and spec.strip():
        return name.strip(), spec.strip()
    return item.strip(), item.strip()


def resolve_tasks(cfg: SweepConfig) -> list[tuple[str, str, str]]:
    """(task_key, task, data) per configured task; checks the data each one needs is given."""
    out = []
    for t in cfg.tasks:
        if t in ("busi-seg", "busi-cls"):
            if not cfg.busi:
                raise UserError(f"busi: task '{t}' needs the BUSI folder (busi=DIR)")
            out.append((t, t, cfg.busi))
        elif t == "ddti-seg":
            if not cfg.ddti:
                raise UserError("ddti: task 'ddti-seg' needs the DDTI folder (ddti=DIR)")
            out.append((t, t, cfg.ddti))
        elif t.partition(":")[0] in ("seg", "cls") and t.partition(":")[2]:
            kind, _, data = t.partition(":")
            out.append((t, kind, data))
        else:
            raise UserError(f"tasks: unknown task '{t}'; expected busi-seg, busi-cls, ddti-seg, seg:DATA or cls:DATA")
    return out


def _dataset_name(data: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", data.rstrip("/").split("/")[-1].split(":")[-1]) or "data"
    return base


def cells(cfg: SweepConfig) -> Iterator[Cell]:
    if not cfg.encoders:
        raise UserError("encoders: give at least one NAME=SPEC")
    names = [parse_encoder(e)[0] for e in cfg.encoders]
    if len(set(names)) != len(names):
        raise UserError(f"encoders: names must be unique, got {names}")
    for task_key, task, data in resolve_tasks(cfg):
        for item in cfg.encoders:
            name, spec = parse_encoder(item)
            for mode in cfg.modes:
                fr = cfg.fractions if mode == "finetune" else cfg.linear_fractions
                for f in fr:
                    for s in cfg.seeds:
                        yield Cell(task_key, task, data, _dataset_name(data), name, spec, mode, float(f), int(s))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def cell_config(cfg: SweepConfig, c: Cell) -> RunConfig:
    out = Path(cfg.out)
    data_tag = hashlib.sha1(
        os.path.abspath(c.data).encode() if not c.data.startswith("hf:") else c.data.encode()
    ).hexdigest()[:6]
    rc = run_config(
        cfg.run,
        task=c.task,
        data=c.data,
        encoder=c.encoder,
        mode=c.mode,
        fraction=c.fraction,
        seed=c.seed,
        out=str(out / "runs" / _slug(c.task_key) / _slug(c.encoder_name) / c.mode / f"f{c.fraction:g}_s{c.seed}"),
    )
    if not rc.split.file:
        rc.split.file = str(out / "splits" / f"{c.dataset}-{data_tag}.json")
    if not rc.cache_dir:
        rc.cache_dir = str(out / "cache")
    return rc


def cell_key(c: Cell, rc: RunConfig) -> str:
    """Identity plus a hash of every setting except output locations (moving OUT keeps resume)."""
    d = to_dict(rc)
    for k in ("out", "cache_dir"):
        d.pop(k)
    d["split"].pop("file")
    digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    return f"{c.task_key}|{c.encoder_name}|{c.mode}|{c.fraction:g}|{c.seed}|{digest}"


def write_report(cfg: SweepConfig, rows: list[dict]) -> dict:
    """tables.md, summary.json and the fraction plots from the rows of the current grid."""
    out = Path(cfg.out)
    agg = aggregate(rows)
    encoders = [parse_encoder(e)[0] for e in cfg.encoders]
    tasks = [TaskColumn(k, task_label(k, _dataset_name(d)), TASK_KIND[t]) for k, t, d in resolve_tasks(cfg)]
    fractions = {"finetune": cfg.fractions, "linear": cfg.linear_fractions}
    write_text(out / "tables.md", render_tables(agg, encoders, tasks, fractions, len(cfg.seeds)))
    from downstream.curves import plot_fraction_curves

    plots = []
    for mode in cfg.modes:
        p = out / f"fractions_{mode}.png"
        if plot_fraction_curves(agg, encoders, tasks, fractions[mode], mode, p):
            plots.append(p.name)
    summary = {
        "cells": len(rows),
        "results": [
            {"task": t, "encoder": e, "mode": m, "fraction": f, **{k: v for k, v in d.items()}}
            for (t, e, m, f), d in sorted(agg.items())
        ],
        "plots": plots,
    }
    write_json(out / "summary.json", summary)
    return summary


def run_sweep(cfg: SweepConfig, *, max_cells: int | None = None) -> dict:
    """Run the missing cells (at most ``max_cells`` of them), then write the report."""
    from downstream.probe import FeatureCache
    from downstream.runner import run
    from sonodistill.world import make_accelerator

    out = Path(cfg.out)
    plan = [(c, cell_config(cfg, c)) for c in cells(cfg)]
    keys = [cell_key(c, rc) for c, rc in plan]
    results = out / "results.jsonl"
    done = {r.get("key") for r in read_jsonl(results)}
    todo = [(c, rc, k) for (c, rc), k in zip(plan, keys) if k not in done]
    acc = make_accelerator(cfg.run.train.mixed_precision, key="run.train.mixed_precision")
    if acc.is_main_process:
        save_config(cfg, out / "sweep.yaml")
        log.info(f"sweep: {len(plan)} cells, {len(plan) - len(todo)} already done, {len(todo)} to run")
    cache = FeatureCache(cfg.run.cache_dir or out / "cache")
    ran = 0
    for c, rc, key in todo:
        if max_cells is not None and ran >= max_cells:
            break
        metrics = run(rc, accelerator=acc, cache=cache)
        metrics.pop("test_per_image", None)
        if acc.is_main_process:
            append_jsonl(results, {"key": key, "cell": c.__dict__, "config": to_dict(rc), "metrics": metrics})
            t = metrics["test"]
            score = f"dice {t['dice']:.4f}" if "dice" in t else f"acc {t['accuracy']:.4f}"
            log.info(f"[{ran + 1}/{len(todo)}] {key.rsplit('|', 1)[0]}: {score} ({metrics['time_s']:.0f}s)")
        ran += 1
    acc.wait_for_everyone()
    current = set(keys)
    rows = [r for r in read_jsonl(results) if r.get("key") in current]
    summary = {"ran": ran, "remaining": len(todo) - ran, "cells": len(plan), "done": len(rows)}
    if acc.is_main_process:
        write_report(cfg, rows)
    return summary


@cli_main
def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m downstream.sweep", description=__doc__.splitlines()[0])
    add_config_args(p)
    p.add_argument("--max-cells", type=int, default=None, help="run at most N missing cells, then report")
    p.add_argument("--print-tables", action="store_true", help="print tables.md when done")
    args = p.parse_args(argv)
    cfg = config_from_args(SweepConfig, args)
    summary = run_sweep(cfg, max_cells=args.max_cells)
    if args.print_tables:
        print((Path(cfg.out) / "tables.md").read_text())
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
