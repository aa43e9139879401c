"""Encoder specs -> a loaded backbone with its own input normalisation.

SPEC forms:

- ``rand``                  ResNet-50, random init (R50-Rand); ``rand:NAME`` any timm architecture, random init
- ``timm:NAME``             a timm backbone with its pretrained weights, only if already in the local cache
- ``PATH`` / ``local-dir:PATH``  a folder written by timm ``save_for_hf`` (``pretrain.export``'s distilled encoder)
- ``hf-hub:ID``             the same format on the Hugging Face Hub (or its local cache when offline)
- ``dinov3:PATH_OR_ID``     a DINOv3 ViT (transformers) through :meth:`sonodistill.dinov3.DINOv3.from_pretrained`

Where the Hub does not answer (:func:`sonodistill.hub.timm_pretrained_source`), ``timm:`` and ``hf-hub:``
weights come straight from the local cache, or the spec fails in one line at once, instead of
after huggingface_hub's retries.

timm backbones are built with ``num_classes=0`` (forward -> globally pooled features) and take
their mean/std from timm's ``pretrained_cfg``; DINOv3 takes them from its image processor.
Random initialisation uses the torch RNG, so callers seed it first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from sonodistill.errors import UserError
from sonodistill.hub import in_reach, timm_pretrained_source

SPEC_FORMS = (
    "rand",
    "rand:NAME",
    "timm:NAME",
    "PATH (timm save_for_hf folder, e.g. pretrain.export output)",
    "local-dir:PATH",
    "hf-hub:ID",
    "dinov3:PATH_OR_ID",
)


def spec_label(spec: str) -> str:
    """A short name of an encoder spec for plot titles: a local folder by its name, never its path."""
    prefix, sep, rest = spec.partition(":")
    if sep and (prefix == "local-dir" or (prefix == "dinov3" and Path(rest).exists())):
        return f"{prefix}:{Path(rest.rstrip('/')).name}"
    if not sep and ("/" in spec or Path(spec).exists()):  # a bare spec with a slash is a folder
        return Path(spec.rstrip("/")).name
    return spec


@dataclass
class Encoder:
    spec: str
    kind: Literal["timm", "dinov3"]
    arch: str  # timm architecture, or "dinov3"
    backbone: nn.Module  # timm: forward -> pooled [B, F]; dinov3: DinoBackbone
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_features: int  # pooled feature size (classification head input)
    patch_size: int | None = None  # ViTs: input sides must be multiples of it

    @property
    def params_m(self) -> float:
        return sum(p.numel() for p in self.backbone.parameters()) / 1e6

    def fingerprint(self) -> str:
        """Hash of the architecture and every tensor (parameters and buffers): keys the feature cache."""
        h = hashlib.sha1(f"{self.kind}:{self.arch}".encode())
        for k, v in self.backbone.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]


class DinoBackbone(nn.Module):
    """A transformers DINOv3 ViT returning the final-normed CLS token and the patch-token grid.

    Kept in eval mode even while fine-tuning: in train mode DINOv3 randomly rescales its RoPE
    coordinates, an augmentation for pretraining, not for downstream heads.
    """

    def __init__(self, vit: nn.Module, patch_size: int, num_register_tokens: int):
        super().__init__()
        self.vit = vit
        self.patch_size = patch_size
        self.prefix = 1 + num_register_tokens
        self.embed_dim = int(vit.config.hidden_size)

    def train(self, mode: bool = True) -> DinoBackbone:
        return super().train(False)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise UserError(
                f"dinov3: input {h}x{w} is not a multiple of the patch size {self.patch_size}; set image_size"
            )
        hs = self.vit(pixel_values=x).last_hidden_state  # final LayerNorm applied
        cls, patches = hs[:, 0], hs[:, self.prefix :]
        grid = patches.transpose(1, 2).reshape(x.shape[0], self.embed_dim, h // self.patch_size, w // self.patch_size)
        return cls, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features for classification: CLS token ++ mean patch token."""
        cls, grid = self.tokens(x)
        return torch.cat([cls, grid.mean((2, 3))], dim=1)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _pretrained(spec: str, name: str, hint: str) -> Encoder:
    """A timm model with pretrained weights, from the local cache alone when the Hub does not answer."""
    source = timm_pretrained_source(name)
    if source is None:
        raise UserError(f"encoder '{spec}': {hint}")
    return _timm(spec, source[0], True, hint, source[1])


