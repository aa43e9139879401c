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
from pretrain.workspace import Workspace, scratch

Range = tuple[float, float]
Tensor = torch.Tensor
Params = dict[str, torch.Tensor]
# CPU batches go through each effect in chunks of about this many bytes of images (see RandomEffect._apply).
CPU_CHUNK_BYTES = 1 << 20


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
    def effect(
        self, x: torch.Tensor, geom: ScanGeometry | None, params: dict[str, torch.Tensor], out: torch.Tensor | None
    ) -> torch.Tensor:
        """The effect on the chosen images with their parameters (on the images' device); written
        into ``out`` when given (``out`` may be ``x`` itself), else into a new tensor."""

    # Filters spread intensity into the black surround: their output is masked to the scan area.
    leaks = False

    def cpu_chunk_bytes(self) -> int:
        """Bytes of images per chunk on the CPU (read at call time, so tests can change it)."""
        return CPU_CHUNK_BYTES

    # Scratch buffers shared with the pipeline (set by ScanAwareEffects); None: allocate as usual.
    workspace: Workspace | None = None

    def forward(self, x: torch.Tensor, geom: ScanGeometry | None = None, inplace: bool = False) -> torch.Tensor:
        """The batch with the effect on the chosen images. ``inplace``: ``x`` is the pipeline's own
        intermediate and is written directly; otherwise the result is a new tensor.

        On the CPU the chosen images go through the effect a few at a time (about
        :data:`CPU_CHUNK_BYTES`): every temporary of the effect stays in cache and its memory is
        reused from chunk to chunk, instead of fresh pages per full-batch temporary."""
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
        params = self.sample(n, x[:1].expand(n, *x.shape[1:]))
        self.last_params = {"index": idx, **{k: v for k, v in params.items() if v.dim() <= 2}}
        params = {k: v.to(x.device, non_blocking=True) for k, v in params.items()}
        out = x if inplace else (torch.empty_like(x) if every else x.clone())
        step = (
            n if x.device.type != "cpu" else max(1, self.cpu_chunk_bytes() // max(1, x[0].numel() * x.element_size()))
        )
        for a in range(0, n, step):
            m = min(step, n - a)
            if every:
                part, part_geom = x.narrow(0, a, m), (geom.narrow(a, m) if geom is not None else None)
            else:
                ids = idx_dev.narrow(0, a, m)
                part, part_geom = x.index_select(0, ids), (geom.index(ids) if geom is not None else None)
            dst = out.narrow(0, a, m) if every else None
            chunk_params = {k: v.narrow(0, a, m) for k, v in params.items()}
            if self.leaks and part_geom is not None:  # filters: computed aside, masked into place
                res = torch.mul(self.effect(part, part_geom, chunk_params, None), part_geom.mask(), out=dst)
            else:
                res = self.effect(part, part_geom, chunk_params, dst)
            if not every:
                out.index_copy_(0, ids, res)
            elif res is not dst:  # an effect that does not write ``out`` (filters without a geometry)
                dst.copy_(res)
        return out


class Attenuation(RandomEffect):
    """Depth attenuation ``(1 - floor) exp(-rate depth) + floor`` (usaugment DepthAttenuation)."""

    def __init__(self, p: float, rate: Range, floor: float) -> None:
        super().__init__(p)
        self.rate, self.floor = rate, floor

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"rate": uniform(n, self.rate), "floor": torch.full((n,), float(self.floor))}

    def effect(self, x: Tensor, geom: ScanGeometry | None, params: Params, out: Tensor | None) -> Tensor:
        return us_effects.attenuation(x, geom, params["rate"], float(self.floor), out=out)


class Shadow(RandomEffect):
    """Acoustic shadow cast down the beam from a reflector (usaugment GaussianShadow)."""

    def __init__(self, p: float, strength: Range, width: Range, depth: Range, position: Range) -> None:
        super().__init__(p)
        self.ranges = {"strength": strength, "width": width, "depth": depth, "position": position}

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: uniform(n, r) for k, r in self.ranges.items()}

    def effect(self, x: Tensor, geom: ScanGeometry | None, params: Params, out: Tensor | None) -> Tensor:
        return us_effects.shadow(x, geom, **params, out=out)


class Haze(RandomEffect):
    """Noisy bright band at a random depth (usaugment HazeArtifact)."""

    def __init__(self, p: float, strength: Range, depth: Range, width: Range) -> None:
        super().__init__(p)
        self.ranges = {"strength": strength, "centre": depth, "width": width}

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        params = {k: uniform(n, r) for k, r in self.ranges.items()}
        params["noise"] = uniform_noise(x.shape, x.device, self.workspace)
        return params

    def effect(self, x: Tensor, geom: ScanGeometry | None, params: Params, out: Tensor | None) -> Tensor:
        return us_effects.haze(x, geom, **params, out=out)


