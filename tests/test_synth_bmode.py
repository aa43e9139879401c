"""B-mode physics of the synthetic generator: speckle statistics, log compression, attenuation/TGC,
and scan conversion, each against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from shards.synth.bmode import (
    RAYLEIGH_SNR,
    attenuation_loss_db,
    form_bmode,
    log_compress,
    psf_kernel,
    speckle_envelope,
)
from shards.synth.geometry import place_fan, place_linear


def test_psf_has_unit_energy_and_gaussian_envelope():
    k = psf_kernel(1.5, 3.0)
    assert k.dtype == np.complex64
    assert np.isclose(np.sum(np.abs(k) ** 2), 1.0, atol=1e-5)
    assert k.shape == (2 * 5 + 1, 2 * 9 + 1)  # +-3 sigma, rounded up
    mag = np.abs(k)
    centre = mag[5, 9]
    # Gaussian fall-off: one sigma away axially (1.5 samples isn't a grid point; 3 samples = 2 sigma).
    assert np.isclose(mag[5 + 3, 9] / centre, np.exp(-0.5 * 2.0**2), rtol=1e-4)
    assert np.isclose(mag[5, 9 + 3] / centre, np.exp(-0.5 * 1.0**2), rtol=1e-4)


@pytest.mark.parametrize("sigmas", [(1.0, 2.0), (2.0, 4.0)])
def test_homogeneous_speckle_is_rayleigh(sigmas):
    rng = np.random.default_rng(0)
    env = speckle_envelope(np.ones((384, 384), np.float32), rng, *sigmas).astype(np.float64)
    assert env.shape == (384, 384)
    # Rayleigh: mean/std = sqrt(pi / (4 - pi)) = 1.913; intensity I = env^2 is exponential: <I^2>/<I>^2 = 2.
    assert abs(env.mean() / env.std() - RAYLEIGH_SNR) < 0.06
    i = env**2
    assert abs((i**2).mean() / i.mean() ** 2 - 2.0) < 0.15
    # Unit-energy PSF and E|s|^2 = 1: mean intensity equals the echogenicity (amplitude^2).
    assert abs(i.mean() - 1.0) < 0.06
    env3 = speckle_envelope(np.full((256, 256), 3.0, np.float32), np.random.default_rng(1), *sigmas)
    assert abs((env3.astype(np.float64) ** 2).mean() / 9.0 - 1.0) < 0.08


def test_speckle_grain_follows_the_psf():
    rng = np.random.default_rng(2)
    env = speckle_envelope(np.ones((256, 256), np.float32), rng, 1.0, 4.0)

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    lateral = corr(env[:, :-3], env[:, 3:])
    axial = corr(env[:-3, :], env[3:, :])
    assert lateral > axial + 0.2  # wider lateral PSF -> speckle elongated laterally


def test_log_compression_maps_the_documented_dynamic_range():
    dr, gain = 60.0, 10.0
    env = 10.0 ** (np.array([gain, gain - dr, gain - dr / 2, gain + 6, gain - dr - 6]) / 20.0)
    out = log_compress(env, dr, gain)
    assert np.allclose(out, [255.0, 0.0, 127.5, 255.0, 0.0], atol=1e-3)
    # linear in dB in between: each 6 dB is 255 * 6 / 60 grey levels
    assert np.isclose(log_compress(np.array([10 ** ((gain - 12) / 20)]), dr, gain)[0], 255 - 51.0, atol=1e-3)


def test_attenuation_loss_is_integrated_along_depth():
    a = np.full((5, 3), 2.0, np.float32)
    a[2, 1] = 10.0
    loss = attenuation_loss_db(a, dz_cm=0.5)
    # homogeneous column: loss at sample centres (i + 0.5) * dz * a
    assert np.allclose(loss[:, 0], 2.0 * 0.5 * (np.arange(5) + 0.5))
    # a strongly attenuating sample darkens everything behind it by its full thickness
    assert np.allclose(loss[3:, 1] - loss[3:, 0], (10.0 - 2.0) * 0.5)
    assert np.isclose(loss[2, 1] - loss[2, 0], (10.0 - 2.0) * 0.25)


def test_depth_attenuation_and_tgc():
    """Homogeneous tissue, 8 dB/cm: without TGC the row mean falls by 8 dB/cm (255 * 8 / DR grey
    levels per cm); with TGC of 8 dB/cm it is flat; mean speckle level is -2.51 dB."""
    n, dz_mm, atten, dr, gain = 400, 0.1, 8.0, 60.0, 10.0
    echo = np.zeros((n, 256), np.float32)
    att = np.full_like(echo, atten)
    depth_cm = (np.arange(n) + 0.5) * dz_mm / 10
    kw = dict(dz_mm=dz_mm, sigma_axial=1.5, sigma_lateral=3.0, dynamic_range_db=dr, gain_db=gain)
    raw = form_bmode(echo, att, np.random.default_rng(3), **kw).mean(axis=1)
    slope, icpt = np.polyfit(depth_cm, raw, 1)
    assert slope == pytest.approx(-atten * 255 / dr, rel=0.05)
    expected_top = 255 * (1 + (-2.51 - gain) / dr)  # mean of 20 log10 of unit Rayleigh = -2.51 dB
    assert icpt == pytest.approx(expected_top, abs=3.0)
    flat = form_bmode(echo, att, np.random.default_rng(3), tgc_db=atten * depth_cm, **kw).mean(axis=1)
    slope_tgc, _ = np.polyfit(depth_cm, flat, 1)
    assert abs(slope_tgc) < 2.0
    assert abs(flat.mean() - expected_top) < 3.0


def test_linear_scan_conversion_places_the_beam_image():
    g = place_linear(200, 300, aperture_mm=40.0, depth_mm=40.0, margins=(0.1, 0.05, 0.1, 0.1), shift=0.0)
    beam = np.random.default_rng(0).uniform(0, 255, g.beam_shape).astype(np.float32)
    img = g.scan_convert(beam)
    assert np.array_equal(img[g.row0 : g.row1, g.col0 : g.col1], beam)
    assert not img[~g.scan_mask()].any()
    assert g.mm_per_px == pytest.approx(40.0 / (g.row1 - g.row0))


def test_fan_scan_conversion_maps_radius_and_angle():
    """Beam rows hold their radius index, columns their angle index: after scan conversion each
    pixel must read back the (radius, angle) index computed by hand from its position."""
    g = place_fan(
        "convex",
        240,
        320,
        depth_mm=100.0,
        radius_mm=40.0,
        half_angle=np.deg2rad(35),
        margins=(0.08, 0.03, 0.05, 0.05),
        shift=0.0,
    )
    nd, nl = g.beam_shape
    rows_idx = np.repeat(np.arange(nd, dtype=np.float32)[:, None], nl, axis=1)
    cols_idx = np.repeat(np.arange(nl, dtype=np.float32)[None, :], nd, axis=0)
    m = g.scan_mask()
    r_img, t_img = g.scan_convert(rows_idx), g.scan_convert(cols_idx)
    rr, cc = np.nonzero(m)
    r = np.hypot(rr - g.apex_row, cc - g.apex_col)
    th = np.arctan2(cc - g.apex_col, rr - g.apex_row)
    exp_r = np.clip((r - g.r0) / ((g.r1 - g.r0) / nd) - 0.5, 0, nd - 1)
    exp_t = np.clip((th + g.half_angle) / (2 * g.half_angle / nl) - 0.5, 0, nl - 1)
    assert np.allclose(r_img[rr, cc], exp_r, atol=1e-3)
    assert np.allclose(t_img[rr, cc], exp_t, atol=1e-3)
    assert not r_img[~m].any()