def _create(name: str, pretrained: bool, overlay: dict) -> nn.Module:
    """``timm.create_model``; ViTs with ``dynamic_img_size`` (their position embedding resampled to
    any input a multiple of the patch), which every other family rejects as an unknown argument."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, dynamic_img_size=True, **overlay)
    except TypeError as exc:
        if "dynamic_img_size" not in str(exc):
            raise
    return timm.create_model(name, pretrained=pretrained, num_classes=0, **overlay)


def _timm(spec: str, name: str, pretrained: bool, hint: str, overlay: dict | None = None) -> Encoder:
    try:
        model = _create(name, pretrained, overlay or {})
    except RuntimeError as exc:
        text = str(exc)
        if text.startswith("Unknown model"):
            raise UserError(f"encoder '{spec}': timm has no architecture '{name}' (see timm.list_models())") from None
        if "state_dict" in text or "size mismatch" in text:
            raise UserError(f"encoder '{spec}': weights do not match the architecture ({_one_line(exc)})") from None
        raise UserError(f"encoder '{spec}': cannot build it ({_one_line(exc)})") from None
    except (OSError, ValueError, KeyError, ImportError) as exc:  # offline hub, missing files, bad config.json
        raise UserError(f"encoder '{spec}': {hint} ({type(exc).__name__}: {_one_line(exc)})") from None
    except Exception as exc:  # safetensors' own error for a weights file cut short or garbled
        if type(exc).__name__ != "SafetensorError":
            raise
        raise UserError(f"encoder '{spec}': unreadable weights file ({_one_line(exc)})") from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != 3:  # single-channel statistics: replicate
        mean, std = (mean[0],) * 3, (std[0],) * 3
    arch = cfg.get("architecture") or name.split(".")[0]
    # pooled output size: models with a pre-logits layer (MobileNetV3, EfficientNet-style conv_head)
    # return head_hidden_size features once the classifier is removed, the rest num_features
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)  # ViTs: (ph, pw)
    return Encoder(spec, "timm", arch, model, mean, std, int(dim), int(patch[0]) if patch else None)


def _dinov3(spec: str, target: str) -> Encoder:
    from sonodistill.dinov3 import DINOv3  # one DINOv3 loader for the teacher and this encoder

    try:
        vit = DINOv3.from_pretrained(target, layers=(-1,), key="dinov3")
    except UserError as exc:
        raise UserError(f"encoder '{spec}': {exc}") from None
    vit.model.requires_grad_(True)
    # the masked-image-modelling token is used only with a pixel mask, never here: a parameter
    # that never gets a gradient stops DistributedDataParallel on the second step
    mask_token = getattr(getattr(vit.model, "embeddings", None), "mask_token", None)
    if isinstance(mask_token, torch.nn.Parameter):
        mask_token.requires_grad_(False)
    backbone = DinoBackbone(vit.model, vit.patch_size, vit.num_register_tokens)
    return Encoder(spec, "dinov3", "dinov3", backbone, vit.mean, vit.std, 2 * backbone.embed_dim, vit.patch_size)


def _offline_hint(name: str) -> str:
    return (
        f"pretrained weights for '{name}' are not in the local cache and the Hub is not reachable "
        f"(offline); use rand:{name} for random init or a local save_for_hf folder"
    )


def _check_timm_name(spec: str, name: str) -> None:
    import timm

    if not timm.is_model(name.split(".")[0]):  # a pretrained tag (resnet50.a1_in1k) is timm's to resolve
        raise UserError(f"encoder '{spec}': timm has no architecture '{name}' (see timm.list_models())")
    if spec.startswith("timm:") and timm_pretrained_source(name) is None:
        raise UserError(f"encoder '{spec}': {_offline_hint(name)}")


def _check_dinov3(spec: str, target: str) -> None:
    if target.startswith(("/", ".", "~")) and not Path(target).expanduser().is_dir():
        raise UserError(f"encoder '{spec}': {target} is not a folder (a save_pretrained DINOv3) nor a Hub id")
    if not in_reach(target):
        raise UserError(
            f"encoder '{spec}': '{target}' is not in the local cache, and the Hub is not reachable from here"
        )


def check_spec(spec: str) -> None:
    """Raise the :class:`UserError` :func:`load_encoder` would for a malformed ``spec``, an unknown timm
    architecture, timm weights out of reach or a missing folder, without loading anything: a sweep
    checks every encoder before its first cell."""
    spec = spec.strip()
    if spec == "rand" or spec.startswith(("rand:", "timm:", "hf-hub:", "dinov3:")):
        if not spec.split(":", 1)[-1] and spec != "rand":
            raise UserError(f"encoder '{spec}': a name is missing after '{spec}'; valid forms: {'; '.join(SPEC_FORMS)}")
        if spec.startswith(("rand:", "timm:")):
            _check_timm_name(spec, spec.split(":", 1)[1])
        elif spec.startswith("hf-hub:") and timm_pretrained_source(spec) is None:
            raise UserError(f"encoder '{spec}': cannot fetch it from the Hub or find it in the local cache (offline?)")
        elif spec.startswith("dinov3:"):
            _check_dinov3(spec, spec[7:])
        return
    path = spec[10:] if spec.startswith("local-dir:") else spec
    if not path:
        missing = "the folder is missing after 'local-dir:'" if spec else "empty spec"
        raise UserError(f"encoder '{spec}': {missing}; valid forms: {'; '.join(SPEC_FORMS)}")
    if not Path(path).is_dir():
        raise UserError(
            f"encoder '{spec}': unknown encoder spec (not an existing folder); valid forms: {'; '.join(SPEC_FORMS)}"
        )
    _check_timm_folder(spec, Path(path))


def _check_timm_folder(spec: str, path: Path) -> None:
    """A timm ``save_for_hf`` folder: its config.json names an ``architecture`` (a transformers
    folder, e.g. a DINOv3 teacher, has a ``model_type`` instead)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"encoder '{spec}': {path} has no config.json (expected a timm save_for_hf folder)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"encoder '{spec}': {path}/config.json is not readable JSON ({exc})") from None
    if not isinstance(config, dict) or not config.get("architecture"):
        kind = str(config.get("model_type", "")) if isinstance(config, dict) else ""
        hint = f"; a {kind} model folder: give it as dinov3:{path}" if kind.startswith("dinov3") else ""
        raise UserError(
            f"encoder '{spec}': {path}/config.json names no timm architecture (expected a timm save_for_hf "
            f"folder such as pretrain.export writes){hint}"
        )


