"""Run metrics on the main process: ``metrics.jsonl`` (one line per step), TensorBoard, loss curve PNG.

On resume from step k, lines after k (written by the interrupted run past its last checkpoint)
are dropped and TensorBoard purges its events after k, so curves never show a step twice.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shards.atomic import write_text


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep only records with ``step <= max_step`` (atomic rewrite); a torn last line is dropped."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(rec.get("step", 0)) <= max_step:
            kept.append(line)
    write_text(path, "".join(k + "\n" for k in kept))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


class MetricsLog:
    """Append-only step metrics + TensorBoard scalars under ``out_dir``."""

    def __init__(self, out_dir: str | Path, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "metrics.jsonl"
        truncate_jsonl(self.path, start_step)
        self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=start_step + 1 if start_step else None)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, loss, lw=0.8, color="tab:blue", alpha=0.35, label="loss (eq. 6)")
    ax.plot(steps, smooth, lw=1.6, color="tab:blue", label="loss, moving average")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("token-wise MSE")
    if all(v > 0 for v in loss):
        ax.set_yscale("log")
    lr = [(r["step"], r["lr"]) for r in recs if "lr" in r]
    if lr:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in lr], [v for _, v in lr], lw=1, color="tab:orange", label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(png)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png)
    return png
