"""Scan geometry estimation and each ultrasound effect against hand computations on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from pretrain import us_effects
from pretrain.augment import PretrainAugmentConfig, build_augment
from pretrain.augment_effects import SpeckleNoise
from pretrain.us_geometry import ScanGeometry, estimate_geometry


def sector(
    h: int, w: int, apex: tuple[float, float], half_angle_deg: float, r_in: float, r_out: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A speckle-textured sector scan (values 0.2-0.8 inside, 0 outside) and its true mask."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    dx, dy = xs - apex[0], ys - apex[1]
    r, a = torch.sqrt(dx * dx + dy * dy), torch.atan2(dx, dy)
    mask = (a.abs() <= math.radians(half_angle_deg)) & (r >= r_in) & (r <= r_out)
    img = (0.2 + 0.6 * torch.rand(h, w, generator=g, dtype=torch.float64)) * mask
    return img.float()[None, None], mask


def hand_geometry(h: int, w: int, apex: tuple[float, float]) -> ScanGeometry:
    """Geometry of a frame whose every pixel is scan area, built directly from a known apex."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    dx, dy = xs - apex[0], ys - apex[1]
    radius, angle = torch.sqrt(dx * dx + dy * dy), torch.atan2(dx, dy)
    r_min, r_max = radius.min(), radius.max()
    depth = ((radius - r_min) / (r_max - r_min)).float()
    one = torch.ones(1)
    return ScanGeometry(
        left=torch.zeros(1, h),
        right=torch.full((1, h), w - 1.0),
        apex=torch.tensor([list(apex)]),
        r_min=float(r_min) * one,
        r_max=float(r_max) * one,
        a_min=float(angle.min()) * one,
        a_max=float(angle.max()) * one,
        is_fan=torch.tensor([True]),
        depth=depth[None, None],
    )


# --- geometry ---------------------------------------------------------------------------------


def test_fan_apex_mask_and_depth_are_recovered():
    img, mask = sector(96, 96, apex=(48.0, -6.0), half_angle_deg=35, r_in=12, r_out=100)
    g = estimate_geometry(img)
    assert bool(g.is_fan[0])
    assert abs(float(g.apex[0, 0]) - 48.0) < 1.5 and abs(float(g.apex[0, 1]) + 6.0) < 2.0
    est = g.mask()[0, 0] > 0.5
    assert float((est == mask).float().mean()) > 0.99
    # Depth runs along the beam: equal on an arc around the apex, 0 at the top, 1 at the bottom of the fan.
    assert float(g.depth[0, 0][est].max()) == pytest.approx(1.0)
    assert float(g.depth[0, 0][est].min()) == pytest.approx(0.0, abs=1e-6)
    r = g.radius()[0, 0]
    on_arc = est & ((r - 60).abs() < 0.5)
    assert float(g.depth[0, 0][on_arc].std()) < 0.01
    # Beam angles span the sector's opening.
    assert float(g.a_max[0]) == pytest.approx(math.radians(35), abs=0.06)
    assert float(g.a_min[0]) == pytest.approx(-math.radians(35), abs=0.06)


def test_linear_probe_has_vertical_beams_and_row_depth():
    img = torch.zeros(1, 1, 40, 48)
    img[..., 4:36, 8:40] = 0.5
    g = estimate_geometry(img)
    assert not bool(g.is_fan[0])
    assert float(g.apex[0, 0]) == pytest.approx(23.5)
    inside = g.mask()[0, 0] > 0.5
    assert torch.equal(inside, img[0, 0] > 0)
    # Depth = (row - top) / (bottom - top) to within the 1/100 rad beam tilt of the far apex.
    rows = torch.arange(40, dtype=torch.float32)[:, None].expand(40, 48)
    expected = ((rows - 4) / 31)[inside]
    assert torch.allclose(g.depth[0, 0][inside], expected, atol=2e-3)
    assert float(g.a_max[0] - g.a_min[0]) < 0.02  # beams are parallel


