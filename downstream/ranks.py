"""Cross-task summary of a multi-task sweep (``downstream/configs/suite.yaml``): the mean rank of
every model per mode and label fraction.

On each task, the models that ran in a (mode, fraction) column are ranked by their mean test
metric over seeds (Dice for segmentation, accuracy for classification; rank 1 = best, ties share
the average rank, as scipy's ``rankdata``); a model's entry is its mean rank over the tasks it ran
on, with that number of tasks. KD rows are fine-tuning rows; a KD recipe that does not apply to a
task is left out of that task's ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from downstream.report import DASH, markdown_table
from downstream.tables import TaskColumn, headline


def mean_ranks(
    agg: dict, rows: Sequence[str], tasks: Sequence[TaskColumn], columns: Sequence[tuple[str, float]]
) -> dict[tuple[str, float], dict[str, tuple[float, int]]]:
    """``(mode, fraction) -> {row: (mean rank, tasks ranked on)}``."""
    from scipy.stats import rankdata

    out: dict[tuple[str, float], dict[str, tuple[float, int]]] = {}
    for mode, frac in columns:
        per_row: dict[str, list[float]] = {}
        for t in tasks:
            mk, _ = headline(t.kind)
            scored = [
                (r, float(np.mean(agg[(t.key, r, mode, frac)][mk])))
                for r in rows
                if agg.get((t.key, r, mode, frac), {}).get(mk)
            ]
            if len(scored) < 2:
                continue  # a ranking needs at least two models
            ranks = rankdata([-s for _, s in scored], method="average")
            for (r, _), rank in zip(scored, ranks):
                per_row.setdefault(r, []).append(float(rank))
        out[(mode, frac)] = {r: (float(np.mean(v)), len(v)) for r, v in per_row.items()}
    return out


def render_ranks(
    agg: dict, rows: Sequence[str], tasks: Sequence[TaskColumn], fractions: dict[str, Sequence[float]]
) -> tuple[str, dict]:
    """The Markdown section and its JSON form (``summary.json["ranks"]``)."""
    columns = [(m, float(f)) for m in ("linear", "finetune") for f in sorted(fractions.get(m, ()))]
    columns = [c for c in columns if any((t.key, r, *c) in agg for t in tasks for r in rows)]
    ranks = mean_ranks(agg, rows, tasks, columns)
    columns = [c for c in columns if ranks.get(c)]
    if not columns or len(tasks) < 2:
        return "", {}
    headers = ["Model"] + [f"{'fine-tune' if m == 'finetune' else 'linear'} {f * 100:g}%" for m, f in columns]
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = ranks[c].get(r)
            cells.append(DASH if v is None else f"{v[0]:.2f} ({v[1]})")
        if any(x != DASH for x in cells):
            body.append([r] + cells)
    text = (
        f"## Cross-task summary: mean rank over {len(tasks)} tasks\n\n"
        "Rank of each model on each task by its mean test metric (Dice / accuracy; 1 = best, ties averaged), "
        "averaged over the tasks it ran on (their number in brackets). Lower is better.\n\n"
        + markdown_table(headers, body)
    )
    data = {f"{m}@{f:g}": {r: {"mean_rank": v[0], "tasks": v[1]} for r, v in ranks[(m, f)].items()} for m, f in columns}
    return text, data