def load_encoder(spec: str) -> Encoder:
    """Build the encoder named by ``spec`` (see the module docstring); bad specs raise UserError."""
    check_spec(spec)
    spec = spec.strip()
    if spec == "rand":
        return _timm(spec, "resnet50", False, "")
    if spec.startswith("rand:"):
        return _timm(spec, spec[5:], False, "")
    if spec.startswith("timm:"):
        return _pretrained(spec, spec[5:], _offline_hint(spec[5:]))
    if spec.startswith("hf-hub:"):
        hint = "cannot fetch it from the Hub or find it in the local cache (offline?)"
        return _pretrained(spec, spec, hint)
    if spec.startswith("dinov3:"):
        return _dinov3(spec, spec[7:])
    path = spec[10:] if spec.startswith("local-dir:") else spec
    return _timm(spec, f"local-dir:{Path(path).resolve()}", True, f"cannot load the weights in {path}")


def deployable_spec(spec: str) -> bool:
    """Whether ``spec`` names a trained encoder of ours (an export folder or a Hub copy of one), the
    encoders the edge column also deploys to ONNX / INT8; random-init, timm and DINOv3 references are not."""
    spec = spec.strip()
    return spec != "rand" and not spec.startswith(("rand:", "timm:", "dinov3:"))


@contextlib.contextmanager
def quiet_timm_loader() -> Iterator[None]:
    """timm logs every unexpected key of a features-only load at WARNING; the head keys are expected."""
    logger = logging.getLogger("timm.models._builder")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
