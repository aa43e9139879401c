"""KD report pieces on top of :mod:`downstream.report` (Markdown tables, mean ± SD, atomic PNGs):
percent cells, the report file, and the recipes' plots (stage curves, lines, grouped bars)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from downstream.report import markdown_table as md_table  # noqa: F401  (re-exported for the recipes)
from downstream.report import mean_std
from sonodistill.atomic import write_text
from sonodistill.figures import plain_log_ticks, pyplot, save_figure


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def mean_sd(values: Sequence[float | None], digits: int = 2) -> str:
    """Fractions as percent ``mean ± SD`` over runs (sample SD; :func:`downstream.report.mean_std`)."""
    return mean_std([None if v is None else 100 * v for v in values], digits)


def millions(n: int) -> str:
    return f"{n / 1e6:.3f}M"


def write_report(path: str | Path, title: str, sections: Sequence[tuple[str, str]]) -> None:
    body = [f"# {title}", ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text.rstrip(), ""]
    write_text(path, "\n".join(body))


def _savefig(fig, path: str | Path) -> None:
    fig.tight_layout()
    save_figure(fig, path)


def plot_history(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, metric: str = "accuracy"
) -> None:
    """Loss and ``metric`` per epoch (train solid, validation dashed) for each training stage."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, hist) in enumerate(histories.items()):
        color = f"C{i}"
        ep = [r["epoch"] for r in hist]
        for ax, key in zip(axes, ("loss", metric)):
            if hist and f"train_{key}" in hist[0]:
                ax.plot(ep, [r[f"train_{key}"] for r in hist], color=color, marker="o", ms=3, label=f"{name} train")
            if hist and f"val_{key}" in hist[0]:
                ax.plot(
                    ep, [r[f"val_{key}"] for r in hist], color=color, ls="--", marker="o", ms=3, label=f"{name} val"
                )
    from matplotlib.ticker import MaxNLocator

    losses = [v for line in axes[0].get_lines() for v in line.get_ydata() if v > 0]
    if losses:
        axes[0].set_yscale("log")  # stage losses differ in scale (HDKD adds 10x the feature loss)
        plain_log_ticks(axes[0].yaxis, min(losses), max(losses))
    for ax, key in zip(axes, ("loss", metric)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.1 if handles else 0, 1, 1))
    if handles:  # one legend for both panels, below them (train solid, validation dashed)
        fig.legend(  # long handles: a dashed validation line must show its dashes
            handles, labels, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False, handlelength=4
        )
    save_figure(fig, path)


def plot_lines(
    x: Sequence[Any],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    styles: Mapping[str, str] | None = None,
    xlog: bool = False,
) -> None:
    """One line per series; ``styles`` maps a series name to a matplotlib format string."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, ys in series.items():
        ax.plot(list(range(len(x))) if xlog else x, ys, (styles or {}).get(name, "-o"), label=name)
    if xlog:
        ax.set_xticks(range(len(x)), [str(v) for v in x])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _savefig(fig, path)


def plot_bars(
    labels: Sequence[str],
    groups: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    ylabel: str,
    title: str = "",
) -> None:
    """Grouped bars (e.g. teacher vs student size / latency / FPS), each panel on its own linear axis:
    a bar's height is its value (log bars made a 1.5 MB student look like nothing beside 5.9 MB)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(3.4 * len(groups), 3.6))
    axes = np.atleast_1d(axes)
    for ax, (name, values) in zip(axes, groups.items()):
        ax.bar(labels, values, color=[f"C{i}" for i in range(len(labels))])
        ax.set_title(name)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    if title:
        fig.suptitle(title)
    axes[0].set_ylabel(ylabel)
    _savefig(fig, path)
