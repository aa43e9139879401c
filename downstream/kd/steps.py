"""Batch -> loss / logits for the two families every recipe builds on.

- :class:`Supervised`: cross-entropy only (teachers, from-scratch baselines);
- :class:`LogitKD`: a frozen teacher's logits plus :class:`~downstream.kd.losses.LogitKDLoss`.
  Without augmentation a sample always looks the same, so the teacher's logits are computed
  once for the whole training set (:func:`~downstream.kd.trainer.cache_logits`) and looked up
  by sample index; with augmentation the teacher runs on every augmented batch.
"""
from __future__ import annotations

import torch

from downstream.kd.data import Inputs
from downstream.kd.losses import LogitKDLoss, LossParts

CE = LogitKDLoss(kd_weight=0.0, temperature=1.0)


class Supervised:
    def __init__(self, inputs: Inputs, key: str = "image"):
        self.inputs, self.key = inputs, key

    def train_loss(self, model, batch):
        logits = model(self.inputs(batch[self.key], train=True))
        return CE(logits, batch["label"], None), logits, {}

    def predict(self, model, batch):
        return model(self.inputs(batch[self.key], train=False)), {}


class LogitKD:
    def __init__(self, inputs: Inputs, teacher: torch.nn.Module, loss: LogitKDLoss, key: str = "image",
                 cache: torch.Tensor | None = None):
        self.inputs, self.teacher, self.loss, self.key = inputs, teacher, loss, key
        self.cache = cache

    def teacher_logits(self, x: torch.Tensor, batch: dict) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[batch["index"]]
        with torch.no_grad():
            return self.teacher(x).float()

    def train_loss(self, model, batch) -> tuple[LossParts, torch.Tensor, dict]:
        x = self.inputs(batch[self.key], train=True)
        logits = model(x)
        return self.loss(logits, batch["label"], self.teacher_logits(x, batch)), logits, {}

    def predict(self, model, batch):
        return model(self.inputs(batch[self.key], train=False)), {}
