"""HDKD (paper 001): MBCSA blocks, the pure-CNN teacher and the hybrid CNN + DFLT student.

MBCSA = MBConv (pre-BN, 1x1 expand x4, 3x3 depthwise, 1x1 project, residual) with CBAM in place
of SE; CBAM's channel MLP uses GELU (paper §3.3). Stage 1 is a run of stem layers (3x3 conv, BN,
GELU), stages 2-3 are MBCSA; every stage halves the resolution in its first block.

Channel widths: the paper's Table 1 says [64, 128, 192], the authors' public code uses
[64, 96, 192]. Only [64, 96, 192] reproduces the reported parameter counts (teacher 3.95M,
student 3.72M, HDKD 3.73M with a 7-class head, see tests/test_kd_models.py), so it is the default.

Written here because no library ships MBCSA or the DFLT stage; the transformer layers themselves
are timm's pre-norm ``Block``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.vision_transformer import Block
from torch import nn

HDKD_CHANNELS = (64, 96, 192)
TEACHER_BLOCKS = (6, 6, 9)
STUDENT_BLOCKS = (2, 2, 3)


def stem_layer(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU())


def stage_outputs(stages: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every stage in turn (the features the HDKD feature loss compares)."""
    feats = []
    for stage in stages:
        x = stage(x)
        feats.append(x)
    return feats


class ChannelAttention(nn.Module):
    """sigmoid(MLP(avgpool F) + MLP(maxpool F)); the shared MLP shrinks by ``ratio`` with GELU between."""

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        hidden = max(channels // ratio, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.GELU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """sigmoid(conv7x7([mean_c F, max_c F]))."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel then spatial attention. The refined map is added back to the input, as in the
    authors' release (their eq. 3 leaves the skip out; it has no parameters either way)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channel = ChannelAttention(channels)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.channel(x) * x
        return x + self.spatial(y) * y


class MBCSA(nn.Module):
    """Mobile Channel-Spatial Attention block; ``stride=2`` also reshapes the shortcut (max-pool + 1x1)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expansion: int = 4):
        super().__init__()
        hidden = cin * expansion
        self.norm = nn.BatchNorm2d(cin)
        self.body = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, stride, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.GELU(),
            CBAM(hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.MaxPool2d(3, stride, 1) if stride != 1 else nn.Identity(), nn.Conv2d(cin, cout, 1, bias=False)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(self.norm(x))


def conv_stages(blocks: Sequence[int], channels: Sequence[int], in_chans: int = 3) -> nn.ModuleList:
    """The three shared stages: stem layers, then two MBCSA stages; each halves the resolution."""
    if len(blocks) != 3 or len(channels) != 3:
        raise ValueError("HDKD has three convolutional stages: blocks and channels need 3 entries each")
    stem = [stem_layer(in_chans if i == 0 else channels[0], channels[0], 2 if i == 0 else 1) for i in range(blocks[0])]
    stages = [nn.Sequential(*stem)]
    for s in (1, 2):
        cin, cout = channels[s - 1], channels[s]
        stages.append(
            nn.Sequential(*[MBCSA(cin if i == 0 else cout, cout, 2 if i == 0 else 1) for i in range(blocks[s])])
        )
    return nn.ModuleList(stages)


class HDKDTeacher(nn.Module):
    """Pure CNN: three stages [6, 6, 9], global average pooling, FC 192->128, FC 128->classes."""

    def __init__(
        self,
        num_classes: int = 7,
        blocks: Sequence[int] = TEACHER_BLOCKS,
        channels: Sequence[int] = HDKD_CHANNELS,
        hidden: int = 128,
        in_chans: int = 3,
    ):
        super().__init__()
        self.stages = conv_stages(blocks, channels, in_chans)
        self.fc = nn.Linear(channels[-1], hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return stage_outputs(self.stages, x)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.forward_stages(x)
        logits = self.head(self.fc(feats[-1].mean(dim=(2, 3))))
        return (logits, feats) if return_features else logits


class DFLT(nn.Module):
    """Distilled Feature-Level Transformer: DeiT-style transformer over the stage-3 feature map.

    Patches of ``patch x patch`` feature pixels are flattened, LayerNorm -> Linear -> LayerNorm
    embedded, prefixed with a CLS token (and a distillation token when ``distill``), given learned
    position embeddings and passed through ``depth`` transformer layers (``heads`` x ``dim/heads``,
    MLP ratio 4, LayerNorm before attention, none before the MLP), then a final LayerNorm.
    """

    def __init__(
        self,
        in_chans: int,
        grid: int,
        dim: int = 256,
        depth: int = 3,
        heads: int = 8,
        patch: int = 2,
        mlp_ratio: float = 4.0,
        distill: bool = True,
    ):
        super().__init__()
        if grid % patch:
            raise ValueError(f"DFLT: feature grid {grid} is not divisible by the patch size {patch}")
        self.patch = patch
        patch_dim = in_chans * patch * patch
        self.embed = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        self.num_prefix = 2 if distill else 1
        self.prefix = nn.Parameter(torch.randn(1, self.num_prefix, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (grid // patch) ** 2 + self.num_prefix, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=False) for _ in range(depth)])
        for blk in self.blocks:  # the authors' layers pre-norm attention only; that reproduces 3.72M/3.73M
            blk.norm2 = nn.Identity()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
        x = torch.cat([self.prefix.expand(b, -1, -1), self.embed(x)], dim=1) + self.pos
        return self.norm(self.blocks(x))[:, : self.num_prefix]


class HDKDStudent(nn.Module):
    """Hybrid student: the teacher's three stages with [2, 2, 3] blocks, then DFLT and linear heads.

    ``distill=True`` is HDKD (CLS + distillation tokens, two heads; inference averages the two
    logits); ``distill=False`` is the paper's student without distillation (CLS token only).
    """

    def __init__(
        self,
        num_classes: int = 7,
        distill: bool = True,
        img_size: int = 224,
        blocks: Sequence[int] = STUDENT_BLOCKS,
        channels: Sequence[int] = HDKD_CHANNELS,
        dim: int = 256,
        depth: int = 3,
        heads: int = 8,
        patch: int = 2,
        in_chans: int = 3,
    ):
        super().__init__()
        if img_size % 8:
            raise ValueError(f"HDKD student: image size {img_size} must be a multiple of 8")
        self.distill = distill
        self.stages = conv_stages(blocks, channels, in_chans)
        self.dflt = DFLT(channels[-1], img_size // 8, dim, depth, heads, patch, distill=distill)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distill else None

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return stage_outputs(self.stages, x)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """CLS logits, distillation logits (None without distillation) and the stage features."""
        feats = self.forward_stages(x)
        tokens = self.dflt(feats[-1])
        cls = self.head(tokens[:, 0])
        dist = self.head_dist(tokens[:, 1]) if self.head_dist is not None else None
        return cls, dist, feats

    def forward(self, x: torch.Tensor, train_outputs: bool = False):
        """Inference logits (CLS and distillation logits averaged); ``train_outputs=True`` returns
        :meth:`forward_train`'s tuple (a flag rather than a method so DDP-wrapped models work)."""
        cls, dist, feats = self.forward_train(x)
        if train_outputs:
            return cls, dist, feats
        return cls if dist is None else (cls + dist) / 2
