"""Task models around an :class:`~downstream.encoders.Encoder`. Every model exposes ``.encoder``
(the part a linear probe freezes) and maps normalised images to logits.

- Segmentation, timm ResNets: smp ``Unet("resnetXX", encoder_weights=None)`` with the encoder's
  timm state dict loaded STRICTLY into ``unet.encoder``, so every ResNet-50 initialisation gets
  the identical decoder and only the encoder weights differ.
- Segmentation, other timm backbones: smp's ``tu-NAME`` encoder, weights handed to timm's own
  loader (``pretrained_cfg_overlay=dict(state_dict=...)``).
- Segmentation, DINOv3: a lightweight head on the final patch-token grid, upsampled bilinearly.
- Classification: backbone -> global average pooling (timm ``num_classes=0``; DINOv3: CLS ++ mean
  patch token) -> linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from downstream.encoders import DinoBackbone, Encoder, quiet_timm_loader
from sonodistill.errors import UserError
from sonodistill.smp_encoders import SMP_NATIVE


class DinoSegmenter(nn.Module):
    def __init__(self, encoder: DinoBackbone, classes: int = 1, width: int = 128):
        super().__init__()
        self.encoder = encoder
        c = encoder.embed_dim
        self.head = nn.Sequential(
            nn.Conv2d(c, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, grid = self.encoder.tokens(x)
        return F.interpolate(self.head(grid), size=x.shape[-2:], mode="bilinear", align_corners=False)


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def build_segmenter(enc: Encoder, classes: int = 1) -> nn.Module:
    import segmentation_models_pytorch as smp

    if enc.kind == "dinov3":
        return DinoSegmenter(enc.backbone, classes)
    sd = enc.backbone.state_dict()
    if enc.arch in SMP_NATIVE:
        unet = smp.Unet(enc.arch, encoder_weights=None, classes=classes)
        try:
            unet.encoder.load_state_dict(dict(sd), strict=True)
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())[:300]
            raise UserError(f"encoder '{enc.spec}': weights do not fit smp's {enc.arch} encoder ({reason})") from None
        return unet
    try:
        with quiet_timm_loader():
            return smp.Unet(
                f"tu-{enc.arch}",
                encoder_weights=True,
                classes=classes,
                pretrained_cfg_overlay=dict(state_dict=dict(sd)),
            )
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(
            f"encoder '{enc.spec}': smp cannot build a U-Net on timm '{enc.arch}' ({' '.join(str(exc).split())[:300]})"
        ) from None


def build_classifier(enc: Encoder, num_classes: int) -> Classifier:
    return Classifier(enc.backbone, enc.num_features, num_classes)


def check_input_size(enc: Encoder, size: int, segmentation: bool) -> None:
    if enc.patch_size and size % enc.patch_size:
        raise UserError(f"image_size: {size} is not a multiple of the encoder's patch size {enc.patch_size}")
    if segmentation and enc.kind == "timm" and size % 32:
        raise UserError(f"image_size: U-Net segmentation needs a multiple of 32, got {size}")
