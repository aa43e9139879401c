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
