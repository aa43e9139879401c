"""Segmentation: Dice + BCE on one logit map, per-image Dice / IoU (:mod:`downstream.metrics`),
prediction panels. Image and mask get the same random geometry when training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from downstream.data.inputs import Inputs
from downstream.data.transforms import to_input
from downstream.metrics import dice_iou, segmentation_summary
from downstream.tasks.base import Task


class SegLoss(nn.Module):
    """``dice_weight * soft Dice + bce_weight * BCE`` on logits (smp's DiceLoss, binary mode)."""

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss

        self.dice = DiceLoss(mode="binary", from_logits=True)
        self.bce = nn.BCEWithLogitsLoss()
        self.wd, self.wb = dice_weight, bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return self.wd * self.dice(logits, target) + self.wb * self.bce(logits, target)


class Segmentation(Task):
    """``model(x) -> [B, 1, H, W]`` logits against ``batch["mask"]``; ``inputs.augment`` (a
    :class:`~downstream.data.transforms.GeometricAugment`) moves image and mask together."""

    select = "val_dice"
    val_names = ("dice", "iou", "dice_lesion", "iou_lesion")

    def __init__(self, model: nn.Module, inputs: Inputs, loss: SegLoss, frozen: nn.Module | None = None):
        super().__init__(model, frozen)
        self.inputs, self.loss = inputs, loss

    def image_and_mask(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] and binary masks of a batch, augmented together when training augments."""
        img = batch["image"].float() / 255.0
        mask = batch["mask"].float()
        if self.inputs.augment is not None:
            img, mask = self.inputs.augment(img, mask)
            mask = (mask > 0.5).float()
        return img, mask

    def __call__(self, batch: dict) -> dict:
        img, mask = self.image_and_mask(batch)
        x = to_input(img, self.inputs.mean, self.inputs.std, channels_last=self.inputs.channels_last)
        logits = self.model(x)
        return {"loss": self.loss(logits, mask), "output": logits}

    def evaluate(self, loader, accelerator, per_image: bool = False) -> dict:
        return evaluate_seg(self.model, loader, self.inputs.mean, self.inputs.std, accelerator, per_image)


@torch.no_grad()
def predict_masks(model: nn.Module, batch: dict, mean, std, accelerator) -> torch.Tensor:
    x = to_input(batch["image"], mean, std)
    with accelerator.autocast():
        logits = model(x)
    return logits.float() > 0  # sigmoid > 0.5


def evaluate_seg(model: nn.Module, loader, mean, std, accelerator, per_image: bool = False) -> dict:
    """Mean Dice / IoU over the images of ``loader`` (per image, empty-mask convention of
    :mod:`downstream.metrics`), gathered across processes."""
    model.eval()
    dices, ious, empties, idx = [], [], [], []
    for batch in loader:
        pred = predict_masks(model, batch, mean, std, accelerator)
        d, j = dice_iou(pred, batch["mask"] > 0)
        e = (batch["mask"].flatten(1) == 0).all(1)
        d, j, e, i = accelerator.gather_for_metrics((d, j, e, batch["index"]))
        dices.append(d.cpu()), ious.append(j.cpu()), empties.append(e.cpu()), idx.append(i.cpu())
    d, j, e = torch.cat(dices).numpy(), torch.cat(ious).numpy(), torch.cat(empties).numpy()
    out = segmentation_summary(d, j, e)
    if per_image:
        out["per_image"] = {"index": torch.cat(idx).tolist(), "dice": d.tolist(), "iou": j.tolist()}
    return out


def plot_predictions(
    images: np.ndarray, truths: np.ndarray, preds: np.ndarray, dices: Sequence[float], path: str | Path, title: str = ""
) -> None:
    """A row per image: input with ground-truth (green) and predicted (red) contours, Dice in the title."""
    from sonodistill.figures import pyplot, save_figure

    plt = pyplot()

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.6), squeeze=False)
    for ax, im, t, p, d in zip(axes[0], images, truths, preds, dices):
        ax.imshow(im, cmap="gray", vmin=0, vmax=255)
        if t.any():
            ax.contour(t, levels=[0.5], colors="lime", linewidths=1)
        if p.any():
            ax.contour(p, levels=[0.5], colors="red", linewidths=1)
        ax.set_title(f"Dice {d:.2f}", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
