"""``python -m downstream.sweep``: (encoders x modes + KD methods) x tasks x label fractions x seeds.

Every finished cell appends one line to ``OUT/results.jsonl`` (its full resolved config and
metrics, fsynced). A re-run skips cells whose key (identity + a hash of the resolved config)
is already there, so a killed sweep loses at most the cell that was running and changing a
setting re-runs only what it affects. KD methods (``methods=[kd:RECIPE?key=value&...]``,
:mod:`downstream.kd.cell`) are fine-tuning rows: they run at ``fractions`` on the encoder cells'
splits and label subsets. Every cell records its edge column (:mod:`downstream.edge.profile`).
After the grid: ``tables.md`` (the paper's Tables 1-4, the edge table, the cross-task mean
ranks), ``summary.json``, ``fractions_<mode>.png`` and ``pareto_<task>.png``. Splits are written
once per dataset under ``OUT/splits/``; frozen features and latencies are cached under ``OUT/cache/``.
``part=I/N`` runs one slice of the cells for N processes at once (:mod:`downstream.sweep_parts`); a
stop signal (:mod:`sonodistill.stop`) ends the running cell at its next training step, drops it and
exits 75; the finished cells are kept.

Tasks: ``busi-seg``, ``busi-cls``, ``ddti-seg``, ``seg:DATA``, ``cls:DATA`` and ``ub:DIR`` (an
UltraBench folder: ``ub:DIR?mask=psfh_mask`` segments that mask field, ``ub:DIR`` or
``ub:DIR?label=FIELD`` classifies); ``?key=value&...`` after any data location sets that task's
reader keys (``run.reader.*``; for ``ub:`` also ``group=``, ``foreground=1,2``).

Example::

    python -m downstream.sweep --config downstream/configs/paper.yaml busi=data/BUSI ddti=data/DDTI \\
        'encoders=[R50-Rand=rand,R50-Distill-US=runs/export]' 'methods=[kd:vit_mobilenet,kd:seg_unet]' out=runs/paper
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from downstream.config import SPEED_ONLY, TASK_KIND, Mode, RunConfig, Settings, run_config, task_reader
from downstream.data.read import ReaderConfig
from downstream.encoders import check_spec
from downstream.fit import check_selects, check_stages
from downstream.inputs import InputStamps
from downstream.sweep_parts import CellWork, drop_plans, one_writer, planned, read_results, results_path, slice_of
from downstream.tables import TaskColumn, aggregate, render_contamination, render_tables, task_label
from downstream.tasks import VAL_NAMES
from sonodistill.atomic import remove_stale_temporaries, write_json, write_text
from sonodistill.cli_parser import CommandParser
from sonodistill.config import override_config, save_config, split_top_level, to_dict, with_old_names
from sonodistill.config_cli import add_config_args, config_from_args, parse_command_line
from sonodistill.errors import UserError, cli_main
from sonodistill.jsonl import append_jsonl
from sonodistill.logs import is_main_rank
from sonodistill.outdir import claimed
from sonodistill.parts import Part
from sonodistill.stop import Stopped, StopRequest, check_stop, stop_requested

if TYPE_CHECKING:
    from downstream.kd.cell import KDCellConfig, Method

log = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    out: str = "runs/sweep"  # results.jsonl, tables.md, summary.json, plots, splits/, cache/ and runs/ go here
    busi: str = ""  # BUSI folder for busi-seg / busi-cls
    ddti: str = ""  # DDTI folder for ddti-seg
    tasks: list[str] = field(default_factory=lambda: ["ddti-seg", "busi-seg", "busi-cls"])  # seg:, cls:, ub: too
    encoders: list[str] = field(default_factory=lambda: ["R50-Rand=rand"])  # NAME=SPEC (or SPEC)
    methods: list[str] = field(default_factory=list)  # KD rows: [NAME=]kd:RECIPE[?key=value&key=value]
    kd_presets: list[str] = field(default_factory=list)  # extra recipe layers: NAME -> kd/configs/NAME_<recipe>.yaml
    modes: list[Mode] = field(default_factory=lambda: ["linear", "finetune"])  # protocols of the encoder rows
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.5, 1.0])  # fine-tuning
    linear_fractions: list[float] = field(default_factory=lambda: [1.0])  # linear probing
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # one cell per seed: label subset, init, order
    part: str = ""  # I/N: only the I-th (from 0) of N slices of the cells to do, N processes at once (docs/cluster.md)
    run: Settings = field(default_factory=Settings)


@dataclass(frozen=True)
class TaskSpec:
    """One ``tasks`` entry resolved: the run task, its data location and its reader."""

    key: str  # as written in the config (identifies the task's cells)
    task: str  # RunConfig.task
    data: str
    reader: ReaderConfig | None = None  # run.reader with this task's ?key=value settings (None: run.reader as is)

    @property
    def kind(self) -> str:
        return TASK_KIND[self.task]


@dataclass(frozen=True)
class Cell:
    task: TaskSpec
    dataset: str
    encoder_name: str  # the row: an encoder's or a KD method's name
    encoder: str  # the encoder spec ("" for KD rows)
    mode: str
    fraction: float
    seed: int
    method: Method | None = None  # a KD row's method (None for encoder rows)

    @property
    def method_text(self) -> str:
        return self.method.text if self.method else ""

    def record(self) -> dict[str, Any]:
        """The cell as ``results.jsonl`` stores it."""
        return {
            "task_key": self.task.key,
            "task": self.task.task,
            "data": self.task.data,
            "dataset": self.dataset,
            "encoder_name": self.encoder_name,
            "encoder": self.encoder,
            "mode": self.mode,
            "fraction": self.fraction,
            "seed": self.seed,
            "method": self.method_text,
        }


def parse_encoder(item: str) -> tuple[str, str]:
    """``NAME=SPEC`` -> (NAME, SPEC), split at the first ``=``; a bare SPEC names itself (a spec
    that itself contains ``=`` therefore needs a name)."""
    name, sep, spec = item.partition("=")
    if sep and name.strip() and spec.strip():
        return name.strip(), spec.strip()
    return item.strip(), item.strip()


UB_KEYS = {"mask": "mask_column", "label": "label_column", "group": "group_column", "foreground": "mask_values"}


def _query(entry: str, text: str, aliases: dict[str, str]) -> tuple[str, ...]:
    """``key=value&...`` after a task's data location -> reader settings (``ReaderConfig`` keys)."""
    out = []
    for item in split_top_level(text, "&") if text else []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"tasks: '{item}' in '{entry}' is not key=value")
        key = aliases.get(key.strip(), key.strip())
        if key == "mask_values" and not value.strip().startswith("["):
            value = f"[{value}]"
        out.append(f"{key}={value.strip()}")
    return tuple(out)


