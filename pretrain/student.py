"""The student: a timm CNN backbone plus the token-wise projection head of paper 002 (eq. 3).

The backbone's stride-32 feature map (8x8 at 256 px for ResNet-50) is projected token by token by
a two-layer MLP (hidden 4096 by default) to the teacher's embedding dimension, then upsampled
bilinearly to the teacher's patch grid (16x16 at 256 px for a /16 ViT). Only ``backbone`` is
exported; the head exists for distillation.

The student sees exactly the teacher's input: the grayscale view replicated to 3 channels and
normalised with the teacher's statistics, so the exported encoder keeps 3 input channels and loads
strictly into ``segmentation_models_pytorch.Unet(<name>).encoder``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.errors import UserError


class ProjectionHead(nn.Module):
    """Token-wise two-layer MLP ``g_phi`` as 1x1 convolutions (Linear on every spatial token)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_dim, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def create_backbone(name: str) -> nn.Module:
    """A randomly initialised timm backbone without classifier or pooling (``num_classes=0``)."""
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise UserError(f"student.name: unknown timm model '{name}' (see timm.list_models())") from None
        raise


def backbone_stride(backbone: nn.Module) -> int:
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise UserError(f"student.name: timm model {type(backbone).__name__} exposes no feature_info (need a CNN)")
    if getattr(backbone, "patch_embed", None) is not None:  # ViT, Swin, ...: tokens at a fixed input size
        raise UserError(
            f"student.name: timm model {type(backbone).__name__} is a transformer (patch tokens); "
            "the student is a CNN with a spatial feature map (e.g. resnet50, convnext_tiny)"
        )
    return int(info[-1]["reduction"])


def check_grids(image_size: int, patch_size: int, stride: int, student_name: str = "student") -> tuple[int, int]:
    """Teacher and student grids for square ``image_size`` inputs; a mismatch raises :class:`UserError`.

    The student's grid is upsampled by an integer factor onto the teacher's (8 -> 16 at 256 px), so
    the image size must be a multiple of both the patch size and the student stride, and the teacher
    grid a multiple of the student grid.
    """
    where = "image_size"
    if image_size % patch_size:
        raise UserError(f"{where}: {image_size} px is not a multiple of the teacher patch size {patch_size}")
    if image_size % stride:
        raise UserError(f"{where}: {image_size} px is not a multiple of the {student_name} stride {stride}")
    t_grid, s_grid = image_size // patch_size, image_size // stride
    if s_grid > t_grid or t_grid % s_grid:
        raise UserError(
            f"{where}: teacher grid {t_grid}x{t_grid} (patch {patch_size}) and {student_name} grid "
            f"{s_grid}x{s_grid} (stride {stride}) do not align by an integer upsampling factor"
        )
    return t_grid, s_grid


class Student(nn.Module):
    """timm backbone + projection head; ``forward`` gives ``[B, out_dim, *grid]`` on the teacher grid."""

    def __init__(
        self, name: str = "resnet50", out_dim: int = 1536, head_hidden: int = 4096, grid: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.name = name
        self.backbone = create_backbone(name)
        self.stride = backbone_stride(self.backbone)
        self.head = ProjectionHead(self.backbone.num_features, head_hidden, out_dim)
        self.out_dim = out_dim
        self.grid = tuple(grid) if grid is not None else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone.forward_features(x)
        if f.ndim != 4:
            raise UserError(f"student.name: '{self.name}' returns token sequences, not a CNN feature map")
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.features(x))
        grid = self.grid or z.shape[-2:]
        if tuple(z.shape[-2:]) != tuple(grid):
            z = F.interpolate(z, size=grid, mode="bilinear", align_corners=False)
        return z


def build_student(
    name: str, teacher_dim: int, head_hidden: int, image_size: int, patch_size: int, out_dim: int = 0
) -> Student:
    """Build the student for a teacher and check grids and dimensions up front (clear errors)."""
    if out_dim and out_dim != teacher_dim:
        raise UserError(
            f"student.out_dim: {out_dim} does not match the teacher embedding dim {teacher_dim} "
            "(hidden size x number of layers for concat); set 0 to follow the teacher"
        )
    student = Student(name, out_dim=teacher_dim, head_hidden=head_hidden)
    t_grid, _ = check_grids(image_size, patch_size, student.stride, f"student '{name}'")
    student.grid = (t_grid, t_grid)
    return student
