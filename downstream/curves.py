"""Metric vs label fraction, one line per encoder (mean ± std over seeds), one panel per task; KD
students (fine-tuning rows) are drawn dashed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from downstream.report import seed_stats
from downstream.tables import TaskColumn


def plot_fraction_curves(
    agg: dict,
    encoders: Sequence[str],
    tasks: Sequence[TaskColumn],
    fractions: Sequence[float],
    mode: str,
    path: str | Path,
    kd_rows: Sequence[str] = (),
) -> bool:
    """Write the PNG; False (nothing written) when fewer than two fractions were swept, or no row of
    this mode has a finished cell (a sweep of KD rows only has no linear-probe row)."""
    fr = sorted(set(fractions))
    if len(fr) < 2 or not tasks:
        return False
    from sonodistill.figures import pyplot, row_colours, save_figure

    plt = pyplot()
    rows = list(encoders) + (list(kd_rows) if mode == "finetune" else [])
    colours = row_colours(rows)  # a row keeps its colour in every panel
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    drawn: dict[str, object] = {}
    for ax, t in zip(axes[0], tasks):
        metric, name = ("dice", "Dice") if t.kind == "seg" else ("accuracy", "accuracy")
        for e in rows:
            xs, ms, ss = [], [], []
            for f in fr:
                stats = seed_stats(agg.get((t.key, e, mode, f), {}).get(metric, []))
                if stats is not None:  # the tables' mean and sample std
                    xs.append(f * 100), ms.append(stats[0]), ss.append(stats[1])
            if xs:
                kd = e in kd_rows
                style = dict(marker="s" if kd else "o", ms=4, capsize=3, ls="--" if kd else "-", color=colours[e])
                drawn[e] = ax.errorbar(xs, ms, yerr=ss, label=e, **style)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([f * 100 for f in fr])
        ax.set_xticklabels([f"{f * 100:g}%" for f in fr])
        ax.set_xlabel("label fraction")
        ax.set_ylabel(f"test {name}")
        ax.set_title(t.label)
        ax.grid(alpha=0.3)
    if not drawn:  # empty panels say nothing
        plt.close(fig)
        return False
    # one legend for every panel, below them: a panel may lack a row, and a legend inside covers points
    fig.legend(
        [drawn[e] for e in rows if e in drawn], [e for e in rows if e in drawn],
        loc="lower center", ncol=min(4, len(drawn)), fontsize=8, frameon=False,
    )  # fmt: skip
    fig.suptitle(f"{'fine-tuning' if mode == 'finetune' else 'linear probe'}: metric vs label fraction", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.05 * (max(len(drawn) - 1, 0) // 4), 1, 1))
    save_figure(fig, path)
    return True
