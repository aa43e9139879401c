"""Scoring a deployed runtime (any numpy predictor: onnxruntime fp32 or INT8) on a test split with
the metric the cell reports, computed exactly as :mod:`downstream.metrics` computes it for
PyTorch: mean per-image Dice for segmentation, accuracy for classification."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from downstream.edge.profile import Deployment, Predictor
from downstream.metrics import dice_iou

Prepare = Callable[[torch.Tensor], torch.Tensor]  # uint8 batch -> normalised float model input


def _batches(loader, prepare: Prepare, key: str) -> Iterable[tuple[np.ndarray, dict]]:
    with torch.no_grad():
        for batch in loader:
            yield prepare(batch[key].cpu()).numpy(), batch


def segmentation_deployment(test_loader, train_loader, prepare: Prepare) -> Deployment:
    """Dice of ``logits > 0`` (sigmoid > 0.5) against ``batch["mask"]``, per image, averaged."""

    def score(predictors: dict[str, Predictor]) -> dict[str, float]:
        dices: dict[str, list] = {k: [] for k in predictors}
        for x, batch in _batches(test_loader, prepare, "image"):  # decoded once for every runtime
            truth = batch["mask"].cpu() > 0
            for k, predict in predictors.items():
                dices[k].append(dice_iou(torch.from_numpy(predict(x)) > 0, truth)[0])
        return {k: float(torch.cat(d).mean()) for k, d in dices.items()}  # mean per-image Dice

    return Deployment("dice", score, lambda n: _calibration(train_loader, prepare, "image", n))


def classification_deployment(test_loader, train_loader, prepare: Prepare, key: str = "image") -> Deployment:
    """Accuracy of the arg-max class against ``batch["label"]``."""

    def score(predictors: dict[str, Predictor]) -> dict[str, float]:
        right = dict.fromkeys(predictors, 0)
        total = 0
        for x, batch in _batches(test_loader, prepare, key):  # decoded once for every runtime
            labels = batch["label"].cpu().numpy()
            for k, predict in predictors.items():
                right[k] += int((predict(x).argmax(1) == labels).sum())
            total += len(labels)
        return {k: r / max(total, 1) for k, r in right.items()}

    return Deployment("accuracy", score, lambda n: _calibration(train_loader, prepare, key, n))


def _calibration(loader, prepare: Prepare, key: str, n: int) -> Iterable[np.ndarray]:
    """The first ``n`` training inputs, one at a time (what a deployed model sees)."""
    seen = 0
    for x, _ in _batches(loader, prepare, key):
        for row in x:
            if seen >= n:
                return
            yield row[None]
            seen += 1
