"""Run metrics on the main process: ``metrics.jsonl`` (one line per step), TensorBoard, loss curve PNG.

On resume from step k, lines after k (written by the interrupted run past its last checkpoint)
are dropped and TensorBoard purges its events after k (after 0 for a run killed before its first
checkpoint), so curves never show a step twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from sonodistill.jsonl import read_jsonl, truncate_jsonl


class MetricsLog:
    """Append-only step metrics + TensorBoard scalars under ``out_dir``."""

    def __init__(self, out_dir: str | Path, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "metrics.jsonl"
        truncate_jsonl(self.path, start_step)
        self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=start_step + 1)
        self._fh = self.path.open("a", encoding="utf-8")

    def log(self, step: int, **scalars: float) -> None:
        rec = {"step": step, **{k: v for k, v in scalars.items() if v is not None}}
        self._fh.write(json.dumps(rec) + "\n")
        for k, v in rec.items():
            if k != "step":
                self.writer.add_scalar(f"train/{k}", v, step)

    def flush(self) -> None:
        self._fh.flush()
        self.writer.flush()

    def close(self) -> None:
        self._fh.close()
        self.writer.close()


def plot_loss_curve(metrics_path: str | Path, png: str | Path, title: str = "distillation loss") -> Path | None:
    """Loss (log scale) and learning rate against step, from ``metrics.jsonl``; None if empty."""
    from sonodistill.figures import pyplot, save_figure

    plt = pyplot()

    recs = [r for r in read_jsonl(Path(metrics_path)) if "loss" in r]
    if not recs:
        return None
    steps = [r["step"] for r in recs]
    loss = [r["loss"] for r in recs]
    # Per-step losses are noisy (mixup draws); an exponential moving average shows the trend.
    beta = 1.0 - 1.0 / max(2.0, len(loss) / 30)
    ema, smooth = loss[0], []
    for v in loss:
        ema = beta * ema + (1 - beta) * v
        smooth.append(ema)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(steps, loss, lw=0.8, color="tab:blue", alpha=0.35, label="loss (eq. 6)")
    ax.plot(steps, smooth, lw=1.6, color="tab:blue", label="loss, moving average")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("token-wise MSE")
    if all(v > 0 for v in loss):
        from sonodistill.figures import plain_log_ticks

        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis, min(loss), max(loss))
    handles, labels = ax.get_legend_handles_labels()
    lr = [(r["step"], r["lr"]) for r in recs if "lr" in r]
    if lr:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in lr], [v for _, v in lr], lw=1, color="tab:orange", label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    # below the axes: a legend inside covers the curve it explains
    fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, png)
