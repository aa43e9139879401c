"""Grad-CAM panels comparing two CNNs on the same test images (paper 003, Fig. 1: baseline vs distilled).

The ``grad-cam`` package computes the maps; this module only picks the layer and lays out the PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from sonodistill.figures import save_figure


def last_conv_stage(model: torch.nn.Module) -> torch.nn.Module:
    """The deepest spatial stage of a timm CNN (MobileNetV3: ``blocks[-1]``; ResNet: ``layer4``)."""
    name = model.feature_info[-1]["module"] if hasattr(model, "feature_info") else None
    if name is None:
        raise ValueError("Grad-CAM: model has no timm feature_info to pick a target layer from")
    return model.get_submodule(name)


def cams(model: torch.nn.Module, x: torch.Tensor, targets: Sequence[int] | None = None) -> np.ndarray:
    """Grad-CAM maps [N, H, W] in [0, 1] for ``x`` (targets: class per image, default the prediction)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    tgt = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    with GradCAM(model=model, target_layers=[last_conv_stage(model)]) as cam:
        return cam(input_tensor=x, targets=tgt)


def panels(gray: np.ndarray, maps: Mapping[str, np.ndarray], path: str | Path, *, titles: Sequence[str] = ()) -> None:
    """PNG grid: one row per image, columns = input then one Grad-CAM overlay per model."""
    from sonodistill.figures import pyplot

    plt = pyplot()
    from pytorch_grad_cam.utils.image import show_cam_on_image

    n = gray.shape[0]
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols, 2.6 * n), squeeze=False)
    for i in range(n):
        rgb = np.repeat(gray[i][..., None].astype(np.float32) / 255.0, 3, axis=2)
        axes[i, 0].imshow(rgb)
        axes[i, 0].set_title(titles[i] if i < len(titles) else "input", fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(show_cam_on_image(rgb, m[i], use_rgb=True))
            axes[i, j].set_title(name, fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
