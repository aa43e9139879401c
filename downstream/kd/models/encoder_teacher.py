"""Any downstream encoder as a KD teacher (``teacher.encoder=SPEC``): the distilled ResNet-50 export,
``hf-hub:``, ``timm:``, ``dinov3:`` or ``rand`` (the specs of :mod:`downstream.encoders`).

The teacher is the downstream classifier (encoder -> pooled features -> linear head), trained on
the recipe's labels in its teacher stage. The recipes feed every model ImageNet-normalised input;
the teacher re-normalises it to its own mean/std (an exact per-channel affine map), so it sees its
input as it did in pretraining.

What a recipe needs from its teacher (its ``teacher_outputs``, :class:`~downstream.kd.recipes.base.Recipe`):

- ``vit_mobilenet``, ``nanoray``: logits only — any encoder works.
- ``hdkd``: logits and, while ``loss.feature_weight > 0``, the outputs of three stages shaped like
  the student's (channels ``model.channels`` at strides 2, 4, 8). A timm encoder whose
  ``feature_info`` has exactly those stages (e.g. ResNet-18 for ``model.channels=[64,64,128]``)
  provides them through ``forward_intermediates``; any other encoder is refused with the shapes it
  has, since the MSE of eq. 7 is undefined across shapes (``loss.feature_weight=0`` distils logits only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from downstream.data.inputs import IMAGENET_MEAN, IMAGENET_STD
from downstream.encoders import Encoder, load_encoder
from downstream.models import build_classifier
from sonodistill.errors import UserError


def encoder_stamp(spec: str) -> str:
    """What identifies an encoder's weights without loading them: a folder's weight files' sizes and
    modification times (a re-exported folder retrains the stages that used it), else the spec."""
    path = Path(spec[10:] if spec.startswith("local-dir:") else spec)
    if not path.is_dir():
        return spec
    h = hashlib.sha1(spec.encode())
    for f in sorted(path.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def stage_indices(enc: Encoder, channels: Sequence[int], reductions: Sequence[int], key: str) -> list[int]:
    """Indices of the encoder's feature stages with exactly ``channels`` at ``reductions``, or a UserError."""
    info = getattr(enc.backbone, "feature_info", None)
    if enc.kind != "timm" or not info or not hasattr(enc.backbone, "forward_intermediates"):
        raise UserError(
            f"{key}: encoder '{enc.spec}' exposes no stage features; hdkd's feature loss needs stages shaped "
            f"{list(channels)} channels at strides {list(reductions)} (set loss.feature_weight=0 to distil logits only)"
        )
    have = [(int(d["num_chs"]), int(d["reduction"])) for d in info]
    idx = []
    for c, r in zip(channels, reductions):
        hits = [i for i, (hc, hr) in enumerate(have) if (hc, hr) == (c, r)]
        if not hits:
            shown = ", ".join(f"{hc}@/{hr}" for hc, hr in have)
            want = ", ".join(f"{c}@/{r}" for c, r in zip(channels, reductions))
            raise UserError(
                f"{key}: encoder '{enc.spec}' has stages {shown} (channels@/stride) but hdkd's feature loss "
                f"compares stages {want} of the student (model.channels); choose matching model.channels, "
                "or set loss.feature_weight=0 to distil logits only"
            )
        idx.append(hits[0])
    return idx


class EncoderTeacher(nn.Module):
    """Downstream classifier on an encoder, fed ImageNet-normalised input; ``return_features`` adds stages."""

    def __init__(
        self,
        enc: Encoder,
        num_classes: int,
        *,
        stages: Sequence[int] = (),
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        self.spec = enc.spec
        self.classifier = build_classifier(enc, num_classes)
        self.stages = list(stages)
        mi, si = torch.tensor(input_mean), torch.tensor(input_std)
        mt, st = torch.tensor(enc.mean), torch.tensor(enc.std)
        # x_teacher = (pixel - m_t) / s_t with pixel = x * s_in + m_in
        self.register_buffer("scale", (si / st).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((mi - mt) / st).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def build(
        cls, spec: str, num_classes: int, *, stage_channels: Sequence[int] = (), key: str = "teacher.encoder"
    ) -> EncoderTeacher:
        """Load ``spec``; with ``stage_channels`` (hdkd) also find the stages at strides 2, 4, 8."""
        enc = load_encoder(spec)
        stages = stage_indices(enc, stage_channels, (2, 4, 8), key) if stage_channels else ()
        return cls(enc, num_classes, stages=stages)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> Any:
        x = x * self.scale + self.shift
        if not return_features:
            return self.classifier(x)
        if not self.stages:
            raise ValueError("EncoderTeacher: built without stage indices (use for_hdkd)")
        backbone = self.classifier.encoder
        final, feats = backbone.forward_intermediates(x, indices=self.stages)
        logits = self.classifier.head(backbone.forward_head(final))
        return logits, list(feats)


def teacher_arch(spec: str, num_classes: int) -> dict[str, Any]:
    """The checkpoint/stage description of an encoder teacher."""
    return {"model": "encoder_teacher", "encoder": spec, "weights": encoder_stamp(spec), "num_classes": num_classes}
