"""Batched uint8 grayscale -> normalised model input, augmented when training (on the device).

Every downstream task and KD recipe feeds its model through an :class:`Inputs`: the encoder's own
mean/std (timm's ``pretrained_cfg``, DINOv3's image processor, or ImageNet's for the KD papers),
an optional batched augmentation, channels-last on GPUs. Views (``[B, V, S, S]``, e.g.
CSA-MoE's image / tumour core / boundary) are normalised view by view.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from downstream.data.transforms import to_input

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Inputs:
    """uint8 grayscale [B, V, S, S] -> normalised float model input; augmented when training.

    ``V == 1`` gives [B, 3, S, S] (channel replicated); ``V > 1`` (views) gives [B, V, 3, S, S].
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: torch.nn.Module | None = None,
        channels_last: bool = False,
    ):
        self.mean, self.std, self.augment = tuple(mean), tuple(std), augment
        self.channels_last = channels_last

    @property
    def augments(self) -> bool:
        return self.augment is not None

    def __call__(self, gray: torch.Tensor, train: bool) -> torch.Tensor:
        x = gray.float() / 255.0
        if train and self.augment is not None:
            x = self.augment(x)
        b, v, s, _ = x.shape
        if v == 1:
            return to_input(x, self.mean, self.std, channels_last=self.channels_last)
        return to_input(x.reshape(b * v, 1, s, s), self.mean, self.std).reshape(b, v, len(self.mean), s, s)
