"""B-mode formation: speckle from random scatterers, depth attenuation, TGC, log compression.

Everything here works in *beam space*: axis 0 = depth samples along a scan line, axis 1 = scan
lines (columns of a linear probe, angles of a fan). The model, per frame:

    iq(z, l)  = ((a * s) conv h)(z, l)       s ~ CN(0, 1) i.i.d. complex scatterers,
                                               a = scatterer amplitude map (sqrt of echogenicity)
    h(z, l)   = exp(-z^2 / 2 sa^2) exp(i 2 pi z / period) * exp(-l^2 / 2 sl^2)
                (analytic Gaussian-modulated cosine pulse axially, Gaussian beam laterally,
                 normalised to unit energy, so E|iq|^2 = a^2 where a is locally constant)
    iq       *= 10^(-loss_dB(z) / 20)          loss = attenuation integrated along the beam
    iq       += n                               electronic noise, before the receive gain
    envelope  = |iq| * 10^(tgc_dB(z) / 20)      time-gain compensation
    pixel     = 255 * clip(1 + (20 log10(envelope) - gain_db) / dynamic_range_db, 0, 1)

So an envelope at ``gain_db`` maps to 255 and one ``dynamic_range_db`` lower maps to 0. Where
``a`` is constant the envelope is Rayleigh distributed (fully developed speckle): its mean/std
is sqrt(pi / (4 - pi)) ~= 1.913 and mean 20 log10(envelope) is 10 log10(a^2) - 2.51 dB.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve

RAYLEIGH_SNR = float(np.sqrt(np.pi / (4.0 - np.pi)))  # mean/std of a Rayleigh variable
DB_PER_NEPER = 20.0 / np.log(10.0)


def psf_kernel(sigma_axial: float, sigma_lateral: float, period: float | None = None) -> np.ndarray:
    """The complex point-spread function (axial x lateral, unit energy), sizes in beam samples."""
    period = 2.0 * sigma_axial if period is None else period
    hz = int(np.ceil(3.0 * sigma_axial))
    hl = int(np.ceil(3.0 * sigma_lateral))
    z = np.arange(-hz, hz + 1, dtype=np.float64)
    x = np.arange(-hl, hl + 1, dtype=np.float64)
    axial = np.exp(-0.5 * (z / sigma_axial) ** 2) * np.exp(2j * np.pi * z / period)
    lateral = np.exp(-0.5 * (x / sigma_lateral) ** 2)
    k = np.outer(axial, lateral)
    k /= np.sqrt(np.sum(np.abs(k) ** 2))
    return k.astype(np.complex64)


def speckle_iq(
    amplitude: np.ndarray,
    rng: np.random.Generator,
    sigma_axial: float,
    sigma_lateral: float,
    period: float | None = None,
) -> np.ndarray:
    """Complex (IQ) echo of scatterers with ``amplitude`` (depth x lines), convolved with the PSF."""
    k = psf_kernel(sigma_axial, sigma_lateral, period)
    ph, pw = k.shape[0] // 2, k.shape[1] // 2
    # Pad so that 'valid' convolution returns the input size without darkened borders.
    amp = np.pad(amplitude.astype(np.float32, copy=False), ((ph, ph), (pw, pw)), mode="edge")
    s = rng.standard_normal((2,) + amp.shape, dtype=np.float32)
    scat = (s[0] + 1j * s[1]).astype(np.complex64)
    scat *= amp * np.float32(np.sqrt(0.5))  # E|s|^2 = 1
    return fftconvolve(scat, k, mode="valid").astype(np.complex64, copy=False)


def speckle_envelope(
    amplitude: np.ndarray,
    rng: np.random.Generator,
    sigma_axial: float = 1.5,
    sigma_lateral: float = 3.0,
    period: float | None = None,
) -> np.ndarray:
    """The detected envelope |iq| before attenuation, TGC and log compression (Rayleigh speckle)."""
    return np.abs(speckle_iq(amplitude, rng, sigma_axial, sigma_lateral, period))


def attenuation_loss_db(atten_db_cm: np.ndarray, dz_cm: float) -> np.ndarray:
    """Round-trip loss in dB reaching each sample: attenuation integrated along axis 0 (depth).

    The sample's own cell counts half (midpoint rule), so a homogeneous medium gives exactly
    ``atten * depth`` at each sample's centre depth ``(i + 0.5) * dz``.
    """
    a = atten_db_cm.astype(np.float32, copy=False) * np.float32(dz_cm)
    return np.cumsum(a, axis=0, dtype=np.float32) - 0.5 * a


def log_compress(envelope: np.ndarray, dynamic_range_db: float, gain_db: float = 0.0) -> np.ndarray:
    """Map an envelope to grey levels in [0, 255] (float32): ``gain_db`` -> 255, DR below -> 0."""
    db = DB_PER_NEPER * np.log(np.maximum(envelope, 1e-12).astype(np.float32, copy=False))
    out = (db - np.float32(gain_db)) * np.float32(255.0 / dynamic_range_db) + np.float32(255.0)
    return np.clip(out, 0.0, 255.0, out=out)


def form_bmode(
    echo_db: np.ndarray,
    atten_db_cm: np.ndarray,
    rng: np.random.Generator,
    *,
    dz_mm: float,
    sigma_axial: float,
    sigma_lateral: float,
    dynamic_range_db: float,
    gain_db: float,
    tgc_db: np.ndarray | None = None,
    noise_amplitude: float = 0.0,
) -> np.ndarray:
    """The whole beam-space chain: echogenicity (dB) and attenuation maps -> grey levels [0, 255].

    ``tgc_db`` is the receive gain per depth row (dB); None means no time-gain compensation.
    """
    iq = speckle_iq(np.power(np.float32(10.0), echo_db / np.float32(20.0)), rng, sigma_axial, sigma_lateral)
    loss = attenuation_loss_db(atten_db_cm, dz_mm / 10.0)
    iq *= np.power(np.float32(10.0), -loss / np.float32(20.0))
    if noise_amplitude > 0:
        n = rng.standard_normal((2,) + iq.shape, dtype=np.float32) * np.float32(noise_amplitude * np.sqrt(0.5))
        iq += n[0] + 1j * n[1]
    env = np.abs(iq)
    if tgc_db is not None:
        env *= np.power(np.float32(10.0), np.asarray(tgc_db, dtype=np.float32) / np.float32(20.0))[:, None]
    return log_compress(env, dynamic_range_db, gain_db)