def test_dark_anatomy_inside_the_scan_area_stays_in_the_mask():
    img, mask = sector(80, 80, apex=(40.0, 0.0), half_angle_deg=40, r_in=0, r_out=76)
    img[..., 30:50, 30:50] = 0.0  # an anechoic cyst
    img[..., 60:64, 10:70] *= (torch.rand(4, 60) > 0.5).float()  # speckle-dark pixels
    g = estimate_geometry(img)
    assert bool((g.mask()[0, 0] > 0.5)[30:50, 30:50].all())
    assert float(((g.mask()[0, 0] > 0.5) == mask).float().mean()) > 0.99


def test_empty_frame_gives_finite_geometry():
    g = estimate_geometry(torch.zeros(2, 1, 16, 16))
    for t in (g.depth, g.radius(), g.apex, g.r_min, g.r_max, g.a_min, g.a_max):
        assert torch.isfinite(t).all()
    assert float(g.mask().sum()) == 0.0


# --- effects against hand computations ----------------------------------------------------------


def test_attenuation_matches_hand_computation_and_falls_with_depth():
    g = hand_geometry(5, 3, apex=(1.0, -1e5))  # linear: depth = row / 4
    x = torch.full((1, 1, 5, 3), 0.8)
    out = us_effects.attenuation(x, g, rate=torch.tensor([2.0]), floor=torch.tensor([0.25]))
    # row 2: depth 0.5 -> 0.8 * (0.75 * e^-1 + 0.25)
    assert float(out[0, 0, 2, 1]) == pytest.approx(0.8 * (0.75 * math.exp(-1.0) + 0.25), rel=1e-4)
    assert float(out[0, 0, 0, 1]) == pytest.approx(0.8, rel=1e-5)
    assert float(out[0, 0, 4, 1]) == pytest.approx(0.8 * (0.75 * math.exp(-2.0) + 0.25), rel=1e-4)
    col = out[0, 0, :, 1]
    assert bool((col[1:] < col[:-1]).all())


def test_shadow_matches_hand_computation_and_only_darkens():
    h, w, apex = 40, 41, (20.0, -10.0)
    g = hand_geometry(h, w, apex)
    x = torch.full((1, 1, h, w), 0.6)
    strength, width, depth, position = 0.7, 0.1, 0.3, 0.5
    out = us_effects.shadow(
        x, g, torch.tensor([strength]), torch.tensor([width]), torch.tensor([depth]), torch.tensor([position])
    )
    r_min, r_max = float(g.r_min), float(g.r_max)
    a_min, a_max = float(g.a_min), float(g.a_max)
    r0 = r_min + depth * (r_max - r_min)
    a0 = a_min + position * (a_max - a_min)
    sigma = width * (a_max - a_min) * r0
    ramp = 4 * max(1.0, 0.01 * (r_max - r_min))  # the onset: a linear ramp across the reflector
    for yy, xx in [(39, 20), (39, 25), (30, 14), (5, 20), (20, 20), (21, 21)]:
        r = math.hypot(xx - apex[0], yy - apex[1])
        a = math.atan2(xx - apex[0], yy - apex[1])
        lateral = r0 * math.sin(a - a0)
        onset = min(1.0, max(0.0, (r - r0) / ramp + 0.5))
        factor = 1 - strength * math.exp(-(lateral**2) / (2 * sigma**2)) * onset
        assert float(out[0, 0, yy, xx]) == pytest.approx(0.6 * factor, rel=1e-4)
    assert bool((out <= x + 1e-7).all())
    assert float(out[0, 0, 39, 20]) == pytest.approx(0.6 * (1 - strength), rel=1e-3)  # deep, on the beam
    assert float(out[0, 0, 2, 20]) == pytest.approx(0.6, rel=1e-3)  # above the reflector


