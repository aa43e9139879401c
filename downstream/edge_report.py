"""The edge view of a sweep: metric vs CPU latency per task (``tables.md``) and ``pareto_<task>.png``.

Latency figures are the medians over a row's cells (one architecture and input size: the cells
share one measurement when ``edge.cache`` is on). The Pareto plot puts every model (row x mode)
of a task at its eager-PyTorch fp32 CPU latency, batch size 1 (the one runtime every row is
timed in) against its mean test metric, one panel per label fraction, and draws the front of
models no other model beats on both axes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from downstream.report import DASH, markdown_table, mean_std
from downstream.tables import TaskColumn, headline, sort_tasks


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if values else None


def _ms(v: float | None) -> str:
    return DASH if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def int8_note(graphs: Sequence[dict], speedup: float | None) -> str:
    """Why INT8 is not faster than onnxruntime fp32, from what onnxruntime actually runs."""
    if speedup is None or speedup >= 1.0 or not graphs:
        return ""
    g = graphs[0]
    reasons = []
    if g.get("fp32_ops"):
        ops = ", ".join(f"{k} x{v}" for k, v in g["fp32_ops"].items())
        reasons.append(f"{g.get('dequantize', 0)} dequantise/quantise round trips around fp32 ops ({ops})")
    if g.get("depthwise_int8_convs"):
        reasons.append(f"{g['depthwise_int8_convs']} of {g['int8_convs']} convolutions depthwise (memory-bound)")
    return "INT8 slower than fp32: " + "; ".join(reasons or ["small convolutions, quantise/dequantise overhead"])


def model_rows(agg: dict, task: str, rows: Sequence[str]) -> list[tuple[str, str]]:
    """(row, mode) pairs of a task that have results, rows in order, linear before fine-tuning."""
    seen = {(r, m) for (t, r, m, _), d in agg.items() if t == task and not d.get("na")}
    return [(r, m) for r in rows for m in ("linear", "finetune") if (r, m) in seen]


def render_edge_table(agg: dict, rows: Sequence[str], tasks: Sequence[TaskColumn]) -> str:
    """One table per task: size, compute, CPU latency (ms) per runtime, INT8 speed-up and metric change,
    and the task metric at each label fraction."""
    parts = [
        "## Edge: metric vs CPU latency (ms, batch size 1)\n\n"
        "CPU latency in ms at batch size 1 and the cell's input size: PyTorch eager fp32, onnxruntime fp32 and "
        "static INT8 (QDQ, per-channel U8S8, calibrated on training images), median over interleaved runs with "
        "fixed intra-op threads. INT8 x = onnxruntime fp32 ms / INT8 ms; INT8 Δ = INT8 metric - fp32 metric on the "
        "test split (mean over cells). ONNX / INT8 are measured for KD students and distilled encoders "
        "(`edge.onnx=auto`).\n"
    ]
    for t in sort_tasks(tasks):
        mk, mname = headline(t.kind)
        fracs = sorted({f for (tk, _, _, f) in agg if tk == t.key})
        pairs = model_rows(agg, t.key, rows)
        if not pairs:
            continue
        headers = [
            "Model",
            "Mode",
            "Params (M)",
            "GMACs",
            "PyTorch ms",
            "ORT fp32 ms",
            "ORT INT8 ms",
            "INT8 x",
            "INT8 Δ",
            *[f"{mname} {f * 100:g}%" for f in fracs],
            "note",
        ]
        body = []
        threads = set()
        for r, m in pairs:
            cells = [d for (tk, rr, mm, _), d in agg.items() if (tk, rr, mm) == (t.key, r, m)]

            def pooled(k, cells=cells):
                return [v for d in cells for v in d.get(k, [])]

            threads |= set(pooled("threads"))
            params, g = _median(pooled("model_params_m")), _median(pooled("gmacs"))
            speed = _median(pooled("int8_speedup"))
            change = pooled("int8_metric_change")
            body.append(
                [
                    r,
                    "fine-tune" if m == "finetune" else "linear",
                    DASH if params is None else f"{params:.2f}",
                    DASH if g is None else f"{g:.3f}",
                    _ms(_median(pooled("eager_ms"))),
                    _ms(_median(pooled("fp32_ms"))),
                    _ms(_median(pooled("int8_ms"))),
                    DASH if speed is None else f"{speed:.2f}",
                    DASH if not change else f"{np.mean(change):+.4f}",
                    *[mean_std(agg.get((t.key, r, m, f), {}).get(mk, [])) for f in fracs],
                    int8_note(pooled("int8_graph"), speed),
                ]
            )
        note = f" Threads: {', '.join(map(str, sorted(threads)))}." if threads else ""
        parts.append(f"### {t.label}{note}\n\n" + markdown_table(headers, body))
    return "\n".join(parts)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, higher y), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


def _pad_axes(ax, xs: list[float], ys: list[float]) -> None:
    """Log latency axis with room around the points for their labels; plain millisecond ticks."""
    from sonodistill.figures import plain_log_ticks

    lo, hi = min(xs), max(xs)
    span = max(np.log10(hi / lo), 0.3)
    x0, x1 = lo / 10 ** (0.12 * span), hi * 10 ** (0.35 * span)  # labels mostly go to the right
    ax.set_xscale("log")
    ax.set_xlim(x0, x1)
    plain_log_ticks(ax.xaxis, x0, x1)
    y_lo, y_hi = min(ys), max(ys)
    dy = max(y_hi - y_lo, 0.02)
    ax.set_ylim(y_lo - 0.12 * dy, y_hi + 0.18 * dy)


def _pareto_legend(fig, plt) -> None:
    """What the marker shapes and the grey line mean, below the panels (never over a point)."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="s", ls="", color="0.4", label="KD student"),
        Line2D([], [], marker="o", ls="", color="0.4", label="fine-tuned encoder"),
        Line2D([], [], marker="^", ls="", color="0.4", label="linear probe"),
        Line2D([], [], marker="o", ls="", color="w", markeredgecolor="k", label="on the Pareto front"),
        Line2D([], [], color="0.6", lw=1, label="Pareto front"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)


