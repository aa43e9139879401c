"""A sweep in parts: ``python -m downstream.sweep ... part=I/N`` on N processes (GPUs, nodes) sharing ``out``.

Which cells a part runs:

- **The same list for every part.** The cells still to do when the first part starts are written once
  to ``OUT/parts/plan-N-<grid>.json`` (create-if-absent; ``<grid>`` hashes every cell key of the
  grid). Every part slices that list, whenever it starts: a part that starts after another has
  finished cells still gets the same slice, so no cell is run twice or by nobody. A new grid or
  another N makes a new plan from what is still to do then; the merge removes the plans once every
  cell is done, so parts started again later plan afresh.
- **Balanced by expected cost.** Cells are grouped into units (the linear probes of one encoder on
  one classification task share its frozen features: one unit, so they are extracted once), each
  unit's cost comes from :data:`COST`, and the units are dealt longest first
  (:func:`sonodistill.parts.assign`): the slow KD and fine-tuning cells spread over the parts.

What parts write: each its own results file, ``results.part-I-of-N.jsonl`` (:func:`read_results`
merges every results file); the splits, frozen features and latencies are created once, first
writer wins (:func:`sonodistill.atomic.write_once`), and a cell's own folder belongs to that cell.
Cell keys do not depend on the part. Parts write no tables: the same command without ``part`` finds
every cell done and writes them from all parts' results, in grid order (identical to one process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonodistill.atomic import json_text, write_once
from sonodistill.errors import UserError
from sonodistill.jsonl import read_jsonl
from sonodistill.lock import exclusive, holder
from sonodistill.logs import is_main_rank
from sonodistill.parts import Part, assign

RESULTS = "results.jsonl"
# Relative cost of a cell by (row kind, task kind) at the full label set. Measured on the tiny CPU
# sweep (bench/parts.py: seconds per cell relative to fine-tuning a classifier); the KD weight is an
# estimate between the tiny presets (1.2: tiny teachers) and the paper presets, where a cell trains a
# ViT teacher and two students, each about one fine-tuning run.
COST = {
    ("linear", "cls"): 0.2,  # one linear layer on cached features
    ("linear", "seg"): 0.8,  # a U-Net decoder on a frozen encoder
    ("finetune", "cls"): 1.0,
    ("finetune", "seg"): 1.5,
    ("kd", "cls"): 3.0,
    ("kd", "seg"): 3.0,
    ("n/a", "cls"): 0.0,  # a KD recipe of the other task kind: nothing to train
    ("n/a", "seg"): 0.0,
}
FIXED = 0.3  # evaluation, edge column, start-up: the share of a full-label cell that does not scale with the labels
FEATURES = 0.5  # extracting one dataset's frozen features (once per unit of linear probes)


def results_path(out: Path, part: Part | None) -> Path:
    """Where a process appends its finished cells: ``results.jsonl``, or its part's own file."""
    return out / (RESULTS if part is None else f"results.{part.tag}.jsonl")


def read_results(out: Path) -> list[dict[str, Any]]:
    """Every finished cell of ``results.jsonl`` and of the parts' files, each key once (the first)."""
    seen: set[str] = set()
    rows = []
    for path in [out / RESULTS, *sorted(out.glob("results.part-*-of-*.jsonl"))]:
        for r in read_jsonl(path):
            if r.get("key") not in seen:
                seen.add(r.get("key"))
                rows.append(r)
    return rows


@dataclass(frozen=True)
class CellWork:
    """What the slicing needs to know of a cell."""

    key: str
    row: str  # linear | finetune | kd | n/a
    task_kind: str  # cls | seg
    fraction: float
    features: tuple | None = None  # linear probes sharing one encoder's frozen features: (task, encoder)

    @property
    def cost(self) -> float:
        """Expected cost (its share of frozen features aside): kind weight x (fixed + label fraction)."""
        return COST[(self.row, self.task_kind)] * (FIXED + self.fraction)


def slice_of(cells: Sequence[CellWork], part: Part) -> set[str]:
    """The keys of ``part``'s slice of ``cells``, dealt by expected cost (see the module docstring)."""
    units: dict[object, list[CellWork]] = {}
    for c in cells:
        units.setdefault(c.features or c.key, []).append(c)
    costs = [sum(c.cost for c in m) + (FEATURES if m[0].features else 0.0) for m in units.values()]
    owner = assign(costs, part.count)
    return {c.key for members, p in zip(units.values(), owner) if p == part.index for c in members}


