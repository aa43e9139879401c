"""Classification: cross-entropy on logits; metrics from :func:`downstream.metrics.classification_metrics`.

The base of every classifier the project trains: downstream fine-tuning, KD teachers and
from-scratch students, and (through subclasses in :mod:`downstream.kd`) distilled students.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from downstream.data.inputs import Inputs
from downstream.metrics import classification_metrics
from downstream.tasks.base import Task, to_device


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample 0/1 accuracy (averaged per epoch by the loop)."""
    return (logits.detach().argmax(1) == labels).float()


class Classification(Task):
    """``model(inputs(batch[key])) -> logits``; loss cross-entropy with ``batch["label"]``."""

    select = "val_accuracy"
    val_names = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "auc", "loss")

    def __init__(
        self,
        model: nn.Module,
        inputs: Inputs,
        classes: Sequence[str],
        key: str = "image",
        frozen: nn.Module | None = None,
    ):
        super().__init__(model, frozen)
        self.inputs, self.classes, self.key = inputs, list(classes), key

    def logits(self, batch: dict, train: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and per-sample extras (e.g. gate weights) of a batch; subclasses change the model call."""
        return self.model(self.inputs(batch[self.key], train=train)), {}

    def __call__(self, batch: dict) -> dict[str, Any]:
        logits, extras = self.logits(batch, train=True)
        loss = F.cross_entropy(logits.float(), batch["label"])
        return {"loss": loss, "output": logits, "per_sample": {"accuracy": correct(logits, batch["label"]), **extras}}

    @torch.no_grad()
    def predict_batch(self, batch: dict, accelerator) -> dict[str, torch.Tensor]:
        """Softmax probabilities, sample indices, extras and (when labelled) labels and per-sample CE
        of one batch, gathered from every process."""
        batch = to_device(batch, accelerator.device)
        with accelerator.autocast():
            logits, extras = self.logits(batch, train=False)
        logits = logits.float()
        row = {"probs": logits.softmax(1), "index": batch["index"], **{k: v.float() for k, v in extras.items()}}
        if "label" in batch:
            row["labels"] = batch["label"]
            row["ce"] = F.cross_entropy(logits, batch["label"], reduction="none")
        return accelerator.gather_for_metrics(row)

    @staticmethod
    def collect(rows: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
        parts: dict[str, list[torch.Tensor]] = {}
        for row in rows:
            for k, v in row.items():
                parts.setdefault(k, []).append(v.cpu())
        out = {k: torch.cat(v).numpy() for k, v in parts.items()}
        if "ce" in out:
            out["loss"] = np.asarray(float(out.pop("ce").mean()))
        return out

    @torch.no_grad()
    def predict(self, loader, accelerator) -> dict[str, np.ndarray]:
        """Softmax probabilities, labels and per-sample CE (when labelled), sample indices and the
        extras over ``loader``, gathered from every process (each sample exactly once)."""
        self.eval()
        return self.collect([self.predict_batch(batch, accelerator) for batch in loader])

    def metrics(self, pred: dict[str, np.ndarray]) -> dict[str, Any]:
        """Classification metrics, the mean loss and the mean of every extra of :meth:`predict` output."""
        out = classification_metrics(pred["labels"], pred["probs"], self.classes)
        out["loss"] = float(pred["loss"])
        for k, v in pred.items():
            if k not in ("probs", "labels", "index", "loss"):
                out[k] = v.mean(0).tolist()
        return out

    def evaluate(self, loader, accelerator) -> dict[str, Any]:
        return self.metrics(self.predict(loader, accelerator))


@torch.no_grad()
def predict_many(tasks: dict[str, Classification], loader, accelerator) -> dict[str, dict[str, np.ndarray]]:
    """:meth:`Classification.predict` of several tasks in one pass over ``loader`` (each batch is
    decoded once, not once per model)."""
    for task in tasks.values():
        task.eval()
    rows: dict[str, list] = {name: [] for name in tasks}
    for batch in loader:
        for name, task in tasks.items():
            rows[name].append(task.predict_batch(batch, accelerator))
    return {name: Classification.collect(r) for name, r in rows.items()}
