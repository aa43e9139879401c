"""Batched augmentations for distillation: the paper's ``us`` preset, our ``us-physics``, natural-image
``default`` and ``none``. One view per image; the trainer feeds the same view to teacher and student.

    aug = build_augment(PretrainAugmentConfig(preset="us-physics"), 256)
    views = aug(images)   # uint8 or float [0,1] [B,1,H,W] on any device -> float32 [B,1,size,size] in [0,1]

Presets (defaults; every probability and range is a config key under ``augment.``):

- ``us`` (paper 002, R50-Distill-US): random resized crop (zoom / field of view, area 0.4-1 of the
  frame, aspect 3/4-4/3), horizontal flip p=0.5, NEVER a vertical flip (the probe is always at
  the top), mild Gaussian blur p=0.5 with sigma 0.1-1.5 px that grows with depth (sharp at the
  top rows, full sigma at the bottom: defocus away from a shallow focal zone;
  ``blur_depth_dependent=false`` blurs uniformly), no colour jitter (B-mode is grayscale).
- ``us-physics`` (ours): ``us`` plus scan-area-aware effects in acquisition order: acoustic
  shadow, depth attenuation, gain/TGC, haze, speckle noise, speckle reduction, then the depth
  blur, each with its own probability (see the effect configs below). The scan area and beam
  geometry (fan apex or linear probe) are estimated once per batch on the device and shared by
  every effect (``pretrain.us_geometry``: each full-size map is computed at most once per batch);
  depth is measured along the beam and the black surround stays 0.
- ``default`` (R50-Distill-Default ablation: natural-image, DINO-style single global view):
  random resized crop area 0.32-1 (DINOv2/v3 global-crop scale), aspect 3/4-4/3, horizontal flip
  p=0.5, brightness/contrast jitter 0.4 with p=0.8 (saturation and hue do not exist in grayscale;
  random grayscale is a no-op on B-mode and left out), Gaussian blur p=0.5 sigma 0.1-2 px,
  solarisation p=0.2.
- ``none``: resize to ``size`` only (evaluation, debugging).

Randomness comes from torch's global generators only (the CPU one for choices and parameters,
the device's for noise fields; kornia samples on the CPU one), so ``torch.manual_seed`` makes a
run reproducible and accelerate's checkpointed RNG state makes it resume exactly. Everything is
batched on the images' device; autocast is disabled inside so augmentation runs in float32.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from pretrain import augment_effects as fx
from pretrain.us_geometry import ScanGeometry
from sonodistill.config import ConfigError
from sonodistill.errors import UserError

Preset = Literal["us", "us-physics", "default", "none"]
PRESETS: tuple[str, ...] = get_args(Preset)
Range = tuple[float, float]

# Preset values of the keys left at None (``resolve`` fills them in).
PRESET_DEFAULTS: dict[str, dict[str, Range]] = {
    "us": {"crop_scale": (0.4, 1.0), "blur_sigma": (0.1, 1.5)},
    "us-physics": {"crop_scale": (0.4, 1.0), "blur_sigma": (0.1, 1.5)},
    "default": {"crop_scale": (0.32, 1.0), "blur_sigma": (0.1, 2.0)},
    "none": {"crop_scale": (1.0, 1.0), "blur_sigma": (0.1, 1.5)},
}


def _check_p(key: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"augment.{key}: expected a probability in [0, 1], got {p}")


def _check_range(key: str, r: Range, lo: float | None = None, hi: float | None = None, positive: bool = False) -> None:
    ok = len(r) == 2 and r[0] <= r[1]
    ok = ok and (lo is None or r[0] >= lo) and (hi is None or r[1] <= hi) and (not positive or r[0] > 0)
    if not ok:
        need = ["low <= high"] + (["low > 0"] if positive else [])
        need += (
            [f"within [{lo}, {hi}]"]
            if lo is not None and hi is not None
            else ([f"low >= {lo}"] if lo is not None else [])
        )
        raise ConfigError(f"augment.{key}: expected a range [low, high] with {', '.join(need)}, got {list(r)}")


@dataclass
class AttenuationConfig:
    """Depth attenuation ``(1-floor) exp(-rate d) + floor``, d = normalised depth (usaugment DepthAttenuation)."""

    p: float = 0.5  # probability an image gets this effect
    rate: Range = (0.0, 3.0)  # per unit normalised depth: 3 leaves 5 % at the deepest point
    floor: float = 0.0  # intensity fraction left at infinite depth (usaugment max_attenuation)

    def __post_init__(self) -> None:
        _check_p("attenuation.p", self.p)
        _check_range("attenuation.rate", self.rate, lo=0.0)
        _check_p("attenuation.floor", self.floor)


@dataclass
class ShadowConfig:
    """Acoustic shadow cast down the beam behind a reflector (usaugment GaussianShadow)."""

    p: float = 0.5  # probability an image gets this effect
    strength: Range = (0.25, 0.8)  # darkening at the shadow's centre line: x * (1 - strength)
    width: Range = (0.02, 0.15)  # Gaussian sigma across beams, fraction of the scan-area width
    depth: Range = (0.1, 0.7)  # normalised depth of the reflector (shadow starts there)
    position: Range = (0.1, 0.9)  # lateral position across the scan area's beams (0 left, 1 right)

    def __post_init__(self) -> None:
        _check_p("shadow.p", self.p)
        _check_range("shadow.strength", self.strength, 0.0, 1.0)
        _check_range("shadow.width", self.width, positive=True)
        _check_range("shadow.depth", self.depth, 0.0, 1.0)
        _check_range("shadow.position", self.position, 0.0, 1.0)


@dataclass
class HazeConfig:
    """Noisy bright band at a depth: near-field clutter / reverberation (usaugment HazeArtifact)."""

    p: float = 0.5  # probability an image gets this effect
    strength: Range = (0.25, 0.5)  # peak added intensity, times U(0,1) noise per pixel
    depth: Range = (0.05, 0.95)  # normalised depth of the band's centre (usaugment radius)
    width: Range = (0.02, 0.1)  # Gaussian sigma of the band, normalised depth

    def __post_init__(self) -> None:
        _check_p("haze.p", self.p)
        _check_range("haze.strength", self.strength, 0.0, 1.0)
        _check_range("haze.depth", self.depth, 0.0, 1.0)
        _check_range("haze.width", self.width, positive=True)


@dataclass
class SpeckleConfig:
    """Multiplicative speckle: x * Gamma(L, 1/L) noise (mean 1, variance 1/L)."""

    p: float = 0.5  # probability an image gets this effect
    looks: Range = (4.0, 16.0)  # L >= 1; 1 = fully developed speckle, larger = milder

    def __post_init__(self) -> None:
        _check_p("speckle.p", self.p)
        _check_range("speckle.looks", self.looks, lo=1.0)  # the sampler is accurate from L = 1


@dataclass
class DespeckleConfig:
    """Speckle reduction: bilateral filter (usaugment SpeckleReduction)."""

    p: float = 0.5  # probability an image gets this effect
    sigma_space: Range = (0.5, 2.0)  # pixels
    sigma_color: Range = (0.05, 0.3)  # intensity units ([0, 1] images)
    kernel_size: int = 5  # window side (odd), as usaugment's win_size

    def __post_init__(self) -> None:
        _check_p("despeckle.p", self.p)
        _check_range("despeckle.sigma_space", self.sigma_space, positive=True)
        _check_range("despeckle.sigma_color", self.sigma_color, positive=True)
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ConfigError(f"augment.despeckle.kernel_size: expected an odd integer >= 3, got {self.kernel_size}")


@dataclass
class GainConfig:
    """Overall gain plus a TGC curve: ``points`` knobs evenly spaced over depth, linearly interpolated."""

    p: float = 0.5  # probability an image gets this effect
    gain_db: Range = (-4.0, 4.0)  # overall gain, dB (x 10^(dB/20))
    tgc_db: Range = (-4.0, 4.0)  # each TGC knob, dB
    points: int = 4  # knobs at depths 0, 1/3, 2/3, 1

    def __post_init__(self) -> None:
        _check_p("gain.p", self.p)
        _check_range("gain.gain_db", self.gain_db)
        _check_range("gain.tgc_db", self.tgc_db)
        if self.points < 2:
            raise ConfigError(f"augment.gain.points: expected an integer >= 2, got {self.points}")


@dataclass
class PretrainAugmentConfig:
    """Augmentation preset and its parameters (the pretraining config's ``augment`` section)."""

    preset: Preset = "us"  # us (the paper) | us-physics | default (natural-image ablation) | none
    crop_scale: Range | None = None  # crop area / frame area; None: us 0.4-1, default 0.32-1
    crop_ratio: Range = (3 / 4, 4 / 3)  # crop width / height
    hflip_p: float = 0.5  # horizontal flip; a vertical flip is never applied
    blur_p: float = 0.5  # probability of the (depth-dependent) Gaussian blur
    blur_sigma: Range | None = None  # pixels at the output size; None: us 0.1-1.5, default 0.1-2
    blur_depth_dependent: bool = True  # us/us-physics: blur grows from 0 (top) to sigma (deepest)
    jitter_p: float = 0.8  # default preset only: brightness/contrast jitter
    brightness: float = 0.4  # factor in [1 - b, 1 + b]
    contrast: float = 0.4  # factor in [1 - c, 1 + c]
    solarize_p: float = 0.2  # default preset only: invert pixels >= 0.5
    scan_threshold: float = 12 / 255  # us-physics: scan area = pixels above this (as shards.scan_area)
    attenuation: AttenuationConfig = field(default_factory=AttenuationConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    haze: HazeConfig = field(default_factory=HazeConfig)
    speckle: SpeckleConfig = field(default_factory=SpeckleConfig)
    despeckle: DespeckleConfig = field(default_factory=DespeckleConfig)
    gain: GainConfig = field(default_factory=GainConfig)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"augment.preset: expected one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.crop_scale is not None:
            _check_range("crop_scale", self.crop_scale, 0.0, 1.0, positive=True)
        _check_range("crop_ratio", self.crop_ratio, positive=True)
        if self.blur_sigma is not None:
            _check_range("blur_sigma", self.blur_sigma, positive=True)
        for key in ("hflip_p", "blur_p", "jitter_p", "solarize_p"):
            _check_p(key, getattr(self, key))
        _check_range("brightness", (0.0, self.brightness), 0.0, 1.0)
        _check_range("contrast", (0.0, self.contrast), 0.0, 1.0)
        _check_p("scan_threshold", self.scan_threshold)


def resolve(cfg: PretrainAugmentConfig) -> PretrainAugmentConfig:
    """``cfg`` with every preset-dependent key (None) replaced by the preset's value."""
    fill = {k: v for k, v in PRESET_DEFAULTS[cfg.preset].items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **fill)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B,1,H,W]`` -> float32 / 255; float images are taken as already in [0, 1] and copied,
    because the augmentations work in place and must not modify the caller's batch."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserError(f"augment input: expected grayscale images [B,1,H,W], got {shape}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.is_floating_point():
        return images.to(torch.float32, copy=True)
    raise UserError(f"augment input: expected uint8 or float images, got {images.dtype}")


def _row_depth(x: torch.Tensor, geom: ScanGeometry | None) -> torch.Tensor:
    """Depth for the ``us`` blur without geometry: the image row, 0 at the top, 1 at the bottom."""
    h = x.shape[-2]
    return torch.linspace(0.0, 1.0, h, device=x.device).view(1, 1, h, 1)


def _beam_depth(x: torch.Tensor, geom: ScanGeometry | None) -> torch.Tensor:
    """Depth for the ``us-physics`` blur: normalised depth along the estimated beams."""
    return geom.depth


def build_effects(cfg: PretrainAugmentConfig) -> fx.ScanAwareEffects:
    """The ultrasound stage of a preset: physics effects (us-physics) and the depth blur (us, us-physics)."""
    cfg = resolve(cfg)
    effects: dict[str, fx.RandomEffect] = {}
    if cfg.preset == "us-physics":
        a, s, hz, sp, ds, g = cfg.attenuation, cfg.shadow, cfg.haze, cfg.speckle, cfg.despeckle, cfg.gain
        # Acquisition order: shadowing and attenuation in the tissue, the scanner's gain/TGC, clutter
        # (haze), speckle, the scanner's speckle filter; the defocus blur comes last.
        effects["shadow"] = fx.Shadow(s.p, s.strength, s.width, s.depth, s.position)
        effects["attenuation"] = fx.Attenuation(a.p, a.rate, a.floor)
        effects["gain"] = fx.GainTGC(g.p, g.gain_db, g.tgc_db, g.points)
        effects["haze"] = fx.Haze(hz.p, hz.strength, hz.depth, hz.width)
        effects["speckle"] = fx.SpeckleNoise(sp.p, sp.looks)
        effects["despeckle"] = fx.SpeckleReduction(ds.p, ds.sigma_space, ds.sigma_color, ds.kernel_size)
    if cfg.preset in ("us", "us-physics"):
        depth_of = _beam_depth if cfg.preset == "us-physics" else _row_depth
        effects["blur"] = fx.DepthBlur(cfg.blur_p, cfg.blur_sigma, cfg.blur_depth_dependent, depth_of)
    return fx.ScanAwareEffects(effects, cfg.scan_threshold if cfg.preset == "us-physics" else None)


class UltrasoundAugment(nn.Module):
    """The augmentation pipeline of one preset (build it with :func:`build_augment`)."""

    def __init__(self, cfg: PretrainAugmentConfig, size: int) -> None:
        super().__init__()
        if size < 8:
            raise ConfigError(f"image_size: expected an integer >= 8, got {size}")
        cfg = resolve(cfg)
        self.cfg, self.size = cfg, int(size)
        size = (self.size, self.size)
        self.geometric = nn.ModuleDict()
        if cfg.preset != "none":
            self.geometric["crop"] = K.RandomResizedCrop(
                size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, cropping_mode="resample"
            )
            if cfg.hflip_p > 0:
                self.geometric["hflip"] = K.RandomHorizontalFlip(p=cfg.hflip_p)
        self.effects = build_effects(cfg)
        self.photometric = nn.ModuleDict()
        if cfg.preset == "default":
            self.photometric["jitter"] = K.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast, p=cfg.jitter_p)
            kernel = 2 * math.ceil(3 * cfg.blur_sigma[1]) + 1
            self.photometric["blur"] = K.RandomGaussianBlur(kernel, cfg.blur_sigma, p=cfg.blur_p)
            self.photometric["solarize"] = K.RandomSolarize(thresholds=0.0, additions=0.0, p=cfg.solarize_p)

    @property
    def geometry(self) -> ScanGeometry | None:
        """The last batch's estimated scan geometry (us-physics), after crop and flip."""
        return self.effects.geometry

    @property
    def last_params(self) -> dict[str, dict[str, torch.Tensor]]:
        """Parameters of the last call per step: kornia's ``_params`` and the effects' draws."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for name, mod in [*self.geometric.items(), *self.photometric.items()]:
            if getattr(mod, "_params", None) is not None:
                out[name] = dict(mod._params)
        for name, mod in self.effects.effects.items():
            out[name] = mod.last_params
        return out

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(images)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.cfg.preset == "none":
                if x.shape[-2:] != (self.size, self.size):
                    x = F.interpolate(
                        x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
                    )
                return x.clamp_(0.0, 1.0)
            for mod in self.geometric.values():
                x = mod(x)
            x = self.effects(x)
            for mod in self.photometric.values():
                x = mod(x)
            return x.clamp_(0.0, 1.0)


def build_augment(cfg: PretrainAugmentConfig, size: int) -> UltrasoundAugment:
    """The augmentation module for ``cfg`` with ``size`` x ``size`` outputs (an ``nn.Module``; call it
    on a batch). The output size is the run's ``image_size``, not an augmentation setting."""
    return UltrasoundAugment(cfg, size)
