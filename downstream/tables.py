"""Sweep results -> the paper's Tables 1-4 (Markdown, mean ± std over seeds).

Rows are encoders (in config order), then KD methods (``methods``, in config order); columns
follow paper 002: DDTI Seg. (Dice, IoU), BUSI Seg. (Dice, IoU), BUSI Cls. (Acc, F1); generic
``seg:DATA`` / ``cls:DATA`` / ``ub:DIR`` tasks get their own columns after those. Table 1 = linear
probe on 100 % of the labels, Table 2 = fine-tuning on 100 %, Table 3 = fine-tuning on label
fractions below 100 % (3b: linear probing, if swept), Table 4 = parameters vs fine-tuned
performance. KD rows train every weight, so they are fine-tuning rows (Tables 2-4). Cells not
run show ``–``; a KD recipe that does not apply to a task shows ``n/a (k)`` with reason ``k``
under the table; a value whose encoder was not checked against the task's test split
(:mod:`downstream.decontamination`) is followed by ``(k)``, the footnote saying why; the best cell
of a column is bold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from downstream.decontamination import footnote, status_text
from downstream.report import DASH, markdown_table, mean_std

PAPER_TASK_ORDER = ("ddti-seg", "busi-seg", "busi-cls")
EDGE_KEYS = ("eager_ms", "gmacs", "fp32_ms", "int8_ms", "int8_speedup", "int8_metric_change")


@dataclass(frozen=True)
class TaskColumn:
    key: str  # cell task key: "ddti-seg", "seg:<data>", "ub:<dir>?mask=..."
    label: str  # "DDTI Seg."
    kind: str  # seg | cls


def task_label(task_key: str, dataset: str = "", kind: str = "") -> str:
    if task_key in PAPER_TASK_ORDER:
        name, k = task_key.split("-")
        return f"{name.upper()} {k.capitalize()}."
    kind = kind or task_key.partition(":")[0]
    return f"{dataset or task_key} {kind.capitalize()}."


def headline(kind: str) -> tuple[str, str]:
    """The metric a task is ranked and plotted by."""
    return ("dice", "Dice") if kind == "seg" else ("accuracy", "Acc")


def aggregate(rows: Iterable[dict]) -> dict[tuple, dict[str, list]]:
    """``(task_key, row_name, mode, fraction) -> {metric: [value per seed]}`` plus ``params_m``, the
    edge column's figures and ``na`` (the reason a KD recipe did not apply)."""
    agg: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        c, m = r["cell"], r["metrics"]
        key = (c["task_key"], c["encoder_name"], c["mode"], float(c["fraction"]))
        if "na" in m:
            agg[key]["na"].append(m["na"])
            continue
        check = m.get("decontamination")
        if check:
            agg[key]["decontamination"].append(status_text(check))
            if footnote(check):
                agg[key]["unchecked"].append(footnote(check))
        for k in ("dice", "iou", "accuracy", "macro_f1", "auc"):
            if k in m["test"]:
                agg[key][k].append(m["test"][k])
        agg[key]["params_m"].append(m["params_m"])
        edge = m.get("edge")
        if edge:
            agg[key]["model_params_m"].append(edge["params_m"])  # the evaluated model (e.g. the whole U-Net)
            agg[key]["eager_ms"].append(edge["eager_ms"])
            agg[key]["gmacs"].append(edge["gmacs"])
            agg[key]["threads"].append(edge["threads"])
            onnx = edge.get("onnx")
            if onnx:
                for k in ("fp32_ms", "int8_ms", "int8_speedup", "int8_metric_change"):
                    agg[key][k].append(onnx[k])
                agg[key]["int8_graph"].append(onnx.get("int8_graph", {}))
    return agg


