"""Ultrasound image effects as pure, batched functions of explicit parameters.

Every function takes float images ``[n,1,H,W]`` in [0, 1], the images' ``ScanGeometry`` and one
value per image for each parameter (``[n]`` tensors), and returns new images. Nothing here draws
random numbers: ``pretrain.augment_effects`` samples the parameters, so each effect can be checked
against a hand computation. Effects act inside the scan area only; multiplicative ones keep the
black surround black by construction, additive ones are masked.

The four effects of the ``usaugment`` package (per-image numpy/albumentations) and ours:

=========================  =================================================================
usaugment                  here
=========================  =================================================================
DepthAttenuation           :func:`attenuation` (depth along the estimated beam, not from a
                           fixed top-centre point)
GaussianShadow             :func:`shadow` (cast from a reflector down its beam, not a blob)
HazeArtifact               :func:`haze`
SpeckleReduction           :func:`speckle_reduction` (bilateral filter, kornia's numbers)
-                          :func:`speckle_noise`, :func:`gain_tgc`, :func:`depth_blur`
=========================  =================================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

from pretrain.us_geometry import ScanGeometry

# The shadow starts behind its reflector over 1 % of the scan depth (at least 1 px), not as a step.
SHADOW_ONSET = 0.01
# CPU batches are filtered in chunks of about this many bytes, so each chunk's taps stay in cache.
BILATERAL_CPU_CHUNK_BYTES = 2 * 1024 * 1024


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def attenuation(x: torch.Tensor, geom: ScanGeometry, rate: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """Depth attenuation: ``x * ((1 - floor) * exp(-rate * depth) + floor)``.

    ``depth`` is the normalised depth along the beam (0 at the skin, 1 at the deepest scan pixel);
    ``floor`` is the fraction of intensity left at infinite depth (usaugment's max_attenuation).
    """
    factor = (geom.depth * _per_image(-rate)).exp_().mul_(_per_image(1 - floor)).add_(_per_image(floor))
    return factor.mul_(x)


def shadow(
    x: torch.Tensor,
    geom: ScanGeometry,
    strength: torch.Tensor,
    width: torch.Tensor,
    depth: torch.Tensor,
    position: torch.Tensor,
) -> torch.Tensor:
    """Acoustic shadow cast down the beam from a strong reflector; only ever darkens.

    The reflector sits at normalised ``depth`` (radius ``r0`` from the apex) and at ``position``
    across the scan area's beam angles (0 = leftmost beam, 1 = rightmost; angle ``a0``). Behind it
    intensity is multiplied by ``1 - strength * exp(-l^2 / (2 s^2))``: ``l = r0 sin(a - a0)`` is the
    distance across beams at the reflector's radius (``a`` the pixel's beam angle) and ``s = width``
    x the scan-area width there, ``(a_max - a_min) r0``. The shadow keeps its angle, so in a fan it
    widens with depth along the beams; for a linear probe it is a vertical band. Its onset behind
    the reflector is a sigmoid over 1 % of the scan depth.
    """
    r0 = geom.r_min + depth * (geom.r_max - geom.r_min)
    a0 = geom.a_min + position * (geom.a_max - geom.a_min)
    sigma = (width * (geom.a_max - geom.a_min) * r0).clamp(min=0.5)
    onset = (SHADOW_ONSET * (geom.r_max - geom.r_min)).clamp(min=1.0)
    dx, dy = geom.offsets()
    radius = (dx * dx + dy * dy).sqrt_()
    # sin(a - a0) = (dx cos a0 - dy sin a0) / r: no per-pixel angle needed.
    sin_off = (dx * _per_image(torch.cos(a0)) - dy * _per_image(torch.sin(a0))).div_(radius.clamp(min=1e-6))
    across = sin_off.square_().mul_(_per_image(-(r0 * r0) / (2 * sigma * sigma))).exp_()
    behind = radius.sub_(_per_image(r0)).div_(_per_image(onset)).sigmoid_()
    return x * (1 - across.mul_(behind).mul_(_per_image(strength)))


def haze(
    x: torch.Tensor,
    geom: ScanGeometry,
    strength: torch.Tensor,
    centre: torch.Tensor,
    width: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Haze (near-field clutter / reverberation): a noisy bright band at a depth, added.

    ``x + strength * noise * exp(-(depth - centre)^2 / (2 width^2))`` inside the scan area,
    clipped to 1; ``noise`` is a ``[n,1,H,W]`` field in [0, 1] (uniform, as in usaugment).
    """
    band = (geom.depth - _per_image(centre)).square_().mul_(_per_image(-0.5 / width.square())).exp_()
    band.mul_(noise).mul_(geom.mask()).mul_(_per_image(strength))
    return (x + band).clamp_(max=1.0)


