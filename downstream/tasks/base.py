"""The contract between a task and :func:`downstream.fit.fit` (cf. timm's ``timm/task`` and
torchdistill's distillation box: the loop is generic, the task knows the model and the loss)."""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of ``batch`` on ``device`` (a prepared loader has done it already: then a no-op)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class Task(abc.ABC):
    """A trainable ``model`` plus how a batch becomes its loss and how a split becomes its metrics.

    ``task(batch)`` (training mode, under autocast) returns::

        {"loss": scalar to back-propagate, "output": the prediction [B, ...],
         <part>: scalar loss terms to log (batch means, e.g. "ce", "kd"),
         "per_sample": {<name>: [B] or [B, K] values averaged per epoch (accuracy, gate weights)}}

    ``evaluate(loader, accelerator)`` returns metrics of a split (gathered over processes).
    ``select`` is the validation metric the loop keeps the best epoch on (``val_loss`` is
    minimised, any other maximised). ``frozen`` (a linear probe's encoder) stays in eval mode,
    so its BatchNorm statistics never move; its parameters must not require gradients.
    """

    select: str = "val_loss"
    val_names: tuple[str, ...] = ("loss",)  # the numbers ``evaluate`` returns: ``select`` may be val_<one>

    def __init__(self, model: nn.Module, frozen: nn.Module | None = None):
        self.model = model
        self.frozen = frozen
        if frozen is not None:
            frozen.requires_grad_(False)

    def train(self) -> None:
        self.model.train()
        if self.frozen is not None:
            self.frozen.eval()

    def eval(self) -> None:
        self.model.eval()

    @abc.abstractmethod
    def __call__(self, batch: dict) -> dict[str, Any]:
        """Loss, output and named parts of one training batch."""

    @abc.abstractmethod
    def evaluate(self, loader, accelerator) -> dict[str, Any]:
        """Metrics over ``loader`` (every sample once across processes)."""