class Notes:
    """Numbered footnotes of a table: why a cell is ``n/a``, why a value is marked."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def ref(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"({self.reasons.index(reason) + 1})"

    def mark(self, reason: str) -> str:
        return f"n/a {self.ref(reason)}"

    def render(self) -> str:
        return "".join(f"\n({i}) {r}" for i, r in enumerate(self.reasons, 1)) + ("\n" if self.reasons else "")


def cell_text(agg, task, row, mode, frac, metric, notes: Notes | None = None) -> str:
    d = agg.get((task, row, mode, frac), {})
    if d.get("na") and notes is not None:
        return notes.mark(d["na"][0])
    text = mean_std(d.get(metric, []))
    if d.get("unchecked") and notes is not None:  # the encoder's corpus may hold this test split
        text += " " + notes.ref(d["unchecked"][0])
    return text


def _metric_pairs(kind: str) -> list[tuple[str, str]]:
    return [("dice", "Dice"), ("iou", "IoU")] if kind == "seg" else [("accuracy", "Acc"), ("macro_f1", "F1")]


def sort_tasks(tasks: Sequence[TaskColumn]) -> list[TaskColumn]:
    return sorted(tasks, key=lambda t: PAPER_TASK_ORDER.index(t.key) if t.key in PAPER_TASK_ORDER else 99)


def render_tables(
    agg: dict,
    encoders: Sequence[str],
    tasks: Sequence[TaskColumn],
    fractions: dict[str, Sequence[float]],
    seeds: int,
    kd_rows: Sequence[str] = (),
) -> str:
    tasks = sort_tasks(tasks)
    parts = [
        f"# Downstream results\n\nTest-set metrics, mean ± std over {seeds} seed(s) (std omitted for one seed). "
        "Segmentation: mean per-image Dice / IoU (empty truth and empty prediction count as 1). "
        "Classification: accuracy and macro-F1."
        + (
            " KD rows (" + ", ".join(kd_rows) + ") report the distilled student; they train every weight, "
            "so they are fine-tuning rows (Tables 2-4) and train on the encoder rows' splits and label subsets."
            if kd_rows
            else ""
        )
        + "\n"
    ]

    def ran(mode: str, fracs: Sequence[float]) -> bool:
        return any(m == mode and f in fracs for (_, _, m, f) in agg)

    def rows_for(mode: str) -> list[str]:
        return list(encoders) + (list(kd_rows) if mode == "finetune" else [])

    def full_table(mode: str, title: str) -> None:
        if not ran(mode, [1.0]):
            parts.append(f"## {title}\n\nNot run in this sweep (add `{mode}` to `modes` with fraction 1.0).\n")
            return
        notes = Notes()
        headers = ["Model"] + [f"{t.label} {name}" for t in tasks for _, name in _metric_pairs(t.kind)]
        rows = [
            [e] + [cell_text(agg, t.key, e, mode, 1.0, k, notes) for t in tasks for k, _ in _metric_pairs(t.kind)]
            for e in rows_for(mode)
        ]
        parts.append(
            f"## {title}\n\n" + markdown_table(headers, rows, bold_max=range(1, len(headers))) + notes.render()
        )

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
        notes = Notes()
        rows = [[e] + [cell_text(agg, tk, e, mode, f, k, notes) for tk, f, k in cols] for e in rows_for(mode)]
        number = "3" if i == 0 else "3b"  # keep the paper's numbering: Table 4 is always capacity
        parts.append(
            f"## Table {number}: Limited labels, {title} (label fraction of the training split)\n\n"
            + markdown_table(headers, rows, bold_max=range(1, len(headers)))
            + notes.render()
        )
    parts.append(capacity_table(agg, rows_for("finetune"), tasks, ran("finetune", [1.0])))
    return "\n".join(parts)


def capacity_table(agg: dict, models: Sequence[str], tasks: Sequence[TaskColumn], ran: bool) -> str:
    """Table 4: each row's parameter count beside its fully fine-tuned metric on every task."""
    title = "Table 4: Model capacity vs. performance after full fine-tuning"
    if not ran:
        return f"## {title}\n\nNot run in this sweep (needs `finetune` at fraction 1.0).\n"
    headers = ["Model", "Params (M)"] + [f"{t.label} {_metric_pairs(t.kind)[0][1]}" for t in tasks]
    rows = []
    notes = Notes()
    for e in models:
        params = [v for (tk, en, _, _), d in agg.items() if en == e for v in d.get("params_m", [])]
        p = f"{params[0]:.1f}" if params else DASH
        rows.append(
            [e, p] + [cell_text(agg, t.key, e, "finetune", 1.0, _metric_pairs(t.kind)[0][0], notes) for t in tasks]
        )
    what = (
        "\n\nParams (M): an encoder row's encoder alone (the same under a classification or segmentation "
        "head); a KD row's whole deployed model (kd:seg_unet: its U-Net)."
    )
    table = markdown_table(headers, rows, bold_max=range(2, len(headers)))
    return f"## {title}\n\n" + table + what + notes.render()


def render_contamination(agg: dict, encoders: Sequence[str], tasks: Sequence[TaskColumn]) -> str:
    """Which test split each row's encoder (a KD row's: its teacher's) was checked against; rows
    with no check recorded (a KD recipe's own teacher, an n/a cell) are left out, and the section
    is empty when no cell recorded one."""
    rows = []
    for e in encoders:
        row = [e]
        for t in sort_tasks(tasks):
            states = [x for (tk, en, _, _), d in sorted(agg.items()) if (tk, en) == (t.key, e)
                      for x in d.get("decontamination", [])]  # fmt: skip
            row.append(states[0] if states else DASH)
        if any(c != DASH for c in row[1:]):
            rows.append(row)
    if not rows:
        return ""
    return (
        "## Test-set contamination\n\nWhether each encoder's pretraining corpus was built with `--exclude` "
        "of the task's test split (`shards.build --exclude SPLITS.json`: copies of its images left out); "
        "the content hash of the test images is compared with the exclusion sets the encoder carries. "
        "A KD row is judged by the encoder its teacher is built from (`teacher.encoder`).\n\n"
        + markdown_table(["Model", *[t.label for t in sort_tasks(tasks)]], rows)
    )
