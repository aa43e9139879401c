"""timm backbones for the KD recipes (and the timm student's config): random init offline, pretrained weights
when the user has them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
from torch import nn

from downstream.fit import FitConfig
from sonodistill.errors import UserError
from sonodistill.hub import timm_pretrained_source


def check_model(name: str, pretrained: bool, key: str) -> tuple[str, dict]:
    """One line naming ``key`` for a name timm does not know or pretrained weights that cannot be
    had; else what :func:`create` passes to timm (a recipe's check calls it before any work)."""
    if not timm.is_model(name.split(".")[0]) and not name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        raise UserError(f"{key}: unknown timm model '{name}'")
    source = timm_pretrained_source(name) if pretrained else (name, {})
    if source is None:
        raise UserError(
            f"{key}: pretrained weights for '{name}' are not in the local cache and the Hub is not reachable "
            "from here; download them into the Hugging Face cache first or set pretrained=false"
        )
    return source


def create(name: str, *, pretrained: bool = False, key: str = "model", **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with the recipe's config ``key`` named in any error.

    ``pretrained=True`` reads timm's usual sources (HF cache, ``pretrained_cfg_overlay=dict(file=...)``),
    the local cache alone when the Hub does not answer (:mod:`sonodistill.hub`); when they cannot be
    reached the user gets one line instead of a network traceback.
    """
    source = check_model(name, pretrained, key)
    try:
        return timm.create_model(source[0], pretrained=pretrained, **source[1], **kwargs)
    except TypeError as exc:
        raise UserError(f"{key}: timm model '{name}' rejects its arguments ({exc})") from None
    except (OSError, RuntimeError, ValueError) as exc:
        if not pretrained:
            raise
        msg = " ".join(str(exc).split())[:200]
        raise UserError(
            f"{key}: pretrained weights for '{name}' could not be loaded ({msg}); "
            f"download them into the Hugging Face cache first or set pretrained=false"
        ) from None


@dataclass
class TimmStudentConfig:
    """A timm classifier as the student (vit_mobilenet, nanoray)."""

    model: str = "mobilenetv3_small_100"  # timm model name (e.g. mobilenetv3_large_100)
    pretrained: bool = False  # ImageNet weights from the local timm / Hugging Face cache
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    train: FitConfig = field(default_factory=FitConfig)

    def check(self, key: str) -> None:
        check_model(self.model, False, f"{key}.model")

    def check_weights(self, key: str) -> None:
        """Its pretrained weights in reach (a recipe's check; not ``--show-config``'s, which may run offline)."""
        check_model(self.model, self.pretrained, f"{key}.model")


def timm_student(cfg: TimmStudentConfig, num_classes: int) -> nn.Module:
    """The timm classifier student of vit_mobilenet and nanoray (``student.*``)."""
    return create(cfg.model, pretrained=cfg.pretrained, key="student.model", num_classes=num_classes, **cfg.kwargs)
