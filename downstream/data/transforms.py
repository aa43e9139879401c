"""Batched, on-device transforms: train-time geometric augmentation and model-input normalisation.

Grayscale feeds 3-channel encoders by replicating the channel, then normalising with the
encoder's own mean/std (timm's ``pretrained_cfg`` or the DINOv3 image processor), exactly as
the encoder saw RGB during pretraining. Augmentation (kornia) applies the same random geometry
to image and mask: random resized crop (zoom / field of view), horizontal flip and a small
rotation. No vertical flip (the probe is always at the top) and no colour jitter (B-mode is
grayscale). Validation/test only resize (in the Dataset) and normalise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import kornia.augmentation as K
import torch


@dataclass
class GeometricAugmentConfig:
    enabled: bool = True  # train-time geometric augmentation on or off
    scale_min: float = 0.7  # random resized crop: smallest area fraction kept
    hflip: float = 0.5  # probability
    degrees: float = 10.0  # rotation range +- degrees (0 = off)


class GeometricAugment(torch.nn.Module):
    """Same random geometry for ``image`` [B,C,H,W] float and ``mask`` [B,1,H,W] float."""

    def __init__(self, size: int, cfg: GeometricAugmentConfig | None = None):
        super().__init__()
        cfg = cfg or GeometricAugmentConfig()
        ops = [K.RandomResizedCrop((size, size), scale=(cfg.scale_min, 1.0))]
        if cfg.hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
        if cfg.degrees > 0:
            ops.append(K.RandomAffine(degrees=cfg.degrees, p=0.5))
        self.seg = K.AugmentationSequential(*ops, data_keys=["input", "mask"])
        self.img = K.AugmentationSequential(*ops, data_keys=["input"])

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None):
        if mask is None:
            return self.img(image)
        return self.seg(image, mask)


def to_input(
    gray: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, channels_last: bool = False
) -> torch.Tensor:
    """uint8 (or [0,1] float) [B,1,H,W] -> normalised float [B,len(mean),H,W]."""
    x = gray.float()
    if gray.dtype == torch.uint8:
        x = x / 255.0
    c = len(mean)
    x = x.expand(-1, c, -1, -1) if x.shape[1] == 1 else x
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