def test_haze_matches_hand_computation_inside_scan_area_only():
    g = hand_geometry(5, 4, apex=(1.5, -1e5))  # depth = row / 4
    g.left.fill_(1.0)  # column 0 is outside the scan area
    x = torch.full((1, 1, 5, 4), 0.2)
    out = us_effects.haze(
        x,
        g,
        strength=torch.tensor([0.3]),
        centre=torch.tensor([0.5]),
        width=torch.tensor([0.1]),
        noise=torch.ones(1, 1, 5, 4),
    )
    assert float(out[0, 0, 2, 2]) == pytest.approx(0.5, rel=1e-5)
    assert float(out[0, 0, 3, 2]) == pytest.approx(0.2 + 0.3 * math.exp(-0.0625 / 0.02), rel=1e-4)
    assert torch.equal(out[..., :, 0], x[..., :, 0])
    out = us_effects.haze(
        x + 0.8, g, torch.tensor([0.3]), torch.tensor([0.5]), torch.tensor([0.1]), torch.ones(1, 1, 5, 4)
    )
    assert float(out.max()) == 1.0


def test_gain_and_tgc_match_hand_computation():
    depth = torch.tensor([0.0, 1 / 6, 0.5, 1.0]).view(1, 1, 4, 1)
    g = hand_geometry(4, 1, apex=(0.0, -1e5))
    g.depth = depth
    x = torch.full((1, 1, 4, 1), 0.1)
    out = us_effects.gain_tgc(x, g, gain_db=torch.tensor([2.0]), tgc_db=torch.tensor([[0.0, 6.0, -6.0, 0.0]]))
    expected_db = [2.0, 2.0 + 3.0, 2.0 + 0.0, 2.0]
    for i, db in enumerate(expected_db):
        assert float(out[0, 0, i, 0]) == pytest.approx(0.1 * 10 ** (db / 20), rel=1e-5)
    bright = us_effects.gain_tgc(torch.full_like(x, 0.9), g, torch.tensor([6.0]), torch.zeros(1, 4))
    assert float(bright.max()) == 1.0


def test_speckle_reduction_matches_hand_bilateral():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, 5, 5, generator=gen)
    s_space, s_color = 1.2, 0.2
    out = us_effects.speckle_reduction(x, torch.tensor([s_space]), torch.tensor([s_color]), 5)
    v = x[0, 0].double()
    num = den = 0.0
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            wgt = math.exp(-(dy * dy + dx * dx) / (2 * s_space**2)) * math.exp(
                -(float(v[2 + dy, 2 + dx] - v[2, 2]) ** 2) / (2 * s_color**2)
            )
            num += wgt * float(v[2 + dy, 2 + dx])
            den += wgt
    assert float(out[0, 0, 2, 2]) == pytest.approx(num / den, rel=1e-4)


def test_speckle_reduction_equals_kornias_bilateral_filter(monkeypatch):
    from kornia.filters import bilateral_blur

    gen = torch.Generator().manual_seed(5)
    x = torch.rand(5, 1, 20, 24, generator=gen)
    s_space = torch.tensor([0.3, 0.8, 1.2, 2.0, 1.0])
    s_color = torch.tensor([0.05, 0.1, 0.3, 1.0, 0.2])
    for k in (3, 5):
        ref = bilateral_blur(x, k, s_color, s_space[:, None].expand(-1, 2).contiguous())
        assert torch.allclose(us_effects.speckle_reduction(x, s_space, s_color, k), ref, atol=1e-6)
    # The chunked CPU path (chunks of 2 images here) gives the same numbers.
    monkeypatch.setattr(us_effects, "BILATERAL_CPU_CHUNK_BYTES", 2 * 20 * 24 * 4)
    assert torch.allclose(us_effects.speckle_reduction(x, s_space, s_color, 5), ref, atol=1e-6)


