"""Distillation objective of paper 002: token-wise MSE (eq. 6) and in-batch mixup (eq. 7).

Eq. 6: for one image, the mean over tokens of the squared L2 distance between the teacher and
student embeddings of that token; the batch loss averages it over images. It is exactly zero iff
the two token maps are identical. No logit or contrastive term.

Mixup (eq. 7): ``x_mix = lam * x_a + (1 - lam) * x_b`` with ``lam ~ U(0, 1)``, partner ``b`` taken
from the same batch. The paper mixes the images and says "the corresponding teacher and student
features are linearly interpolated". Our default (``mode='input'``) feeds the mixed image to BOTH
networks, so the same view reaches teacher and student as in eqs. 4-5; ``mode='target'`` keeps the
teacher on the clean images and uses ``lam * T(x_a) + (1 - lam) * T(x_b)`` as the student's target
for ``x_mix``. We draw one ``lam`` per image (one pair per image) rather than one per batch.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch


def token_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Eq. 6 on token maps ``[B, C, H, W]`` (channels = embedding): mean_{b,i} ||T_i - S_i||^2, in float32."""
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} token maps differ")
    diff = student.float() - teacher.float()
    return diff.pow(2).sum(dim=1).mean()


@dataclasses.dataclass
class MixupConfig:
    """In-batch mixup (eq. 7). ``prob``: fraction of batches mixed; ``mode``: see the module doc."""

    prob: float = 1.0  # fraction of batches mixed (lambda ~ U(0, 1) per image)
    mode: Literal["input", "target"] = "input"  # input: one mixed image to both networks; target: mix targets


@dataclasses.dataclass
class MixPlan:
    lam: torch.Tensor  # [B] in [0, 1)
    perm: torch.Tensor  # [B] partner index per image


def sample_mix(batch: int, device: torch.device | str, prob: float = 1.0) -> MixPlan | None:
    """Draw per-image ``lam ~ U(0,1)`` and partners from torch's global RNG (None: this batch unmixed).

    Randomness stays on the device and in torch's RNG (checkpointed with it); the per-batch coin is a
    CPU draw, so no device sync is needed.
    """
    if prob <= 0 or (prob < 1 and torch.rand(()).item() >= prob):
        return None
    lam = torch.rand(batch, device=device)
    perm = torch.randperm(batch, device=device)
    return MixPlan(lam, perm)


def mix(x: torch.Tensor, plan: MixPlan | None) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]`` per image (identity when ``plan`` is None)."""
    if plan is None:
        return x
    lam = plan.lam.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return lam * x + (1 - lam) * x[plan.perm]