def plot_pareto(agg: dict, rows: Sequence[str], kd_rows: Sequence[str], task: TaskColumn, path: str | Path) -> bool:
    """``pareto_<task>.png``: metric vs eager CPU latency, one point per model, one panel per fraction."""
    mk, _ = headline(task.kind)
    mname = "Dice" if task.kind == "seg" else "accuracy"
    fracs = sorted({f for (tk, _, _, f) in agg if tk == task.key})
    panels = []
    for f in fracs:
        pts = []
        for r, m in model_rows(agg, task.key, rows):
            d = agg.get((task.key, r, m, f), {})
            if d.get(mk) and d.get("eager_ms"):
                pts.append((float(np.median(d["eager_ms"])), float(np.mean(d[mk])), r, m))
        if pts:
            panels.append((f, pts))
    if not panels:
        return False
    from sonodistill.figures import label_points, pyplot, row_colours, save_figure

    plt = pyplot()
    colours = row_colours(list(rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.0), squeeze=False)
    for ax, (f, pts) in zip(axes[0], panels):
        front = pareto_front([(x, y) for x, y, _, _ in pts])
        ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="0.6", lw=1, zorder=1)
        for i, (x, y, r, m) in enumerate(pts):
            marker = "s" if r in kd_rows else ("o" if m == "finetune" else "^")
            edge = "k" if i in front else "none"
            ax.scatter(x, y, marker=marker, s=46 if i in front else 28, color=colours[r], edgecolors=edge, zorder=2)
        _pad_axes(ax, [p[0] for p in pts], [p[1] for p in pts])
        ax.set_xlabel("CPU latency, batch 1, PyTorch fp32 (ms)")
        ax.set_ylabel(f"test {mname}")
        ax.set_title(f"{task.label} · {f * 100:g} % labels", fontsize=9)
        ax.grid(alpha=0.3)
        label_points(
            ax, [(x, y, r if r in kd_rows else f"{r} ({'ft' if m == 'finetune' else 'lin'})") for x, y, r, m in pts]
        )
    _pareto_legend(fig, plt)
    fig.suptitle(f"{task.label.rstrip('.')}: test {mname} vs CPU latency", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    save_figure(fig, path)
    return True
