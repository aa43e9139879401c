"""Classification pieces for the training loop: cross-entropy step and evaluation."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from downstream.data.transforms import GeometricAugment, to_input
from downstream.metrics import classification_metrics


class ClsStep:
    """Batch -> (loss, n): geometric augmentation on the device, normalise, cross-entropy."""

    def __init__(self, mean, std, augment: GeometricAugment | None, channels_last: bool):
        self.mean, self.std, self.augment, self.cl = mean, std, augment, channels_last

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, int]:
        img = batch["image"].float() / 255.0
        if self.augment is not None:
            img = self.augment(img)
        x = to_input(img, self.mean, self.std, channels_last=self.cl)
        return F.cross_entropy(model(x).float(), batch["label"]), img.shape[0]


@torch.no_grad()
def predict_proba(model: nn.Module, loader, mean, std, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and labels over ``loader``, gathered across processes (CPU tensors)."""
    model.eval()
    probs, labels = [], []
    for batch in loader:
        with accelerator.autocast():
            logits = model(to_input(batch["image"], mean, std))
        p, y = accelerator.gather_for_metrics((logits.float().softmax(1), batch["label"]))
        probs.append(p.cpu()), labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def evaluate_cls(model: nn.Module, loader, mean, std, accelerator, classes: Sequence[str]) -> dict:
    prob, y = predict_proba(model, loader, mean, std, accelerator)
    return classification_metrics(y.numpy(), prob.numpy(), classes)
