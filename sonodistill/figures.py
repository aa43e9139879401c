"""PNG figures written atomically (matplotlib, Agg backend), for every stage's plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sonodistill.atomic import atomic_open


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display on clusters and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    plt = pyplot()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def row_colours(names: list[str]) -> dict[str, Any]:
    """One colour per row name, the same in every panel of a figure (tab10, then tab20)."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def plain_log_ticks(axis: Any, lo: float, hi: float) -> None:
    """A log axis labelled in plain numbers of its unit (1, 2, 5, 10, 20, ...), no minor labels:
    matplotlib's default prints ``2x10^0 3x10^0 ...`` minor labels that run together."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ticks = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0**e for m in (1, 2, 5)]
    inside = [t for t in ticks if lo <= t <= hi]
    if len(inside) < 2:  # a narrow range: label its ends too
        inside = sorted({*inside, float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    axis.set_major_locator(FixedLocator(inside))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def label_points(ax: Any, points: list[tuple[float, float, str]], fontsize: float = 6.5) -> None:
    """Label each point without covering another label or point: per point, the first of eight
    offsets whose text box stays inside the axes and clear of what is already placed."""
    fig = ax.figure
    fig.canvas.draw()  # text extents need a renderer
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    marks = [ax.transData.transform((x, y)) for x, y, _ in points]
    placed: list[Any] = []
    offsets = [(4, 4), (4, -11), (-4, 4), (-4, -11), (4, 12), (-4, 12), (4, -19), (-4, -19)]
    for (x, y, text), (px, py) in zip(points, marks):
        chosen = None
        for dx, dy in offsets:
            ann = ax.annotate(
                text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                ha="left" if dx > 0 else "right",
            )  # fmt: skip
            box = ann.get_window_extent(renderer).expanded(1.05, 1.15)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            hits_mark = any(box.contains(mx, my) for j, (mx, my) in enumerate(marks) if (mx, my) != (px, py))
            if inside and not hits_mark and not any(box.overlaps(b) for b in placed):
                chosen = box
                break
            ann.remove()
        if chosen is None:  # nowhere clear: the first offset, clipped to the axes
            ann = ax.annotate(text, (x, y), xytext=offsets[0], textcoords="offset points", fontsize=fontsize)
            chosen = ann.get_window_extent(renderer)
        placed.append(chosen)


def sheet_tile(gray: Any, side: int = 160) -> Any:
    """A grey image shrunk to fit ``side`` x ``side`` (aspect kept) for a contact sheet."""
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.asarray(gray))
    img.thumbnail((side, side))
    return np.asarray(img)


def image_sheet(rows: list[list[tuple[Any, str]]], path: str | Path, titles: list[str] | None = None) -> Path:
    """A contact sheet: one row per list of (grey ``HxW`` uint8 image, caption) tiles, each row
    optionally titled; images keep their aspect ratio in equal square cells."""
    import numpy as np

    plt = pyplot()
    cols = max(1, max((len(r) for r in rows), default=1))
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 2.0, len(rows) * 2.3), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                img, caption = row[c]
                ax.imshow(np.asarray(img), cmap="gray", vmin=0, vmax=255)
                ax.set_title(caption, fontsize=5.5)
        if titles and titles[r]:
            # above the two-line captions, whatever the tiles' aspect (a fixed axes fraction overlaps them)
            axes[r][0].annotate(
                titles[r],
                (0, 1),
                xycoords="axes fraction",
                xytext=(0, 22),
                textcoords="offset points",
                fontsize=8,
                weight="bold",
                va="bottom",
            )
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