def _reader(cfg: SweepConfig, entry: str, settings: Sequence[str]) -> ReaderConfig | None:
    """``run.reader`` with a task's settings (``None`` when it has none: the cell keeps run.reader)."""
    if not settings:
        return None
    try:
        return override_config(cfg.run.reader, settings, where=f"tasks: '{entry}'")
    except UserError as exc:
        short = f" (or the short keys {', '.join(UB_KEYS)})" if "unknown key" in str(exc) else ""
        raise UserError(f"tasks: '{entry}': {exc}{short}") from None


def resolve_tasks(cfg: SweepConfig) -> list[TaskSpec]:
    """Every configured task with the data it needs (checked to be given) and its reader."""
    out = []
    for t in cfg.tasks:
        head, _, query = t.partition("?")
        if head in ("busi-seg", "busi-cls"):
            if not cfg.busi:
                raise UserError(f"busi: task '{t}' needs the BUSI folder (busi=DIR)")
            out.append(TaskSpec(t, head, cfg.busi, _reader(cfg, t, _query(t, query, {}))))
        elif head == "ddti-seg":
            if not cfg.ddti:
                raise UserError("ddti: task 'ddti-seg' needs the DDTI folder (ddti=DIR)")
            out.append(TaskSpec(t, head, cfg.ddti, _reader(cfg, t, _query(t, query, {}))))
        elif head.partition(":")[0] in ("seg", "cls") and head.partition(":")[2]:
            kind, _, data = head.partition(":")
            out.append(TaskSpec(t, kind, data, _reader(cfg, t, _query(t, query, {}))))
        elif head.startswith("ub:") and head[3:]:
            settings = _query(t, query, UB_KEYS)
            kind = "seg" if any(r.startswith("mask_column=") for r in settings) else "cls"
            out.append(TaskSpec(t, kind, head, _reader(cfg, t, ("layout=ub", *settings))))
        else:
            raise UserError(
                f"tasks: unknown task '{t}'; expected busi-seg, busi-cls, ddti-seg, seg:DATA, cls:DATA or "
                "ub:DIR[?mask=FIELD|label=FIELD] (UltraBench)"
            )
    if len({x.key for x in out}) != len(out):
        raise UserError(f"tasks: listed twice: {[x.key for x in out]}")
    return out


