"""Random application of the ultrasound effects: which images, with which parameters.

Each effect module draws, per batch, a Bernoulli(``p``) choice per image and the chosen images'
parameters uniformly from configured ranges, then applies the pure effect of
``pretrain.us_effects`` to those images only (gathered, processed, scattered back: batched, no
per-image Python loop). Written here rather than as kornia ``IntensityAugmentationBase2D``
subclasses because kornia's base hands a transform only the image, not the per-image scan
geometry the effects depend on.

Randomness: the choices and scalar parameters come from torch's global CPU generator (small
tensors, moved to the device without a sync); per-pixel noise fields come from the generator of
the images' device. Both are seeded by ``torch.manual_seed`` and saved/restored by accelerate's
checkpoint RNG state, so augmented batches are reproducible and resume exactly.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch
from torch import nn

from pretrain import us_effects
from pretrain.us_geometry import ScanGeometry, estimate_geometry

Range = tuple[float, float]


def uniform(n: int, bounds: Range) -> torch.Tensor:
    """``n`` draws from U(lo, hi) on the CPU global generator (float32)."""
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n)


class RandomEffect(nn.Module, abc.ABC):
    """Base: choose images with probability ``p``, sample their parameters, apply the effect."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        # The last call's chosen indices and scalar parameters, for inspection and tests.
        self.last_params: dict[str, torch.Tensor] = {}

    @abc.abstractmethod
    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameters for ``n`` chosen images ``x``: CPU scalars ``[n]``/``[n,K]`` or device maps."""

    @abc.abstractmethod
    def effect(self, x: torch.Tensor, geom: ScanGeometry | None, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The effect on the chosen images with their parameters (on the images' device)."""

    def forward(self, x: torch.Tensor, geom: ScanGeometry | None = None) -> torch.Tensor:
        b = x.shape[0]
        if self.p <= 0 or b == 0:
            self.last_params = {"index": torch.zeros(0, dtype=torch.long)}
            return x
        chosen = torch.ones(b, dtype=torch.bool) if self.p >= 1 else torch.rand(b) < self.p
        idx = chosen.nonzero().squeeze(1)
        n = idx.numel()
        if n == 0:
            self.last_params = {"index": idx}
            return x
        every = n == b
        idx_dev = idx.to(x.device, non_blocking=True)
        if every:
            sub, sub_geom = x, geom
        else:
            sub = x.index_select(0, idx_dev)
            sub_geom = geom.index(idx_dev) if geom is not None else None
        params = self.sample(n, sub)
        self.last_params = {"index": idx, **{k: v for k, v in params.items() if v.dim() <= 2}}
        params = {k: v.to(x.device, non_blocking=True) for k, v in params.items()}
        out = self.effect(sub, sub_geom, params)
        return out if every else x.index_copy(0, idx_dev, out)