def test_depth_blur_is_sharp_at_depth_zero_and_a_gaussian_at_depth_one():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(1, 1, 12, 10, generator=gen)
    sigma, k = 1.3, 9
    full = us_effects.depth_blur(x, torch.ones(1, 1, 1, 1), torch.tensor([sigma]), k)
    ref = ndimage.gaussian_filter(x[0, 0].double().numpy(), sigma, mode="mirror", truncate=(k // 2) / sigma)
    np.testing.assert_allclose(full[0, 0].numpy(), ref, atol=1e-5)
    rows = torch.linspace(0, 1, 12).view(1, 1, 12, 1)
    out = us_effects.depth_blur(x, rows, torch.tensor([sigma]), k)
    assert torch.equal(out[..., 0, :], x[..., 0, :])
    assert torch.allclose(out[..., -1, :], full[..., -1, :], atol=1e-6)
    assert torch.allclose(out[..., 6, :], x[..., 6, :] + 6 / 11 * (full - x)[..., 6, :], atol=1e-6)


def test_gamma_speckle_has_mean_one_and_variance_one_over_looks():
    torch.manual_seed(0)
    x = torch.full((2, 1, 128, 128), 0.25)
    out = SpeckleNoise(p=1.0, looks=(4.0, 4.0))(x)
    ratio = out / 0.25
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.01)
    assert float(ratio.var()) == pytest.approx(0.25, abs=0.015)


# --- the physics preset as a whole --------------------------------------------------------------


def _physics(p: float, **overrides) -> PretrainAugmentConfig:
    cfg = PretrainAugmentConfig(preset="us-physics", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **overrides)
    for name in ("attenuation", "shadow", "haze", "speckle", "despeckle", "gain"):
        getattr(cfg, name).p = p
    return cfg


def test_background_outside_the_scan_area_stays_black():
    frames = [
        sector(64, 64, apex=(32.0, 0.0), half_angle_deg=a, r_in=0, r_out=60, seed=s)
        for s, a in enumerate((30, 40, 50, 35))
    ]
    x = torch.cat([f[0] for f in frames])
    truth = torch.stack([f[1] for f in frames])[:, None]
    torch.manual_seed(0)
    aug = build_augment(_physics(1.0, blur_p=1.0, blur_sigma=(2.0, 2.0)), 64)
    out = aug(x)
    flipped = aug.last_params["hflip"]["batch_prob"].bool().view(-1, 1, 1, 1)
    truth = torch.where(flipped, truth.flip(-1), truth)
    assert float(out[~truth].abs().max()) == 0.0
    assert float(out[truth].mean()) > 0.05
    assert float(((aug.geometry.mask() > 0.5) == truth).float().mean()) > 0.995


def test_pipeline_attenuation_decreases_monotonically_with_beam_depth():
    x, _ = sector(64, 64, apex=(32.0, -8.0), half_angle_deg=35, r_in=8, r_out=70)
    x = (x > 0).float() * 0.7
    cfg = _physics(0.0, blur_p=0.0, hflip_p=0.0)
    cfg.attenuation.p, cfg.attenuation.rate = 1.0, (2.0, 2.0)
    aug = build_augment(cfg, 64)
    out = aug(x)
    inside = (aug.geometry.mask()[0, 0] > 0.5) & (x[0, 0] > 0)
    depth = aug.geometry.depth[0, 0][inside]
    ratio = (out[0, 0] / x[0, 0].clamp(min=1e-6))[inside]
    order = depth.argsort()
    assert bool((ratio[order].diff() <= 1e-6).all())
    assert float(ratio[order][0]) == pytest.approx(1.0, abs=1e-5)
    assert float(ratio[order][-1]) == pytest.approx(math.exp(-2.0), rel=1e-3)


def test_pipeline_shadow_only_darkens():
    x, _ = sector(64, 64, apex=(32.0, -8.0), half_angle_deg=35, r_in=8, r_out=70)
    cfg = _physics(0.0, blur_p=0.0, hflip_p=0.0)
    cfg.shadow.p = 1.0
    torch.manual_seed(1)
    out = build_augment(cfg, 64)(x.repeat(16, 1, 1, 1))
    assert bool((out <= x + 1e-4).all())  # 1e-4: the identity crop's resampling error
    assert bool(((x - out).flatten(1).amax(1) > 0.05).all())  # every image got a visible shadow
