"""Segmentation and classification metrics.

Segmentation: Dice and IoU are computed PER IMAGE on binary masks and then averaged over the
test set ("mean Dice", "mean IoU"). Empty-mask convention (documented, tested):

- truth empty and prediction empty   -> Dice 1, IoU 1 (a correct "no lesion");
- truth empty, prediction non-empty  -> Dice 0, IoU 0 (every predicted pixel is a false positive);
- truth non-empty, prediction empty  -> Dice 0, IoU 0.

``dice_lesion`` / ``iou_lesion`` additionally average over images whose truth is non-empty only
(BUSI ``normal`` images excluded), for comparison with papers that drop them.

Classification: scikit-learn computes accuracy, macro-F1, per-class precision/recall/F1, AUC
(one-vs-rest, macro; binary: positive-class score) and the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from sonodistill.figures import save_figure


def dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of binary masks ``[N,...]`` (bool or 0/1), empty convention above."""
    p = pred.reshape(pred.shape[0], -1).bool()
    t = target.reshape(target.shape[0], -1).bool()
    inter = (p & t).sum(1).double()
    ps, ts = p.sum(1).double(), t.sum(1).double()
    union = ps + ts - inter
    both_empty = (ps + ts) == 0
    dice = torch.where(both_empty, torch.ones_like(inter), 2 * inter / (ps + ts).clamp_min(1))
    iou = torch.where(both_empty, torch.ones_like(inter), inter / union.clamp_min(1))
    return dice, iou


def segmentation_summary(dice: Sequence[float], iou: Sequence[float], target_empty: Sequence[bool]) -> dict:
    """Means over all images (``dice``, ``iou``) and over images with a lesion (``*_lesion``)."""
    d, j, e = np.asarray(dice, float), np.asarray(iou, float), np.asarray(target_empty, bool)
    out = {"dice": float(d.mean()) if d.size else float("nan"), "iou": float(j.mean()) if j.size else float("nan")}
    out["dice_lesion"] = float(d[~e].mean()) if (~e).any() else None
    out["iou_lesion"] = float(j[~e].mean()) if (~e).any() else None
    out["n_images"] = int(d.size)
    out["n_empty"] = int(e.sum())
    return out


def _macro_auc(y: np.ndarray, prob: np.ndarray, n_cls: int) -> float | None:
    """One-vs-rest AUC averaged over the classes the test images hold (as the other macro scores),
    sklearn's own when every class is there; None when they hold one class (no AUC is defined)."""
    from sklearn.metrics import roc_auc_score

    present = sorted(set(y.tolist()))
    if len(present) < 2:
        return None
    norm = prob / np.maximum(prob.sum(1, keepdims=True), 1e-12)  # one scale for every case below
    if n_cls == 2:
        return float(roc_auc_score(y, norm[:, 1]))
    if len(present) == n_cls:
        return float(roc_auc_score(y, norm, multi_class="ovr", average="macro", labels=list(range(n_cls))))
    return float(np.mean([roc_auc_score(y == c, norm[:, c]) for c in present]))


def classification_metrics(y_true: Sequence[int], prob: np.ndarray, classes: Sequence[str]) -> dict:
    """Metrics from true labels and class probabilities ``[N, K]`` (prediction = argmax). Macro
    averages are over the classes the test images hold: a class with no test image (a rare class
    whose few images all fell into training) would add an F1 of 0 that says nothing of the model."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y = np.asarray(y_true, dtype=int)
    prob = np.asarray(prob, dtype=np.float64)
    labels = list(range(len(classes)))
    pred = prob.argmax(1)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    present = sorted(set(y.tolist())) or labels
    mp, mr, mf, _ = precision_recall_fscore_support(y, pred, labels=present, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(mf),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "auc": _macro_auc(y, prob, len(classes)),
        "per_class": {
            c: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
            for k, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "n_images": int(y.size),
    }


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = "") -> None:
    """Confusion matrix PNG (counts, rows = truth), written atomically."""
    plot_confusions({title: cm}, classes, path)


def plot_confusions(cms: Mapping[str, Sequence[Sequence[int]]], classes: Sequence[str], path: str | Path) -> None:
    """Several models' confusion matrices side by side in one PNG (titles = the keys): one figure
    to render instead of one per model, the slowest part of evaluating a KD cell."""
    from sklearn.metrics import ConfusionMatrixDisplay

    from sonodistill.figures import pyplot

    plt = pyplot()
    side = 1.2 * len(classes) + 2
    fig, axes = plt.subplots(1, len(cms), figsize=(side * len(cms) + 0.5, side), squeeze=False)
    for ax, (title, cm) in zip(axes[0], cms.items()):
        ConfusionMatrixDisplay(np.asarray(cm), display_labels=list(classes)).plot(ax=ax, colorbar=False, cmap="Blues")
        if title:
            ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)