class Attenuation(RandomEffect):
    """Depth attenuation ``(1 - floor) exp(-rate depth) + floor`` (usaugment DepthAttenuation)."""

    def __init__(self, p: float, rate: Range, floor: float) -> None:
        super().__init__(p)
        self.rate, self.floor = rate, floor

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"rate": uniform(n, self.rate), "floor": torch.full((n,), float(self.floor))}

    def effect(self, x: torch.Tensor, geom: ScanGeometry | None, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return us_effects.attenuation(x, geom, params["rate"], params["floor"])


class Shadow(RandomEffect):
    """Acoustic shadow cast down the beam from a reflector (usaugment GaussianShadow)."""

    def __init__(self, p: float, strength: Range, width: Range, depth: Range, position: Range) -> None:
        super().__init__(p)
        self.ranges = {"strength": strength, "width": width, "depth": depth, "position": position}

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: uniform(n, r) for k, r in self.ranges.items()}

    def effect(self, x: torch.Tensor, geom: ScanGeometry | None, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return us_effects.shadow(x, geom, **params)


class Haze(RandomEffect):
    """Noisy bright band at a random depth (usaugment HazeArtifact)."""

    def __init__(self, p: float, strength: Range, depth: Range, width: Range) -> None:
        super().__init__(p)
        self.ranges = {"strength": strength, "centre": depth, "width": width}

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        params = {k: uniform(n, r) for k, r in self.ranges.items()}
        params["noise"] = torch.rand(x.shape, device=x.device)
        return params

    def effect(self, x: torch.Tensor, geom: ScanGeometry | None, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return us_effects.haze(x, geom, **params)


def gamma_noise(looks: torch.Tensor, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Gamma(L, rate L) fields (mean 1, variance 1/L), one ``looks`` L per image, by Wilson-Hilferty.

    ``(1 - 1/(9L) + z / (3 sqrt L))^3`` with ``z ~ N(0, 1)``: mean and variance within 1 % of the
    exact gamma for L >= 1, from one normal draw; torch's exact gamma sampler costs ~15x more on CPU.
    """
    inv = (1.0 / looks).to(device, non_blocking=True).view(-1, 1, 1, 1)
    z = torch.randn(shape, device=device)
    return z.mul_(inv.sqrt() / 3).add_(1 - inv / 9).clamp_(min=0.0).pow_(3)


class SpeckleNoise(RandomEffect):
    """Multiplicative gamma speckle with ``looks`` L: mean 1, variance 1/L (L=1: fully developed)."""

    def __init__(self, p: float, looks: Range) -> None:
        super().__init__(p)
        self.looks = looks

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        looks = uniform(n, self.looks)
        return {"looks": looks, "noise": gamma_noise(looks, x.shape, x.device)}

    def effect(self, x: torch.Tensor, geom: ScanGeometry | None, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return us_effects.speckle_noise(x, params["noise"])


class SpeckleReduction(RandomEffect):
    """Bilateral filter with random spatial and intensity sigmas (usaugment SpeckleReduction)."""

    def __init__(self, p: float, sigma_space: Range, sigma_color: Range, kernel_size: int) -> None:
        super().__init__(p)
        self.sigma_space, self.sigma_color, self.kernel_size = sigma_space, sigma_color, kernel_size

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sigma_space": uniform(n, self.sigma_space), "sigma_color": uniform(n, self.sigma_color)}

    def effect(self, x: torch.Tensor, geom: ScanGeometry | None, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return us_effects.speckle_reduction(x, params["sigma_space"], params["sigma_color"], self.kernel_size)


class GainTGC(RandomEffect):
    """Overall gain and a random TGC curve (``points`` knobs evenly spaced over depth), in dB."""

    def __init__(self, p: float, gain_db: Range, tgc_db: Range, points: int) -> None:
        super().__init__(p)
        self.gain_db, self.tgc_db, self.points = gain_db, tgc_db, points

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        lo, hi = self.tgc_db
        return {"gain_db": uniform(n, self.gain_db), "tgc_db": lo + (hi - lo) * torch.rand(n, self.points)}

    def effect(self, x: torch.Tensor, geom: ScanGeometry | None, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return us_effects.gain_tgc(x, geom, params["gain_db"], params["tgc_db"])


class DepthBlur(RandomEffect):
    """Gaussian blur growing with depth (defocus away from a shallow focal zone); optional uniform."""

    def __init__(
        self,
        p: float,
        sigma: Range,
        depth_dependent: bool,
        depth_of: Callable[[torch.Tensor, ScanGeometry | None], torch.Tensor],
    ) -> None:
        super().__init__(p)
        self.sigma, self.depth_dependent, self.depth_of = sigma, depth_dependent, depth_of
        self.kernel_size = 2 * math.ceil(3 * max(sigma)) + 1  # odd, covers 3 sigma

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sigma": uniform(n, self.sigma)}

    def effect(self, x: torch.Tensor, geom: ScanGeometry | None, params: dict[str, torch.Tensor]) -> torch.Tensor:
        depth = self.depth_of(x, geom) if self.depth_dependent else torch.ones_like(x[:1])
        return us_effects.depth_blur(x, depth, params["sigma"], self.kernel_size)


class ScanAwareEffects(nn.Module):
    """Effects applied in order; with a ``threshold``, the scan geometry is estimated first and the
    surround outside the scan area is black again at the end (blur and filters leak into it)."""

    def __init__(self, effects: dict[str, RandomEffect], threshold: float | None) -> None:
        super().__init__()
        self.effects = nn.ModuleDict(effects)
        self.threshold = threshold
        self.geometry: ScanGeometry | None = None  # the last batch's, for inspection and tests

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        geom = None
        if self.threshold is not None:
            x = x.clamp(0.0, 1.0)
            geom = estimate_geometry(x, self.threshold)
        self.geometry = geom
        for effect in self.effects.values():
            x = effect(x, geom)
        return x if geom is None else x * geom.mask()
