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

import math

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

from pretrain.us_geometry import ScanGeometry

# The shadow starts behind its reflector over 1 % of the scan depth (at least 1 px), not as a step.
SHADOW_ONSET = 0.01
# CPU batches are filtered in chunks of about this many bytes, so each chunk's taps stay in cache.
BILATERAL_CPU_CHUNK_BYTES = 2 * 1024 * 1024
# Gaussian exponents (and sigmoid arguments) are clamped here: on the CPU, exp of an argument that
# underflows float32 (below about -87) is ~50x slower than of -80, and products of tiny weights
# that fall into float32's denormal range (< 1.2e-38) make every later multiply ~10x slower. A
# weight of e^-30 (9e-14) changes no float32 pixel value next to 1 and keeps products normal.
EXP_FLOOR = -30.0


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def _neg_square(z: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``offset - z^2`` written into ``z`` (one pass), then clamped at :data:`EXP_FLOOR`."""
    return torch.addcmul(offset, z, z, value=-1, out=z).clamp_(min=EXP_FLOOR)


def attenuation(
    x: torch.Tensor,
    geom: ScanGeometry,
    rate: torch.Tensor,
    floor: torch.Tensor | float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depth attenuation: ``x * ((1 - floor) * exp(-rate * depth) + floor)``.

    ``depth`` is the normalised depth along the beam (0 at the skin, 1 at the deepest scan pixel);
    ``floor`` is the fraction of intensity left at infinite depth (usaugment's max_attenuation);
    a floor of 0 (the default) costs two passes fewer. ``out``: where to write (may be ``x``).
    """
    factor = torch.mul(geom.depth, _per_image(-rate)).exp_()
    if not (isinstance(floor, float) and floor == 0.0):
        floor = torch.as_tensor(floor, dtype=x.dtype, device=x.device)
        factor.mul_(_per_image(1 - floor)).add_(_per_image(floor))
    return torch.mul(factor, x, out=out)


def shadow(
    x: torch.Tensor,
    geom: ScanGeometry,
    strength: torch.Tensor,
    width: torch.Tensor,
    depth: torch.Tensor,
    position: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Acoustic shadow cast down the beam from a strong reflector; only ever darkens.

    The reflector sits at normalised ``depth`` (radius ``r0`` from the apex) and at ``position``
    across the scan area's beam angles (0 = leftmost beam, 1 = rightmost; angle ``a0``). Behind it
    intensity is multiplied by ``1 - strength * exp(-l^2 / (2 s^2)) * onset``: ``l = r0 sin(a - a0)``
    is the distance across beams at the reflector's radius (``a`` the pixel's beam angle) and
    ``s = width`` x the scan-area width there, ``(a_max - a_min) r0``. The shadow keeps its angle,
    so in a fan it widens with depth along the beams; for a linear probe it is a vertical band.
    ``onset`` ramps linearly from 0 to 1 across the reflector, ``clamp((r - r0) / (4 o) + 1/2, 0, 1)``
    with ``o`` = 1 % of the scan depth (the logistic's slope at its centre, without its exp).
    ``out``: where to write (may be ``x``).
    """
    r0 = geom.r_min + depth * (geom.r_max - geom.r_min)
    a0 = geom.a_min + position * (geom.a_max - geom.a_min)
    sigma = (width * (geom.a_max - geom.a_min) * r0).clamp(min=0.5)
    ramp = 4 * (SHADOW_ONSET * (geom.r_max - geom.r_min)).clamp(min=1.0)
    radius = geom.radius()
    dx, dy = geom.offsets()
    # l / (sqrt2 s) = k sin(a - a0) = k (dx cos a0 - dy sin a0) / r with k = r0 / (sqrt2 s): the
    # scale and the angle go into the small per-column / per-row factors, not the full map.
    k = r0 / (sigma * math.sqrt(2.0))
    z = torch.sub(dx * _per_image(k * torch.cos(a0)), dy * _per_image(k * torch.sin(a0))).div_(radius)
    # strength e^(-z^2) = e^(ln strength - z^2): the strength rides in the exponent.
    across = _neg_square(z, _per_image(torch.log(strength.clamp(min=1e-30)))).exp_()
    onset = torch.addcmul(_per_image(0.5 - r0 / ramp), radius, _per_image(1 / ramp)).clamp_(0.0, 1.0)
    # x (1 - strength across onset) = x - (strength across onset) x
    return torch.addcmul(x, across.mul_(onset), x, value=-1, out=out)


def haze(
    x: torch.Tensor,
    geom: ScanGeometry,
    strength: torch.Tensor,
    centre: torch.Tensor,
    width: torch.Tensor,
    noise: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Haze (near-field clutter / reverberation): a noisy bright band at a depth, added.

    ``x + strength * noise * exp(-(depth - centre)^2 / (2 width^2))`` inside the scan area,
    clipped to 1; ``noise`` is a ``[n,1,H,W]`` field in [0, 1] (uniform, as in usaugment).
    ``out``: where to write (may be ``x``).
    """
    k = _per_image(1 / (width * math.sqrt(2.0)))
    z = torch.addcmul(_per_image(-centre) * k, geom.depth, k)  # (depth - centre) / (sqrt2 width)
    # strength e^(-z^2) = e^(ln strength - z^2): the strength rides in the exponent, no extra pass.
    band = _neg_square(z, _per_image(torch.log(strength.clamp(min=1e-30)))).exp_().mul_(noise)
    return torch.addcmul(x, band, geom.mask(), out=out).clamp_(max=1.0)


def speckle_noise(x: torch.Tensor, noise: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Multiplicative speckle: ``x * noise`` clipped to 1, ``noise`` a mean-1 field (gamma)."""
    return torch.mul(x, noise, out=out).clamp_(max=1.0)


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
    # Intensities scaled by 1 / (sqrt2 sigma_color): a pair's colour exponent is then -(b - a)^2.
    scale = _per_image(1 / (sigma_color * math.sqrt(2.0)))
    padded = F.pad(x * scale, (r, r, r, r), mode="reflect")
    hp, wp = h + 2 * r, w + 2 * r
    space = _per_image(-0.5 / sigma_space.square())
    num, den = padded.clone(), torch.ones_like(padded)  # the centre tap: weight exp(0) = 1
    scratch = torch.empty(padded.numel(), dtype=padded.dtype, device=padded.device)  # every pair's weights
    for dy in range(r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx <= 0:
                continue  # each pair once: the other half of the window is the same pairs reversed
            x0, x1 = max(0, -dx), wp - max(0, dx)
            near = (..., slice(0, hp - dy), slice(x0, x1))
            far = (..., slice(dy, hp), slice(x0 + dx, x1 + dx))
            a, b = padded[near], padded[far]
            diff = torch.sub(b, a, out=scratch[: a.numel()].view(a.shape))
            weight = _neg_square(diff, space * (dy * dy + dx * dx)).exp_()
            num[near].addcmul_(weight, b)
            den[near].add_(weight)
            num[far].addcmul_(weight, a)
            den[far].add_(weight)
    return num[..., r : r + h, r : r + w].div_(den[..., r : r + h, r : r + w]).div_(scale)


def tgc_curve(depth: torch.Tensor, points_db: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear gain in dB over depth: ``points_db`` ``[n,K]`` at depths 0, 1/(K-1), ..., 1."""
    n, k = points_db.shape
    pos = depth.flatten(1) * (k - 1)
    i0 = pos.floor().clamp(max=k - 2).long()
    t = pos - i0
    lo, hi = points_db.gather(1, i0), points_db.gather(1, i0 + 1)
    return (lo + t * (hi - lo)).view_as(depth)


def gain_tgc(
    x: torch.Tensor, geom: ScanGeometry, gain_db: torch.Tensor, tgc_db: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Overall gain plus a time-gain-compensation curve: ``x * 10^((gain + tgc(depth)) / 20)``, clipped."""
    db = tgc_curve(geom.depth, tgc_db).add_(_per_image(gain_db))
    return torch.mul(x, db.mul_(math.log(10.0) / 20).exp_(), out=out).clamp_(max=1.0)


def depth_blur(x: torch.Tensor, depth: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Depth-dependent defocus: ``x + w * (G_sigma * x - x)`` with weight ``w = depth`` in [0, 1].

    Sharp at the top (the focal zone sits shallow), the full Gaussian blur of ``sigma`` pixels at
    the deepest point; ``depth`` may be ``[1,1,H,W]`` (rows) or per image ``[n,1,H,W]``.
    """
    blurred = gaussian_blur2d(x, kernel_size, sigma[:, None].expand(-1, 2).contiguous())
    return torch.lerp(x, blurred, depth.expand_as(x))