def speckle_noise(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Multiplicative speckle: ``x * noise`` clipped to 1, ``noise`` a mean-1 field (gamma)."""
    return (x * noise).clamp(max=1.0)


def speckle_reduction(
    x: torch.Tensor, sigma_space: torch.Tensor, sigma_color: torch.Tensor, kernel_size: int
) -> torch.Tensor:
    """Edge-preserving smoothing: a bilateral filter (as usaugment's SpeckleReduction).

    The same numbers as ``kornia.filters.bilateral_blur`` (reflect border, Gaussian space and
    intensity weights, ``kernel_size`` window), computed by pairs: the weight between two pixels
    is the same seen from either one, so each pair's exponential is taken once and added to both
    ends, half of kornia's work; on CPU the batch goes in cache-sized chunks as kornia does.
    """
    n, _, h, w = x.shape
    if n == 0:
        return x
    chunk = n if x.device.type != "cpu" else max(1, BILATERAL_CPU_CHUNK_BYTES // (h * w * x.element_size()))
    if chunk >= n:
        return _bilateral_pairs(x, sigma_space, sigma_color, kernel_size)
    return torch.cat(
        [
            _bilateral_pairs(*part, kernel_size)
            for part in zip(x.split(chunk), sigma_space.split(chunk), sigma_color.split(chunk))
        ]
    )


def _bilateral_pairs(x: torch.Tensor, sigma_space: torch.Tensor, sigma_color: torch.Tensor, k: int) -> torch.Tensor:
    r = k // 2
    h, w = x.shape[-2:]
    padded = F.pad(x, (r, r, r, r), mode="reflect")
    hp, wp = h + 2 * r, w + 2 * r
    color = _per_image(-0.5 / sigma_color.square())
    space = _per_image(-0.5 / sigma_space.square())
    num, den = torch.zeros_like(padded), torch.zeros_like(padded)
    num[..., r : r + h, r : r + w] = x  # the centre tap: weight exp(0) = 1
    den[..., r : r + h, r : r + w] = 1.0
    for dy in range(r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx <= 0:
                continue  # each pair once: the other half of the window is the same pairs reversed
            x0, x1 = max(0, -dx), wp - max(0, dx)
            near = (..., slice(0, hp - dy), slice(x0, x1))
            far = (..., slice(dy, hp), slice(x0 + dx, x1 + dx))
            a, b = padded[near], padded[far]
            weight = (b - a).square_().mul_(color).add_(space * (dy * dy + dx * dx)).exp_()
            num[near].addcmul_(weight, b)
            den[near].add_(weight)
            num[far].addcmul_(weight, a)
            den[far].add_(weight)
    return num[..., r : r + h, r : r + w] / den[..., r : r + h, r : r + w]


def tgc_curve(depth: torch.Tensor, points_db: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear gain in dB over depth: ``points_db`` ``[n,K]`` at depths 0, 1/(K-1), ..., 1."""
    n, k = points_db.shape
    pos = depth.flatten(1) * (k - 1)
    i0 = pos.floor().clamp(max=k - 2).long()
    t = pos - i0
    lo, hi = points_db.gather(1, i0), points_db.gather(1, i0 + 1)
    return (lo + t * (hi - lo)).view_as(depth)


def gain_tgc(x: torch.Tensor, geom: ScanGeometry, gain_db: torch.Tensor, tgc_db: torch.Tensor) -> torch.Tensor:
    """Overall gain plus a time-gain-compensation curve: ``x * 10^((gain + tgc(depth)) / 20)``, clipped."""
    db = _per_image(gain_db) + tgc_curve(geom.depth, tgc_db)
    return (x * torch.pow(10.0, db / 20)).clamp(max=1.0)


def depth_blur(x: torch.Tensor, depth: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Depth-dependent defocus: ``x + w * (G_sigma * x - x)`` with weight ``w = depth`` in [0, 1].

    Sharp at the top (the focal zone sits shallow), the full Gaussian blur of ``sigma`` pixels at
    the deepest point; ``depth`` may be ``[1,1,H,W]`` (rows) or per image ``[n,1,H,W]``.
    """
    blurred = gaussian_blur2d(x, kernel_size, sigma[:, None].expand(-1, 2).contiguous())
    return torch.lerp(x, blurred, depth.expand_as(x))
