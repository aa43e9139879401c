"""One distillation forward: the augmented view, mixup, teacher targets, student prediction, loss.

Shared by the trainer, the step benchmark and the tests so they all measure and check the same code.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.loss import MixupConfig, mix, sample_mix, token_mse
from sonodistill.dinov3 import DINOv3


@torch.no_grad()
def make_view(images: torch.Tensor, augment: nn.Module, teacher: DINOv3) -> torch.Tensor:
    """uint8 ``[B,1,H,W]`` -> augmented, 3-channel view normalised with the teacher's statistics."""
    return teacher.normalize(augment(images))


def distill_loss(
    teacher: DINOv3, student: nn.Module, view: torch.Tensor, mixup: MixupConfig, channels_last: bool = False
) -> torch.Tensor:
    """Token-wise MSE between ``student`` and ``teacher`` on the (mixed) view; see ``pretrain.loss``.

    In ``mixup.mode='input'`` (default) both networks receive the identical mixed tensor.
    """
    plan = sample_mix(view.shape[0], view.device, mixup.prob)
    x = mix(view, plan)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if mixup.mode == "target" and plan is not None:
        clean = view.contiguous(memory_format=torch.channels_last) if channels_last else view
        target = mix(teacher(clean), plan)
    else:
        target = teacher(x)
    # a student held in bf16/fp16 (DeepSpeed's own bf16 mode, from a config that asks for it) takes its input so
    dtype = next(student.parameters()).dtype
    pred = student(x if x.dtype == dtype or not dtype.is_floating_point else x.to(dtype))
    return token_mse(pred, target)
