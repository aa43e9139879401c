"""Distillation losses of the recipes, each in its paper's form.

KL convention (all recipes): ``KL(p_teacher || p_student)`` on temperature-softened distributions,
summed over classes and averaged over the batch (``reduction="batchmean"``, the mathematically
correct per-sample KL; ``"mean"`` would also divide by the number of classes). Multiplying by
``T^2`` keeps the soft-target gradients on the scale of the hard loss (Hinton et al.).

- paper 000 (vit_mobilenet): ``alpha*CE + (1-alpha)*T^2*KL`` with alpha = 0.5, T = 4;
- paper 003 (nanoray):       ``alpha*T^2*KL + (1-alpha)*CE`` with alpha = 0.25, T = 4;
- paper 001 (hdkd):          ``(1-alpha)*CE(cls head) + alpha*t^2*KL(distill head)`` + ``lambda*l_feat``.

:class:`LogitKDLoss` covers all three logit forms: ``kd_weight`` is the weight on the KL term
(0.5 for 000, 0.25 for 003, 0.5 for HDKD), ``1 - kd_weight`` the weight on cross-entropy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, batchmean. Zero iff the softened outputs agree."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


@dataclass
class LossParts:
    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    feat: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """Named scalar components (0-dim tensors, still on their device)."""
        out = {"loss": self.total, "ce": self.ce, "kd": self.kd}
        if self.feat is not None:
            out["feat"] = self.feat
        return out

    def items(self) -> dict[str, float]:
        return {k: v.item() for k, v in self.tensors().items()}


class LogitKDLoss:
    """``(1 - kd_weight) * CE(student, y) + kd_weight * T^2 * KL(teacher || student)``.

    ``kd_weight=0`` is plain cross-entropy (the from-scratch baseline uses exactly this).
    ``distill_logits`` (HDKD) sends the KL to a second head while CE reads the first.
    """

    def __init__(self, kd_weight: float, temperature: float):
        if not 0.0 <= kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.kd_weight = kd_weight
        self.temperature = temperature

    def __call__(self, student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                 distill_logits: torch.Tensor | None = None) -> LossParts:
        ce = F.cross_entropy(student_logits.float(), labels)
        if self.kd_weight == 0.0:
            return LossParts(ce, ce, ce.new_zeros(()))
        if teacher_logits is None:
            raise ValueError("LogitKDLoss: kd_weight > 0 needs teacher logits")
        target = student_logits if distill_logits is None else distill_logits
        kd = kd_kl(target, teacher_logits, self.temperature)
        return LossParts((1 - self.kd_weight) * ce + self.kd_weight * kd, ce, kd)


def vit_mobilenet_loss(alpha: float = 0.5, temperature: float = 4.0) -> LogitKDLoss:
    """Paper 000: ``alpha*CE + (1-alpha)*T^2*KL`` (alpha weighs the hard loss)."""
    return LogitKDLoss(kd_weight=1.0 - alpha, temperature=temperature)


def nanoray_loss(alpha: float = 0.25, temperature: float = 4.0) -> LogitKDLoss:
    """Paper 003: ``alpha*T^2*KL + (1-alpha)*CE`` (alpha weighs the soft loss)."""
    return LogitKDLoss(kd_weight=alpha, temperature=temperature)


def feature_distillation(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                         alpha_f: float = 1.0) -> torch.Tensor:
    """HDKD eq. 7: ``sum_j j^alpha_f * ||psi_T - psi_S||^2 / (H_j W_j C_j)`` over the shared stages.

    The per-stage term is the mean squared error over (C, H, W) and, as a batch loss, over samples.
    Stages are numbered from 1, so later (more semantic) stages weigh more.
    """
    if len(student) != len(teacher):
        raise ValueError(f"feature distillation: {len(student)} student stages vs {len(teacher)} teacher stages")
    total = student[0].new_zeros((), dtype=torch.float32)
    for j, (s, t) in enumerate(zip(student, teacher), start=1):
        if s.shape != t.shape:
            raise ValueError(f"feature distillation: stage {j} shapes differ, {tuple(s.shape)} vs {tuple(t.shape)}")
        total = total + (j ** alpha_f) * F.mse_loss(s.float(), t.float())
    return total


class HDKDLoss:
    """HDKD eq. 8: ``l_cls + lambda * l_feat`` with ``l_cls`` = LogitKDLoss(alpha, t) on the two heads."""

    def __init__(self, alpha: float = 0.5, temperature: float = 1.0, lam: float = 10.0, alpha_f: float = 1.0):
        self.logits = LogitKDLoss(kd_weight=alpha, temperature=temperature)
        self.lam = lam
        self.alpha_f = alpha_f

    def __call__(self, cls_logits: torch.Tensor, dist_logits: torch.Tensor, labels: torch.Tensor,
                 teacher_logits: torch.Tensor, student_feats: Sequence[torch.Tensor],
                 teacher_feats: Sequence[torch.Tensor]) -> LossParts:
        parts = self.logits(cls_logits, labels, teacher_logits, distill_logits=dist_logits)
        feat = feature_distillation(student_feats, teacher_feats, self.alpha_f)
        return LossParts(parts.total + self.lam * feat, parts.ce, parts.kd, feat)
