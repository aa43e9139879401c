"""CSA-MoE-Net (paper 004): experts with Cross-Stage Attention, an adaptive gate, a fused classifier.

Each expert is a timm backbone (ResNet-18 in the paper; VGG-16 / DenseNet-121 in its Table IV)
whose four deepest stage outputs F1..F4 feed the Cross-Stage Attention: pooled to vectors, 4 key
and 4 value maps to 128-d, a learnable query, softmax over stages of q.k/sqrt(128), the weighted
value sum -> MLP 128 -> 64 (ReLU) -> C4 (sigmoid) channel weights that rescale F4. The rescaled map
goes through the backbone's own head (GAP for ResNet-18 -> 512). The gate reads the concatenated
expert features: Linear 64 -> BN -> ReLU -> Dropout(0.2) -> Linear E -> softmax; the fused feature
(gate-weighted sum) -> FC -> benign/malignant logits (softmax cross-entropy on two logits is the
sigmoid decision of the paper).

With one view and no CSA the model is exactly the plain backbone + FC (the ResNet-18 baseline).
Written here because no library provides cross-stage attention or this gate; stage taps use
timm's ``forward_intermediates``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from downstream.kd.models.backbones import create

VIEWS = ("image", "core", "boundary")


class CrossStageAttention(nn.Module):
    def __init__(self, stage_channels: Sequence[int], out_channels: int, dim: int = 128, hidden: int = 64):
        super().__init__()
        self.keys = nn.ModuleList(nn.Linear(c, dim) for c in stage_channels)
        self.values = nn.ModuleList(nn.Linear(c, dim) for c in stage_channels)
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_channels))
        self.scale = dim**-0.5

    def forward(self, stages: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Channel weights (B, C4) and the stage attention (B, n_stages, summing to 1)."""
        pooled = [f.mean(dim=(2, 3)) for f in stages]
        keys = torch.stack([k(z) for k, z in zip(self.keys, pooled)], dim=1)  # B, S, dim
        values = torch.stack([v(z) for v, z in zip(self.values, pooled)], dim=1)
        attn = torch.softmax(keys @ self.query * self.scale, dim=1)  # B, S
        fused = (attn.unsqueeze(-1) * values).sum(dim=1)
        return torch.sigmoid(self.mlp(fused)), attn


class Expert(nn.Module):
    """A timm backbone (no classifier) with optional Cross-Stage Attention on its last four stages."""

    def __init__(
        self,
        backbone: str = "resnet18",
        csa: bool = True,
        pretrained: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.backbone = create(
            backbone, pretrained=pretrained, key="model.backbone", num_classes=0, **(backbone_kwargs or {})
        )
        chans = [f["num_chs"] for f in self.backbone.feature_info][-4:]
        self.csa = CrossStageAttention(chans, chans[-1]) if csa else None
        self.num_features = (
            self.backbone.num_features
            if not hasattr(self.backbone, "head_hidden_size")
            else (self.backbone.head_hidden_size or self.backbone.num_features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.csa is None:
            return self.backbone(x)
        final, stages = self.backbone.forward_intermediates(x, indices=4)
        weights, _ = self.csa(stages)
        return self.backbone.forward_head(final * weights[:, :, None, None], pre_logits=True)


class CSAMoENet(nn.Module):
    """Experts over ``views`` (a subset of image/core/boundary, in the input's view order)."""

    def __init__(
        self,
        num_classes: int = 2,
        backbone: str = "resnet18",
        views: Sequence[str] = VIEWS,
        csa: bool = True,
        pretrained: bool = False,
        gate_hidden: int = 64,
        gate_dropout: float = 0.2,
        backbone_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not views or any(v not in VIEWS for v in views) or len(set(views)) != len(views):
            raise ValueError(f"views must be distinct names from {VIEWS}, got {list(views)}")
        self.views = tuple(views)
        self.experts = nn.ModuleList(Expert(backbone, csa, pretrained, backbone_kwargs) for _ in views)
        width = self.experts[0].num_features
        self.gate = None
        if len(views) > 1:
            self.gate = nn.Sequential(
                nn.Linear(width * len(views), gate_hidden),
                nn.BatchNorm1d(gate_hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(gate_dropout),
                nn.Linear(gate_hidden, len(views)),
            )
        self.fc = nn.Linear(width, num_classes)

    def forward(self, views: torch.Tensor, with_gates: bool = False):
        """``views``: (B, V, 3, H, W) in ``self.views`` order -> logits (B, classes), and with
        ``with_gates`` also the gate weights (B, V) (a flag so DDP-wrapped models work)."""
        if views.dim() != 5 or views.shape[1] != len(self.views):
            raise ValueError(f"expected (B, {len(self.views)}, C, H, W) views, got {tuple(views.shape)}")
        feats = torch.stack([e(views[:, i]) for i, e in enumerate(self.experts)], dim=1)  # B, V, D
        if self.gate is None:
            gates = feats.new_ones(feats.shape[0], 1)
        else:
            gates = torch.softmax(self.gate(feats.flatten(1)), dim=1)
        logits = self.fc((gates.unsqueeze(-1) * feats).sum(dim=1))
        return (logits, gates) if with_gates else logits
