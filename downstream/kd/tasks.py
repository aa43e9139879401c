"""The logit-distillation task and the teacher helpers every KD recipe uses.

- :class:`LogitKD`: a student classifier trained on ``ce_weight * CE + kd_weight * T^2 * KL`` with a
  frozen teacher's logits (:class:`~downstream.kd.losses.LogitKDLoss`). Without augmentation a
  sample always looks the same, so the teacher's logits are computed once for the whole training
  set (:func:`teacher_logits`) and looked up by sample index; with augmentation the teacher runs
  on every augmented batch.
- Teachers and from-scratch students are plain :class:`~downstream.tasks.Classification`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from downstream.data.inputs import Inputs
from downstream.kd.losses import LogitKDLoss
from downstream.tasks import Classification, to_device
from downstream.tasks.classification import correct


def freeze(model: nn.Module) -> nn.Module:
    """Teacher mode: eval, no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class LogitKD(Classification):
    """Student logits against the labels and a frozen teacher's logits (cached by sample index)."""

    def __init__(
        self,
        model: nn.Module,
        inputs: Inputs,
        classes,
        teacher: nn.Module,
        loss: LogitKDLoss,
        cache: torch.Tensor | None = None,
        key: str = "image",
    ):
        super().__init__(model, inputs, classes, key)
        self.teacher, self.loss, self.cache = teacher, loss, cache

    def teacher_logits(self, x: torch.Tensor, batch: dict) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[batch["index"]]
        with torch.no_grad():
            return self.teacher(x).float()

    def __call__(self, batch: dict) -> dict[str, Any]:
        x = self.inputs(batch[self.key], train=True)
        logits = self.model(x)
        parts = self.loss(logits, batch["label"], self.teacher_logits(x, batch))
        return {**parts.tensors(), "output": logits, "per_sample": {"accuracy": correct(logits, batch["label"])}}


@torch.no_grad()
def teacher_logits(teacher: Classification, data, device: torch.device, size: int, autocast=None) -> torch.Tensor:
    """Logits of a frozen teacher task for every sample, indexed by the dataset's ``index``.

    Used when training runs without augmentation: each sample always looks the same, so the
    teacher runs once instead of once per epoch. Every process computes the full table.
    """
    table: torch.Tensor | None = None
    teacher.eval()
    for batch in data:
        batch = to_device(batch, device)
        if autocast is not None:
            with autocast():
                logits, _ = teacher.logits(batch, train=False)
        else:
            logits, _ = teacher.logits(batch, train=False)
        if table is None:
            table = torch.full((size, logits.shape[1]), float("nan"), device=device)
        table[batch["index"]] = logits.float()
    if table is None or torch.isnan(table).any():
        raise RuntimeError("teacher_logits: some samples were not visited")
    return table