def _dataset_name(data: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", data.rstrip("/").split("/")[-1].split(":")[-1]) or "data"
    return base


@dataclass(frozen=True)
class Grid:
    """A sweep's lists parsed once: its tasks, encoder rows and KD methods."""

    tasks: list[TaskSpec]
    encoders: list[tuple[str, str]]  # (row name, spec)
    methods: list[Method]

    @property
    def rows(self) -> tuple[list[str], list[str]]:
        return [name for name, _ in self.encoders], [m.name for m in self.methods]


def parse_grid(cfg: SweepConfig) -> Grid:
    """Tasks, encoders and methods of ``cfg``, checked (row names unique, at least one row)."""
    from downstream.kd.cell import parse_methods

    if not cfg.encoders and not cfg.methods:
        raise UserError("encoders: give at least one NAME=SPEC (or a KD method in methods)")
    encoders = [parse_encoder(e) for e in cfg.encoders]
    grid = Grid(resolve_tasks(cfg), encoders, parse_methods(cfg.methods, dict(encoders)))
    names = [name for group in grid.rows for name in group]
    if len(set(names)) != len(names):
        raise UserError(f"encoders/methods: row names must be unique, got {names} (name a method: NAME=kd:...)")
    folders: dict[str, str] = {}
    for name in names:  # each row's cells live in runs/<task>/<row folder>/
        other = folders.setdefault(_slug(name), name)
        if other != name:
            raise UserError(
                f"encoders/methods: rows '{other}' and '{name}' would share the folder runs/<task>/{_slug(name)}; "
                "rename one (NAME=...)"
            )
    return grid


def cells(cfg: SweepConfig, grid: Grid | None = None) -> Iterator[Cell]:
    grid = grid or parse_grid(cfg)
    for t in grid.tasks:
        name = _dataset_name(t.data)
        for enc_name, spec in grid.encoders:
            for mode in cfg.modes:
                fr = cfg.fractions if mode == "finetune" else cfg.linear_fractions
                for f in fr:
                    for s in cfg.seeds:
                        yield Cell(t, name, enc_name, spec, mode, float(f), int(s))
        for m in grid.methods:
            for f in cfg.fractions:  # KD rows train every weight: the fine-tuning grid
                for s in cfg.seeds:
                    yield Cell(t, name, m.name, "", "finetune", float(f), int(s), method=m)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def cell_config(cfg: SweepConfig, c: Cell) -> RunConfig:
    out = Path(cfg.out)
    t = c.task
    path = t.data[3:] if t.data.startswith("ub:") else t.data
    data_tag = hashlib.sha1(
        os.path.abspath(path).encode() if not t.data.startswith("hf:") else t.data.encode()
    ).hexdigest()[:6]
    rc = run_config(
        cfg.run,
        task=t.task,
        data=t.data,
        encoder=c.encoder or c.method_text,
        mode=c.mode,
        fraction=c.fraction,
        seed=c.seed,
        out=str(out / "runs" / _slug(t.key) / _slug(c.encoder_name) / c.mode / f"f{c.fraction:g}_s{c.seed}"),
    )
    if t.reader is not None:
        rc.reader = copy.deepcopy(t.reader)
    if not rc.split.file:
        rc.split.file = str(out / "splits" / f"{c.dataset}-{data_tag}.json")
    if not rc.cache_dir:
        rc.cache_dir = str(out / "cache")
    return rc


def kd_cell_config(cfg: SweepConfig, c: Cell, rc: RunConfig) -> KDCellConfig | None:
    """The resolved recipe config of a KD cell; ``None`` when the recipe's task kind does not match
    (the cell is ``n/a`` and needs no config)."""
    from downstream.kd.cell import kd_config, not_applicable

    if c.method is None or not_applicable(c.method, c.task.kind, c.task.key):
        return None
    return kd_config(c.method, rc, cfg.kd_presets, task_reader(rc.task, rc.reader))


def cell_key(
    c: Cell, rc: RunConfig, kd: KDCellConfig | None = None, inputs: dict | None = None, legacy: bool = False
) -> str:
    """Identity plus a hash of every setting except output locations (moving OUT keeps resume) and
    :data:`~downstream.config.SPEED_ONLY` ones (resuming on a node with fewer cores keeps finished cells),
    and of the ``inputs``' stamps (:mod:`downstream.inputs`: an edited dataset or a re-exported encoder
    runs the cell again). Keys made before stamps (``inputs=None``) and before speed-only settings
    left keys (``legacy``) are what older sweeps stored their cells under."""
    rc_dict = to_dict(rc)
    for k in () if legacy else SPEED_ONLY:
        rc_dict.pop(k)
    d = with_old_names(RunConfig, rc_dict)  # a renamed key keeps a sweep's cells done
    for k in ("out", "cache_dir", "strict_decontamination"):  # strictness refuses cells, never changes one
        d.pop(k)
    d["split"].pop("file")
    if c.method:
        recipe = None if kd is None else kd.digest if legacy else kd.speed_free_digest
        d = {"run": d, "method": c.method.text, "recipe": recipe}
    if inputs is not None:
        d = {"settings": d, "inputs": inputs}
    digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    return f"{c.task.key}|{c.encoder_name}|{c.mode}|{c.fraction:g}|{c.seed}|{digest}"


def task_columns(tasks: Sequence[TaskSpec]) -> list[TaskColumn]:
    out = []
    for t in tasks:
        label = task_label(t.key, _dataset_name(t.data), t.kind)
        if any(c.label == label for c in out):  # two tasks on one dataset: name the target field
            label = label[:-1] + f" ({t.key.partition('?')[2] or t.task})."
        out.append(TaskColumn(t.key, label, t.kind))
    return out


def write_report(cfg: SweepConfig, rows_: list[dict], grid: Grid | None = None) -> dict:
    """tables.md, summary.json and the plots from the rows of the current grid."""
    from downstream.curves import plot_fraction_curves
    from downstream.edge_report import plot_pareto, render_edge_table, slug
    from downstream.ranks import render_ranks

    out = Path(cfg.out)
    agg = aggregate(rows_)
    grid = grid or parse_grid(cfg)
    encoders, methods = grid.rows
    tasks = task_columns(grid.tasks)
    fractions = {"finetune": cfg.fractions, "linear": cfg.linear_fractions}
    ranks_md, ranks = render_ranks(agg, encoders + methods, tasks, fractions)
    md = render_tables(agg, encoders, tasks, fractions, len(cfg.seeds), kd_rows=methods)
    contamination = render_contamination(agg, encoders + methods, tasks)
    md += "\n" + contamination if contamination else ""
    md += "\n" + render_edge_table(agg, encoders + methods, tasks)
    if ranks_md:
        md += "\n" + ranks_md
    write_text(out / "tables.md", md)
    plots = []
    for mode in dict.fromkeys([*cfg.modes, *(["finetune"] if methods else [])]):
        p = out / f"fractions_{mode}.png"
        if plot_fraction_curves(agg, encoders, tasks, fractions[mode], mode, p, kd_rows=methods):
            plots.append(p.name)
    for t in tasks:
        p = out / f"pareto_{slug(t.label.rstrip('.'))}.png"
        if plot_pareto(agg, encoders + methods, methods, t, p):
            plots.append(p.name)
    for pattern in ("fractions_*.png", "pareto_*.png"):  # an earlier grid's: they would show rows it no longer has
        for stale in out.glob(pattern):
            if stale.name not in plots:
                stale.unlink(missing_ok=True)
    summary = {
        "cells": len(rows_),
        "results": [
            {"task": t, "encoder": e, "mode": m, "fraction": f, **{k: v for k, v in d.items()}}
            for (t, e, m, f), d in sorted(agg.items())
        ],
        "ranks": ranks,
        "plots": plots,
    }
    write_json(out / "summary.json", summary)
    return summary


@dataclass(frozen=True)
class PlannedCell:
    """A cell with its resolved run config, its KD recipe config and its key."""

    cell: Cell
    config: RunConfig
    kd: KDCellConfig | None
    key: str
    legacy_keys: tuple[str, ...] = ()  # its keys in older sweeps: a row stored under one is this cell's
    inputs: dict = field(default_factory=dict)  # what it is computed from (downstream.inputs)

    def stored(self, by_key: dict[str, Any]) -> Any:
        """This cell's entry in ``by_key`` under its key or an older one (None: not there)."""
        for k in (self.key, *self.legacy_keys):
            if k in by_key:
                return by_key[k]
        return None

    @property
    def work(self) -> CellWork:
        c = self.cell
        row = ("kd" if self.kd is not None else "n/a") if c.method else c.mode
        features = (c.task.key, c.encoder) if row == "linear" and c.task.kind == "cls" else None
        return CellWork(self.key, row, c.task.kind, c.fraction, features)


def plan_cells(cfg: SweepConfig, grid: Grid) -> list[PlannedCell]:
    """Every cell of the grid, in grid order, resolved and keyed."""
    from downstream.kd.cell import teacher_checkpoint, teacher_encoder

    out, stamps = [], InputStamps()
    for c in cells(cfg, grid):
        rc = cell_config(cfg, c)
        kd = kd_cell_config(cfg, c, rc) if c.method else None
        files = [f for f in (teacher_checkpoint(kd),) if f]
        inputs = stamps.of(rc, [e for e in (c.encoder, teacher_encoder(kd)) if e], files)
        key = cell_key(c, rc, kd, inputs)
        legacy = (cell_key(c, rc, kd), cell_key(c, rc, kd, legacy=True))
        out.append(PlannedCell(c, rc, kd, key, legacy, inputs))
    return out


def cells_to_run(out: Path, plan: list[PlannedCell], part: Part | None) -> list[PlannedCell]:
    """The cells no results file holds yet; with ``part``, only those of its slice (:mod:`downstream.sweep_parts`)."""
    rows = read_results(out)
    done = {r.get("key"): r for r in rows}
    todo = [p for p in plan if p.stored(done) is None]
    warn_changed_inputs(rows, todo)
    if part is None:
        return todo
    work = {p.key: p.work for p in plan}
    keys = planned(out, part, list(work), [p.key for p in todo])
    unplanned = len({p.key for p in todo} - set(keys))
    if unplanned:
        log.warning(
            f"sweep part {part}: {unplanned} cell(s) to do are not in the parts' plan (made when the first part "
            "started; their results went missing since): no part runs them, the run without part= does"
        )
    mine = slice_of([work[k] for k in keys if k in work], part)
    return [p for p in todo if p.key in mine]


def warn_changed_inputs(rows: Sequence[dict], todo: Sequence[PlannedCell]) -> None:
    """Say which cells run again because their dataset, an encoder folder or a file changed since they ran."""
    last = {json.dumps(r.get("cell"), sort_keys=True): r for r in rows}  # the cell's latest run
    changed: dict[str, int] = {}
    for p in todo:
        r = last.get(json.dumps(p.cell.record(), sort_keys=True))
        if r is None or "inputs" not in r:
            continue
        for name in sorted(set(r["inputs"]) | set(p.inputs)):
            if r["inputs"].get(name) != p.inputs.get(name):
                kind, _, what = name.partition(":")
                what = f"task {p.cell.task.key}'s data" if name == "data" else f"{kind} {what}"
                changed[what] = changed.get(what, 0) + 1
    if changed:
        log.warning(
            "sweep: changed since their cells ran, so those cells run again: "
            + ", ".join(f"{what} ({n} cell{'s' * (n > 1)})" for what, n in changed.items())
        )


def _run_cell(p: PlannedCell, acc, cache, latency, label: str) -> dict:
    from downstream.kd.cell import run_kd_cell
    from downstream.runner import cpu_threads, run

    if p.cell.method:
        with cpu_threads(p.config.num_workers, acc.device):
            metrics = run_kd_cell(p.config, p.cell.method, p.kd, task_label=label, latency=latency)
    else:
        metrics = run(p.config, accelerator=acc, cache=cache, latency=latency)
    metrics.pop("test_per_image", None)
    return metrics


def _record(results: Path, p: PlannedCell, metrics: dict, position: str) -> None:
    record = {"key": p.key, "cell": p.cell.record(), "inputs": p.inputs, "config": to_dict(p.config)}
    record["metrics"] = metrics
    if p.kd is not None:
        record["kd_config"] = to_dict(p.kd.config)
    append_jsonl(results, record)
    if "na" in metrics:
        score = f"n/a ({metrics['na']})"
    else:
        t = metrics["test"]
        score = f"dice {t['dice']:.4f}" if "dice" in t else f"acc {t['accuracy']:.4f}"
    log.info(f"[{position}] {p.key.rsplit('|', 1)[0]}: {score} ({metrics['time_s']:.0f}s)")


def _run_cells(cfg: SweepConfig, grid: Grid, todo: list[PlannedCell], acc, results: Path) -> int:
    """Run ``todo`` in order, appending each finished cell to ``results``; the number run.
    :class:`~sonodistill.stop.Stopped` when a stop signal came (the finished cells are in ``results``)."""
    from downstream.edge.profile import LatencyCache
    from downstream.probe import FeatureCache

    labels = {t.key: t.label for t in task_columns(grid.tasks)}
    cache_dir = Path(cfg.run.cache_dir or Path(cfg.out) / "cache")
    if acc.is_main_process and (stale := remove_stale_temporaries(cache_dir)):
        log.info(f"removed {stale} half-written cache file(s) a killed run left in {cache_dir}")
    cache, latency = FeatureCache(cache_dir), LatencyCache(cache_dir / "latency")
    ran = 0
    for p in todo:
        kept = f"{ran} of {len(todo)} cells finished and kept in {results}"
        check_stop(kept)
        if acc.is_main_process:
            _drop_stale_curves(Path(p.config.out))
        try:
            metrics = _run_cell(p, acc, cache, latency, labels[p.cell.task.key])
        except Stopped:  # the running cell stopped at its next training step: dropped, rerun in full
            raise Stopped(
                f"{stop_requested() or 'a stop signal'} received; {kept}, the running one dropped; "
                "run the same command again to continue"
            ) from None
        if acc.is_main_process:
            _record(results, p, metrics, f"{ran + 1}/{len(todo)}")
        ran += 1
    return ran


def _drop_stale_curves(folder: Path) -> None:
    """The TensorBoard files an earlier run of a cell left in its folder (stopped, or run with other
    settings): the cell starts over, and its curves would show twice. Not in a KD cell with finished
    stages (``*/stage.json``): it reuses them, and their curves are the only ones there will be (a
    retrained stage's stopped attempt stays beside its new curves, as ``kd train`` keeps it)."""
    if folder.is_dir() and any(folder.glob("*/stage.json")):
        return
    stale = sorted(folder.rglob("events.out.tfevents.*")) if folder.is_dir() else []
    for path in stale:
        path.unlink()
    if stale:
        log.info(f"{folder}: removed {len(stale)} TensorBoard file(s) of an earlier run of this cell")


def refuse_unchecked(todo: Sequence[PlannedCell]) -> None:
    """``strict_decontamination``: check the encoder of every cell still to run (for a KD cell, the
    encoder its teacher is built from) against its task's test split before any cell runs (one split
    per task, as the cells will use it)."""
    from downstream.kd.cell import teacher_encoder
    from downstream.runner import encoder_check, prepare

    prepared: dict[str, Any] = {}
    for p in todo:
        spec = p.config.encoder if p.cell.method is None else teacher_encoder(p.kd)
        if not spec or not p.config.strict_decontamination:
            continue
        if p.cell.task.key not in prepared:
            prepared[p.cell.task.key] = prepare(p.config)[:2]
        encoder_check(spec, p.config.task, True, *prepared[p.cell.task.key])


def write_splits(cfg: SweepConfig) -> list[str]:
    """Make (or reuse) the split of every dataset of the sweep's tasks, as its first cell would,
    and return their paths: build a pretraining corpus with ``--exclude`` of each before the sweep
    runs (``--splits-only``; the encoders and KD methods, which may not exist yet, are not read)."""
    from downstream.runner import prepare

    made: dict[str, None] = {}
    seed = int(cfg.seeds[0]) if cfg.seeds else 0
    for t in resolve_tasks(cfg):  # a split depends on its task's data alone: any mode, fraction and seed
        rc = cell_config(cfg, Cell(t, _dataset_name(t.data), "splits", "rand", "finetune", 1.0, seed))
        if rc.split.file not in made:
            prepare(rc)
            made[rc.split.file] = None
    return list(made)


def check_before_cells(cfg: SweepConfig, grid: Grid) -> None:
    """What would otherwise stop the sweep in its first cell that meets it, hours in: every encoder
    spec well formed (its folder there), the run's image size and training stage, and every label
    fraction in (0, 1] (each KD method's values are checked when it is parsed)."""
    for _, spec in grid.encoders:
        check_spec(spec)
    check_values(cfg, grid)


def check_values(cfg: SweepConfig, grid: Grid | None = None) -> None:
    """The values of :func:`check_before_cells`; without ``grid`` (``--show-config``, which prints a
    config for data folders and encoders that may not be there yet) the methods parsed, no task read."""
    from downstream.kd.cell import parse_methods
    from downstream.kd.recipes.base import CONFIGS
    from downstream.kd.registry import RECIPES
    from downstream.splits import check_ratios

    if cfg.part:
        Part.parse(cfg.part)
    if grid is None:
        parse_methods(cfg.methods, dict(parse_encoder(e) for e in cfg.encoders))
    tasks = grid.tasks if grid is not None else []
    check_stages(cfg.run, "run.")
    for kind in sorted({t.kind for t in tasks}):  # run.train.select serves every task of the sweep
        check_selects(cfg.run, VAL_NAMES[kind], kind, "run.")
    check_ratios(cfg.run.split.ratios)
    if cfg.run.image_size % 32 and any(t.kind == "seg" for t in tasks):
        raise UserError(f"run.image_size: U-Net segmentation needs a multiple of 32, got {cfg.run.image_size}")
    check_not_empty(cfg)
    for key in ("fractions", "linear_fractions", "seeds"):
        values = getattr(cfg, key)
        if len(set(values)) != len(values):  # a repeated seed would count one run twice in the mean +- std
            raise UserError(f"{key}: expected distinct values, got {values}")
        bad = [f for f in values if not (0 <= f < 2**32 if key == "seeds" else 0 < f <= 1)]
        if bad:
            expected = "integers from 0 to 2**32-1" if key == "seeds" else "fractions in (0, 1]"
            raise UserError(f"{key}: expected {expected}, got {bad}")
    stems = [f.stem for f in CONFIGS.glob("*.yaml")]
    presets = {stem.removesuffix(f"_{r}") for stem in stems for r in RECIPES if stem.endswith(f"_{r}")}
    for name in cfg.kd_presets:
        if not name.endswith((".yaml", ".yml")) and name not in presets:
            raise UserError(f"kd_presets: no preset '{name}' ({', '.join(sorted(presets))}, or a YAML file)")


def check_not_empty(cfg: SweepConfig) -> None:
    """An empty list that leaves a row (or the whole sweep) without cells is a mistake, not a sweep of
    nothing: one line naming it."""
    rows = bool(cfg.encoders)
    needed = {
        "tasks": "",
        "seeds": "",
        "modes": " for the encoder rows" if rows else None,
        "fractions": " for fine-tuning and the KD rows" if cfg.methods or (rows and "finetune" in cfg.modes) else None,
        "linear_fractions": " for mode 'linear' (or leave 'linear' out of modes)"
        if rows and "linear" in cfg.modes
        else None,
    }
    for key, what in needed.items():
        if what is not None and not getattr(cfg, key):
            raise UserError(f"{key}: expected at least one value{what}, got [] (the sweep would run no cell)")


def checked_grid(cfg: SweepConfig) -> Grid:
    """The grid of ``cfg`` (tasks, encoders and methods parsed once), every setting checked: what
    :func:`run_sweep` runs; :class:`UserError` before anything is written."""
    grid = parse_grid(cfg)
    check_before_cells(cfg, grid)  # the part too
    return grid


def run_sweep(cfg: SweepConfig, *, max_cells: int | None = None, grid: Grid | None = None) -> dict:
    """Run the missing cells (at most ``max_cells``; with ``cfg.part`` only that part's slice), then write
    the report; a part writes none (the same command without ``part`` does, once every part is done).
    ``grid``: :func:`checked_grid` of ``cfg``, when the caller has it already."""
    out = Path(cfg.out)
    grid = grid or checked_grid(cfg)
    part = Part.parse(cfg.part) if cfg.part else None
    with one_writer(out, part):  # no cell run twice at once: parts against the run that merges them
        return _run_grid(cfg, grid, part, max_cells)


def _run_grid(cfg: SweepConfig, grid: Grid, part: Part | None, max_cells: int | None) -> dict:
    from sonodistill.world import make_accelerator

    out = Path(cfg.out)
    plan = plan_cells(cfg, grid)
    todo = cells_to_run(out, plan, part)
    refuse_unchecked(todo)
    head, done = ({"part": str(part)} if part is not None else {}), len(_rows(out, plan))
    if part is not None and not todo:
        log.info(f"sweep part {part}: nothing to do")
        return {**head, "ran": 0, "remaining": 0, "cells": len(plan), "done": done}
    acc = make_accelerator(cfg.run.mixed_precision, key="run.mixed_precision")
    if part is None and todo and acc.is_main_process and any((out / "parts").glob("plan-*-*.json")):
        log.warning(f"sweep: the parts left {len(todo)} cell(s) to do; running them here, in this one process")
    if acc.is_main_process:
        save_config(dataclasses.replace(cfg, part=""), out / "sweep.yaml")  # the same file from every part
        scope = f"{len(todo)} of them in part {part}" if part else f"{len(todo)} to run"
        log.info(f"sweep: {len(plan)} cells, {done} already done, {scope}")
    ran = _run_cells(cfg, grid, todo[:max_cells], acc, results_path(out, part))
    acc.wait_for_everyone()
    rows_ = _rows(out, plan)
    summary = {**head, "ran": ran, "remaining": len(todo) - ran, "cells": len(plan), "done": len(rows_)}
    if part is None and acc.is_main_process:
        write_report(cfg, rows_, grid)
        if len(rows_) == len(plan):  # the grid done: parts started later plan from what is to do then
            drop_plans(out)
    return summary


def _rows(out: Path, plan: list[PlannedCell]) -> list[dict]:
    """The finished cells of the grid from every results file, in grid order (as one process writes them)."""
    by_key = {r["key"]: r for r in read_results(out) if "key" in r}
    found = (p.stored(by_key) for p in plan)
    return [r for r in found if r is not None]


@cli_main
def main(argv: Sequence[str] | None = None) -> dict:
    p = CommandParser(prog="python -m downstream.sweep", description=__doc__.splitlines()[0])
    add_config_args(p, SweepConfig)
    p.add_argument("--max-cells", type=int, default=None, help="run at most N missing cells, then report")
    p.add_argument("--print-tables", action="store_true", help="print tables.md when done")
    p.add_argument("--splits-only", action="store_true", help="write each dataset's splits.json, print them, stop")
    args = parse_command_line(p, argv)
    if "part" in {o.split("=", 1)[0].strip() for o in args.overrides if not o.split("=", 1)[-1].strip()}:
        Part.parse("")  # `part=$PART` with PART unset: an error, not the whole sweep in every task
    cfg = config_from_args(SweepConfig, args, check=check_values)
    # a bad setting refused before `out` is created (--splits-only reads no encoder or method: they
    # may not exist yet)
    grid = None if args.splits_only else checked_grid(cfg)
    main_rank = is_main_rank()
    owned = claimed(cfg.out, "downstream.sweep", key="out", write=main_rank, only_own=True, follow=not main_rank)
    with owned, StopRequest():
        if args.splits_only:  # to build a corpus with --exclude of them before the sweep (a stop: exit 75)
            paths = write_splits(cfg)
            print("\n".join(paths))
            return {"splits": paths}
        # SIGTERM/SIGINT/SIGUSR1: stop in the running cell, keep the finished ones, exit 75
        summary = run_sweep(cfg, max_cells=args.max_cells, grid=grid)
    if args.print_tables and cfg.part:  # a SLURM array task passes the merge's arguments too
        log.info("--print-tables: a part writes no tables; the same command without part= writes and prints them")
    elif args.print_tables and is_main_rank():
        print((Path(cfg.out) / "tables.md").read_text())
    if is_main_rank():  # one summary line, however many processes ran the cells
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
