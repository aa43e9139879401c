"""Distillation losses of the recipes, with every weight named for what it weighs.

``loss = ce_weight * CE(student, y) + kd_weight * T^2 * KL(teacher || student) [+ feature_weight * l_feat]``

The papers write these weights with one symbol, alpha, that means different things: paper 000's
alpha weighs the cross-entropy (``alpha*CE + (1-alpha)*T^2*KL``), paper 003's and paper 001's
weigh the KL term. Each recipe's preset (``downstream/kd/configs/<recipe>.yaml``) sets
``ce_weight`` / ``kd_weight`` to its paper's values and names the paper's symbol in a comment.

KL convention (all recipes): ``KL(p_teacher || p_student)`` on temperature-softened distributions,
summed over classes and averaged over the batch (``reduction="batchmean"``, the mathematically
correct per-sample KL; ``"mean"`` would also divide by the number of classes). Multiplying by
``T^2`` keeps the soft-target gradients on the scale of the hard loss (Hinton et al.).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from sonodistill.errors import UserError


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


@dataclass
class LogitLossConfig:
    """Weights of the logit-distillation loss (a recipe's preset holds its paper's values)."""

    ce_weight: float = 0.5  # on cross-entropy with the labels
    kd_weight: float = 0.5  # on T^2 * KL(teacher || student)
    temperature: float = 4.0  # T: both logits are divided by it before the softmax


class LogitKDLoss:
    """``ce_weight * CE(student, y) + kd_weight * T^2 * KL(teacher || student)``.

    ``kd_weight=0`` is plain cross-entropy (no teacher needed). ``distill_logits`` (HDKD) sends
    the KL to a second head while CE reads the first.
    """

    def __init__(self, ce_weight: float, kd_weight: float, temperature: float, key: str = "loss"):
        weights = (ce_weight, kd_weight)
        if not all(0 <= w < math.inf for w in weights) or ce_weight + kd_weight == 0:  # NaN fails too
            raise UserError(
                f"{key}: ce_weight and kd_weight must be finite, >= 0 and not both 0, got {ce_weight}, {kd_weight}"
            )
        if not 0 < temperature < math.inf:
            raise UserError(f"{key}.temperature: must be a finite number > 0, got {temperature}")
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature

    @classmethod
    def from_config(cls, cfg: LogitLossConfig, key: str = "loss") -> LogitKDLoss:
        return cls(cfg.ce_weight, cfg.kd_weight, cfg.temperature, key)

    def __call__(
        self,
        student_logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        distill_logits: torch.Tensor | None = None,
    ) -> LossParts:
        ce = F.cross_entropy(student_logits.float(), labels)
        if self.kd_weight == 0.0:
            return LossParts(self.ce_weight * ce, ce, ce.new_zeros(()))
        if teacher_logits is None:
            raise ValueError("LogitKDLoss: kd_weight > 0 needs teacher logits")
        target = student_logits if distill_logits is None else distill_logits
        kd = kd_kl(target, teacher_logits, self.temperature)
        return LossParts(self.ce_weight * ce + self.kd_weight * kd, ce, kd)


def feature_distillation(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], stage_exponent: float = 1.0
) -> torch.Tensor:
    """HDKD eq. 7: ``sum_j j^alpha_f * ||psi_T - psi_S||^2 / (H_j W_j C_j)`` over the shared stages
    (``stage_exponent`` is the paper's alpha_f).

    The per-stage term is the mean squared error over (C, H, W) and, as a batch loss, over samples.
    Stages are numbered from 1, so later (more semantic) stages weigh more.
    """
    if len(student) != len(teacher):
        raise ValueError(f"feature distillation: {len(student)} student stages vs {len(teacher)} teacher stages")
    total = student[0].new_zeros((), dtype=torch.float32)
    for j, (s, t) in enumerate(zip(student, teacher), start=1):
        if s.shape != t.shape:
            raise ValueError(f"feature distillation: stage {j} shapes differ, {tuple(s.shape)} vs {tuple(t.shape)}")
        total = total + (j**stage_exponent) * F.mse_loss(s.float(), t.float())
    return total


@dataclass
class HDKDLossConfig(LogitLossConfig):
    """HDKD eq. 8 weights: the logit terms on the two heads plus the stage-feature term."""

    # one-to-one renames of issue 15 (the paper's symbols); alpha became ce_weight = 1 - alpha and
    # kd_weight = alpha, two keys, so it has no single new name (docs/kd.md)
    RENAMED: ClassVar[dict[str, str]] = {"lam": "feature_weight", "alpha_f": "stage_exponent"}

    feature_weight: float = 10.0  # on l_feat (the paper's lambda)
    stage_exponent: float = 1.0  # stage j weighs j^stage_exponent (the paper's alpha_f)


class HDKDLoss:
    """HDKD eq. 8: ``ce_weight*CE(cls) + kd_weight*t^2*KL(distill head) + feature_weight*l_feat``."""

    def __init__(self, cfg: HDKDLossConfig, key: str = "loss"):
        self.logits = LogitKDLoss.from_config(cfg, key)
        self.feature_weight = cfg.feature_weight
        self.stage_exponent = cfg.stage_exponent

    def __call__(
        self,
        cls_logits: torch.Tensor,
        dist_logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor,
        student_feats: Sequence[torch.Tensor],
        teacher_feats: Sequence[torch.Tensor] | None,
    ) -> LossParts:
        parts = self.logits(cls_logits, labels, teacher_logits, distill_logits=dist_logits)
        if self.feature_weight == 0:  # logits only: a teacher without matching stages passes None
            return LossParts(parts.total, parts.ce, parts.kd, parts.total.new_zeros(()))
        feat = feature_distillation(student_feats, teacher_feats, self.stage_exponent)
        return LossParts(parts.total + self.feature_weight * feat, parts.ce, parts.kd, feat)