def planned(out: Path, part: Part, grid_keys: Sequence[str], todo: Sequence[str]) -> list[str]:
    """The keys still to do when the first part of this grid and N started (``todo`` if this is it).
    Nothing to do writes no plan: a grid run again in parts later plans from what is to do then."""
    digest = hashlib.sha1("\n".join(grid_keys).encode()).hexdigest()[:12]
    path = out / "parts" / f"plan-{part.count}-{digest}.json"
    if not todo and not path.exists():
        return []
    check_same_grid(out, part, digest)
    if not path.exists():
        check_no_unfinished_plan(out, part, path)
    write_once(path, json_text({"parts": part.count, "grid": digest, "todo": list(todo)}))
    try:
        return list(json.loads(path.read_text())["todo"])
    except (ValueError, KeyError) as exc:
        raise UserError(f"{path}: not a sweep plan ({exc}); delete it to plan the parts again") from None


def check_no_unfinished_plan(out: Path, part: Part, path: Path) -> None:
    """Refuse a new plan while the parts of another grid (the config edited while array tasks were
    queued) have cells left: each part would slice its own grid, and the merge would quietly run
    what the first grid's parts left."""
    done = {r.get("key") for r in read_results(out)}
    for other in sorted((out / "parts").glob(f"plan-{part.count}-*.json")):
        if other == path:
            continue
        try:
            left = [k for k in json.loads(other.read_text())["todo"] if k not in done]
        except (OSError, ValueError, KeyError):
            continue  # not a plan: the part of its grid says so
        if left:
            raise UserError(
                f"out {out}: the parts of another sweep config planned {other.name} and have {len(left)} cell(s) "
                "left; the parts of one sweep share one config: run them with the config they started with, or "
                f"delete {other} to give them up"
            )


def check_same_grid(out: Path, part: Part, digest: str) -> None:
    """Record the grid this part runs; refuse when a part of another grid is running in ``out`` (its
    plan slices other cells: both would run some of them into the same folders at once)."""
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    (parts / f".grid-{part.tag}").write_text(digest + "\n", encoding="utf-8")  # read only while its part runs
    for f in sorted(parts.glob(".grid-part-*")):
        tag = f.name.removeprefix(".grid-")
        if tag == part.tag or not (pid := holder(parts / f".lock-{tag}")):
            continue
        if f.read_text(encoding="utf-8").strip() not in ("", digest):
            which = tag.removeprefix("part-").replace("-of-", "/")
            raise UserError(
                f"out {out}: sweep part={which} (pid {pid}) is running another grid (a setting of the sweep "
                "differs: tasks, encoders, methods, modes, fractions, seeds or a run setting; or their inputs changed "
                "since it started: dataset files, an encoder folder, a teacher checkpoint): the parts of one sweep "
                "share one config; wait for it, or use another out"
            )


def drop_plans(out: Path) -> None:
    """Remove the parts' plans once the grid is done (cells whose results go missing later, or a
    grid run again in parts, are planned afresh)."""
    for path in (out / "parts").glob("plan-*-*.json"):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def one_writer(out: Path, part: Part | None) -> Iterator[None]:
    """While the block runs: a part is the only run of that part in ``out``, and the run without
    ``part`` (which runs what is left and writes the tables) the only run at all -- started while a
    part still runs, it would run that part's cells a second time into the same cell folders.
    Advisory locks (:mod:`sonodistill.lock`) the kernel drops with their holder: a killed run
    leaves nothing to clean up. Rank 0 of a distributed run holds them for its ranks."""
    if not is_main_rank():
        yield
        return
    parts = out / "parts"
    if part is None:
        with exclusive(out / ".lock", f"out {out}"):
            running = [(f.name[len(".lock-") :], pid) for f in sorted(parts.glob(".lock-*")) if (pid := holder(f))]
            if running:
                tag, pid = running[0]
                which = tag.removeprefix("part-").replace("-of-", "/")
                raise UserError(
                    f"out {out}: sweep part={which} is still running (pid {pid}); run the sweep without part= "
                    "once every part has finished"
                )
            yield
        return
    with exclusive(parts / f".lock-{part.tag}", f"out {out} part={part}"), _grid_mark(parts / f".grid-{part.tag}"):
        pid = holder(out / ".lock")
        if pid:
            raise UserError(f"out {out}: a sweep without part= (pid {pid}) is running in it; start the parts after it")
        # parts of another N slice the cells otherwise: both would run some cells into the same folders
        for f in sorted(parts.glob(".lock-part-*")):
            which = f.name.removeprefix(".lock-part-").replace("-of-", "/")
            if not which.endswith(f"/{part.count}") and (pid := holder(f)):
                raise UserError(
                    f"out {out}: sweep part={which} is running (pid {pid}); the parts of one sweep share N "
                    f"(part=I/{which.rsplit('/', 1)[-1]}), or wait for it to end"
                )
        yield


@contextlib.contextmanager
def _grid_mark(path: Path) -> Iterator[None]:
    """Remove the part's grid record (:func:`check_same_grid`) when it ends."""
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
