"""Small report helpers shared by the downstream stage and the KD recipes: mean +- std cells,
Markdown tables and training curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sonodistill.figures import save_figure

DASH = "–"  # the paper's marker for "not reported"


def seed_stats(values: Sequence[float | None]) -> tuple[float, float, int] | None:
    """(mean, sample standard deviation -- 0 for one value --, count) of the values over seeds that
    are numbers; None when none is. The tables and the fraction plots' error bars both use it."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def mean_std(values: Sequence[float | None], digits: int = 4) -> str:
    """``0.7334 ± 0.0123`` over seeds; a single value prints alone; none (or all None) -> ``–``."""
    stats = seed_stats(values)
    if stats is None:
        return DASH
    mean, std, n = stats
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], bold_max: Sequence[int] = ()) -> str:
    """A GitHub Markdown table. Columns listed in ``bold_max`` get their best (largest leading
    number) cell in bold, like the paper's tables."""
    cells = [[str(c) for c in r] for r in rows]
    for col in bold_max:
        scores = []
        for r in cells:
            try:
                scores.append(float(r[col].split(" ")[0]))
            except (ValueError, IndexError):
                scores.append(-math.inf)
        if scores and max(scores) > -math.inf and sum(s > -math.inf for s in scores) > 1:
            best = max(scores)
            for r, s in zip(cells, scores):
                if s == best:
                    r[col] = f"**{r[col]}**"
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines) + "\n"


def plot_history(
    history: Sequence[Mapping[str, float]], path: str | Path, keys: Sequence[str], title: str = ""
) -> None:
    """Training curves: one panel per key of the per-epoch ``history`` records (x = ``epoch``)."""
    from sonodistill.figures import pyplot

    plt = pyplot()

    keys = [k for k in keys if any(k in h for h in history)]
    if not keys:
        return
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(h["epoch"], h[k]) for h in history if k in h and h[k] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, never 1.25
        ax.set_xlabel("epoch")
        ax.set_title(k.replace("_", " "))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