def uniform_noise(shape: torch.Size, device: torch.device, workspace: Workspace | None = None) -> torch.Tensor:
    """U(0, 1) noise with 16-bit resolution (levels (k + 0.5) / 65536), from the device's generator.

    Four values per 64-bit draw: on the CPU this is ~3x faster than ``torch.rand`` (one 32-bit
    Mersenne-Twister draw per value), and 1/65536 steps are finer than any image here resolves.
    With a ``workspace`` the field is written into a reused buffer (valid until the next batch).
    """
    n = math.prod(shape)
    words = scratch(workspace, "noise_bits", ((n + 3) // 4,), torch.int64, device)
    words = (words if words is not None else torch.empty((n + 3) // 4, dtype=torch.int64, device=device)).random_(
        -(2**63), None
    )
    halves = words.view(torch.int16)[:n].view(shape)
    out = scratch(workspace, "noise", tuple(shape), torch.float32, device)
    out = torch.empty(shape, dtype=torch.float32, device=device) if out is None else out
    return out.copy_(halves).add_(32768.5).mul_(1 / 65536)  # copy_ converts ~3x faster than add(int16)


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

    def effect(self, x: Tensor, geom: ScanGeometry | None, params: Params, out: Tensor | None) -> Tensor:
        return us_effects.speckle_noise(x, params["noise"], out=out)


class SpeckleReduction(RandomEffect):
    """Bilateral filter with random spatial and intensity sigmas (usaugment SpeckleReduction)."""

    leaks = True

    def cpu_chunk_bytes(self) -> int:
        """The filter's own chunk (its 12 pair passes per chunk are what must stay in cache; at 256 px
        2 MB, eight images, measured 5 % faster than the other effects' 1 MB, on the development VM)."""
        return us_effects.BILATERAL_CPU_CHUNK_BYTES

    def __init__(self, p: float, sigma_space: Range, sigma_color: Range, kernel_size: int) -> None:
        super().__init__(p)
        self.sigma_space, self.sigma_color, self.kernel_size = sigma_space, sigma_color, kernel_size

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sigma_space": uniform(n, self.sigma_space), "sigma_color": uniform(n, self.sigma_color)}

    def effect(self, x: Tensor, geom: ScanGeometry | None, params: Params, out: Tensor | None) -> Tensor:
        return us_effects.speckle_reduction(x, params["sigma_space"], params["sigma_color"], self.kernel_size)


class GainTGC(RandomEffect):
    """Overall gain and a random TGC curve (``points`` knobs evenly spaced over depth), in dB."""

    def __init__(self, p: float, gain_db: Range, tgc_db: Range, points: int) -> None:
        super().__init__(p)
        self.gain_db, self.tgc_db, self.points = gain_db, tgc_db, points

    def sample(self, n: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        lo, hi = self.tgc_db
        return {"gain_db": uniform(n, self.gain_db), "tgc_db": lo + (hi - lo) * torch.rand(n, self.points)}

    def effect(self, x: Tensor, geom: ScanGeometry | None, params: Params, out: Tensor | None) -> Tensor:
        return us_effects.gain_tgc(x, geom, params["gain_db"], params["tgc_db"], out=out)


class DepthBlur(RandomEffect):
    """Gaussian blur growing with depth (defocus away from a shallow focal zone); optional uniform."""

    leaks = True

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

    def effect(self, x: Tensor, geom: ScanGeometry | None, params: Params, out: Tensor | None) -> Tensor:
        depth = self.depth_of(x, geom) if self.depth_dependent else torch.ones_like(x[:1])
        return us_effects.depth_blur(x, depth, params["sigma"], self.kernel_size)


class ScanAwareEffects(nn.Module):
    """Effects applied in order, sharing one scan geometry per batch.

    With a ``threshold`` the geometry is estimated once (:func:`estimate_geometry`: a single read of
    the batch) and its full-size maps — depth, radius, scan-area mask — are computed the first time
    an effect needs them and reused by every later effect. Multiplicative effects keep the black
    surround black by construction; additive ones and filters are masked to the scan area. The
    first effect that runs writes a new tensor; every later one writes into it (the caller's
    batch is never modified). The maps live in a workspace reused from batch to batch, so
    ``geometry`` (the last batch's) is valid until the next call."""

    def __init__(self, effects: dict[str, RandomEffect], threshold: float | None) -> None:
        super().__init__()
        self.effects = nn.ModuleDict(effects)
        self.workspace = Workspace()  # maps and noise fields, reused batch after batch
        for effect in effects.values():
            effect.workspace = self.workspace
        self.threshold = threshold
        self.geometry: ScanGeometry | None = None  # the last batch's, for inspection and tests

    def forward(self, x: torch.Tensor, geometry: ScanGeometry | None = None) -> torch.Tensor:
        """``geometry``: the batch's, already estimated (e.g. by an earlier stage); else estimated here."""
        geom = geometry
        if geom is None and self.threshold is not None:
            geom = estimate_geometry(x, self.threshold, self.workspace)
        self.geometry = geom
        owned = False  # the caller's tensor is never written; the chain's own intermediates are
        for effect in self.effects.values():
            y = effect(x, geom, inplace=owned)
            owned = owned or y is not x
            x = y
        return x
