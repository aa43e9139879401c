"""Sweep results -> the paper's Tables 1-4 (Markdown, mean ± std over seeds).

Rows are encoders (in config order), columns follow paper 002: DDTI Seg. (Dice, IoU), BUSI Seg.
(Dice, IoU), BUSI Cls. (Acc, F1); generic ``seg:DATA`` / ``cls:DATA`` tasks get their own
columns after those. Table 1 = linear probe on 100 % of the labels, Table 2 = fine-tuning on
100 %, Table 3 = fine-tuning on label fractions below 100 % (3b: linear probing, if swept),
Table 4 = parameters vs fine-tuned performance. Cells not run show ``–``; the best cell of a
column is bold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from downstream.report import DASH, markdown_table, mean_std

PAPER_TASK_ORDER = ("ddti-seg", "busi-seg", "busi-cls")


@dataclass(frozen=True)
class TaskColumn:
    key: str  # cell task key: "ddti-seg" or "seg:<data>"
    label: str  # "DDTI Seg."
    kind: str  # seg | cls


def task_label(task_key: str, dataset: str = "") -> str:
    if task_key in PAPER_TASK_ORDER:
        name, kind = task_key.split("-")
        return f"{name.upper()} {kind.capitalize()}."
    kind, _, _ = task_key.partition(":")
    return f"{dataset or task_key} {kind.capitalize()}."


def aggregate(rows: Iterable[dict]) -> dict[tuple, dict[str, list[float]]]:
    """``(task_key, encoder_name, mode, fraction) -> {metric: [value per seed]}`` plus ``params_m``."""
    agg: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        c, m = r["cell"], r["metrics"]
        key = (c["task_key"], c["encoder_name"], c["mode"], float(c["fraction"]))
        for k in ("dice", "iou", "accuracy", "macro_f1", "auc"):
            if k in m["test"]:
                agg[key][k].append(m["test"][k])
        agg[key]["params_m"].append(m["params_m"])
    return agg


def _cell(agg, task, enc, mode, frac, metric) -> str:
    return mean_std(agg.get((task, enc, mode, frac), {}).get(metric, []))


def _metric_pairs(kind: str) -> list[tuple[str, str]]:
    return [("dice", "Dice"), ("iou", "IoU")] if kind == "seg" else [("accuracy", "Acc"), ("macro_f1", "F1")]


def render_tables(
    agg: dict, encoders: Sequence[str], tasks: Sequence[TaskColumn], fractions: dict[str, Sequence[float]], seeds: int
) -> str:
    tasks = sorted(tasks, key=lambda t: PAPER_TASK_ORDER.index(t.key) if t.key in PAPER_TASK_ORDER else 99)
    parts = [
        f"# Downstream results\n\nTest-set metrics, mean ± std over {seeds} seed(s) (std omitted for one seed). "
        "Segmentation: mean per-image Dice / IoU (empty truth and empty prediction count as 1). "
        "Classification: accuracy and macro-F1.\n"
    ]

    def ran(mode: str, fracs: Sequence[float]) -> bool:
        return any(m == mode and f in fracs for (_, _, m, f) in agg)

    def full_table(mode: str, title: str) -> None:
        if not ran(mode, [1.0]):
            parts.append(f"## {title}\n\nNot run in this sweep (add `{mode}` to `modes` with fraction 1.0).\n")
            return
        headers = ["Model"] + [f"{t.label} {name}" for t in tasks for _, name in _metric_pairs(t.kind)]
        rows = [
            [e] + [_cell(agg, t.key, e, mode, 1.0, k) for t in tasks for k, _ in _metric_pairs(t.kind)]
            for e in encoders
        ]
        parts.append(f"## {title}\n\n" + markdown_table(headers, rows, bold_max=range(1, len(headers))))

    full_table("linear", "Table 1: Linear probing on frozen encoders (100 % of the training labels)")
    full_table("finetune", "Table 2: Full fine-tuning on all labeled data")
    limited = [
        (m, t)
        for m, t in (("finetune", "fine-tuning"), ("linear", "linear probing"))
        if (fr := [f for f in fractions.get(m, ()) if f < 1.0]) and ran(m, fr)
    ]
    for i, (mode, title) in enumerate(limited):
        fr = sorted(f for f in fractions.get(mode, ()) if f < 1.0)
        headers, cols = ["Model"], []
        for t in tasks:
            k, name = _metric_pairs(t.kind)[0]
            for f in fr:
                headers.append(f"{t.label} {name} {f * 100:g}%")
                cols.append((t.key, f, k))
        rows = [[e] + [_cell(agg, tk, e, mode, f, k) for tk, f, k in cols] for e in encoders]
        number = "3" if i == 0 else "3b"  # keep the paper's numbering: Table 4 is always capacity
        parts.append(
            f"## Table {number}: Limited labels, {title} (label fraction of the training split)\n\n"
            + markdown_table(headers, rows, bold_max=range(1, len(headers)))
        )
    title = "Table 4: Model capacity vs. performance after full fine-tuning"
    if not ran("finetune", [1.0]):
        parts.append(f"## {title}\n\nNot run in this sweep (needs `finetune` at fraction 1.0).\n")
        return "\n".join(parts)
    headers = ["Model", "Params (M)"] + [f"{t.label} {_metric_pairs(t.kind)[0][1]}" for t in tasks]
    rows = []
    for e in encoders:
        params = [v for (tk, en, _, _), d in agg.items() if en == e for v in d.get("params_m", [])]
        p = f"{params[0]:.1f}" if params else DASH
        rows.append([e, p] + [_cell(agg, t.key, e, "finetune", 1.0, _metric_pairs(t.kind)[0][0]) for t in tasks])
    parts.append(f"## {title}\n\n" + markdown_table(headers, rows, bold_max=range(2, len(headers))))
    return "\n".join(parts)
