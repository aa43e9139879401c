"""Distillation losses for segmentation (the ``seg_unet`` recipe), after Liu et al., "Structured
Knowledge Distillation for Semantic Segmentation", CVPR 2019 (arXiv:1903.04197).

- Pixel-wise distillation (their eq. 1): at every pixel, ``KL(teacher || student)`` of the class
  distributions, averaged over pixels. Our masks are binary with one logit per pixel, so the
  distribution is ``[sigmoid(z/T), 1 - sigmoid(z/T)]``; ``T^2`` keeps the gradient scale of the
  hard loss (Hinton et al., 2015). The authors' code uses T = 1 and weight 10.
- Pair-wise distillation (their eq. 2): the feature map before the classifier is max-pooled into a
  ``nodes x nodes`` grid, each node's feature vector is L2-normalised, and the squared difference
  between the teacher's and the student's node-similarity (cosine) matrices is averaged over all
  pairs. It compares similarities, not features, so teacher and student may have different
  widths and resolutions. The authors' code pools with a window of half the map (``pool_scale
  0.5`` = 2 x 2 nodes) and weighs the term 0.5.
- Feature matching on decoder stages (optional, FitNets hints, Romero et al., ICLR 2015): MSE
  between each student decoder stage, mapped by a learned 1x1 convolution to the teacher's
  width, and the teacher's stage at the same resolution.

Their holistic (adversarial) term needs a discriminator trained alongside the student and is not
implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sonodistill.config import ConfigError


@dataclass
class SegKDLossConfig:
    """``task + pixel_weight * pixel + pair_weight * pair + feature_weight * feature``."""

    dice_weight: float = 1.0  # task loss: dice_weight * Dice + bce_weight * BCE (as downstream fine-tuning)
    bce_weight: float = 1.0  # on binary cross-entropy with the mask
    pixel_weight: float = 10.0  # Liu et al.'s lambda for pixel-wise distillation
    temperature: float = 1.0  # T of the pixel-wise KL (logits divided by it)
    pair_weight: float = 0.5  # Liu et al.'s lambda for pair-wise distillation
    pair_nodes: int = 2  # nodes per side after max-pooling (the authors' pool_scale 0.5)
    feature_weight: float = 0.0  # decoder-stage feature matching (FitNets hints); 0 = off

    def __post_init__(self) -> None:
        for key in ("dice_weight", "bce_weight", "pixel_weight", "pair_weight", "feature_weight"):
            if not (value := getattr(self, key)) >= 0:
                raise ConfigError(f"loss.{key}: expected a weight >= 0, got {value}")
        if not self.temperature > 0:
            raise ConfigError(f"loss.temperature: expected a positive number, got {self.temperature}")
        if self.pair_nodes < 1:
            raise ConfigError(f"loss.pair_nodes: expected at least 1 node per side, got {self.pair_nodes}")
        if self.dice_weight + self.bce_weight <= 0:
            raise ConfigError("loss.dice_weight, loss.bce_weight: at least one must be > 0 (the task loss)")


def pixel_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * mean over pixels of KL(teacher || student)`` for one-logit (binary) maps [B, 1, H, W].

    The teacher map is resized to the student's if they differ (bilinear on logits)."""
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
    t = temperature
    s, q = student.float() / t, teacher.float() / t
    log_ps, log_1ps = F.logsigmoid(s), F.logsigmoid(-s)
    log_pt, log_1pt = F.logsigmoid(q), F.logsigmoid(-q)
    kl = log_pt.exp() * (log_pt - log_ps) + log_1pt.exp() * (log_1pt - log_1ps)
    return kl.mean() * (t * t)


def node_similarity(feat: torch.Tensor, nodes: int) -> torch.Tensor:
    """Cosine similarity [B, N, N] of the ``nodes x nodes`` max-pooled feature vectors."""
    pooled = F.adaptive_max_pool2d(feat.float(), nodes).flatten(2)  # B, C, N
    pooled = pooled / (pooled.norm(dim=1, keepdim=True).detach() + 1e-8)  # the authors detach the norm
    return pooled.transpose(1, 2) @ pooled


def pair_wise(student: torch.Tensor, teacher: torch.Tensor, nodes: int = 2) -> torch.Tensor:
    """Mean squared difference of the node-similarity matrices of student and teacher features."""
    return (node_similarity(student, nodes) - node_similarity(teacher, nodes)).pow(2).mean()


def stage_matching(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over stages of the MSE between (adapted) student and teacher stage features."""
    if len(student) != len(teacher):
        raise ValueError(f"stage matching: {len(student)} student stages vs {len(teacher)} teacher stages")
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher):
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        total = total + F.mse_loss(s.float(), t.float())
    return total / len(student)
