"""Ultrasound effects that pay their geometry once per batch, checked against reference formulas.

- each full-size map (radius, depth, scan-area mask) is computed at most once per batch and shared;
- the chunked CPU path equals one pass over the batch;
- every effect equals its reference formula (float64, written out here), and where the formula
  changed for speed (the shadow's onset, 16-bit haze noise, no final mask for multiplicative
  effects) the output distribution is unchanged;
- the speckle reduction equals usaugment's (scikit-image's bilateral filter).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kornia.filters import bilateral_blur
from PIL import Image

from pretrain import augment_effects, us_effects
from pretrain.augment import PretrainAugmentConfig, build_effects
from pretrain.augment_effects import uniform_noise
from pretrain.us_geometry import ScanGeometry, estimate_geometry

SIZE = 96
EFFECTS = ("attenuation", "shadow", "haze", "speckle", "despeckle", "gain")


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """Synthetic B-mode frames of every preset (fans and linear probes), cropped to the scan area."""
    from shards.synth import PRESETS, render

    rng = np.random.default_rng(0)
    names = list(PRESETS)
    out = []
    for i in range(12):
        f = render(names[i % len(names)], rng, size=(SIZE, SIZE), tight=True)
        x0, y0, x1, y1 = f.bbox
        img = np.where(f.scan_mask, f.image, 0)[y0:y1, x0:x1]
        out.append(np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR)))
    return torch.from_numpy(np.stack(out)).unsqueeze(1).float() / 255


def stage(p: float = 1.0, only: tuple[str, ...] = EFFECTS, blur_p: float = 0.0):
    cfg = PretrainAugmentConfig(preset="us-physics", blur_p=blur_p)
    for name in EFFECTS:
        getattr(cfg, name).p = p if name in only else 0.0
    return build_effects(cfg)


def test_each_map_is_computed_at_most_once_per_batch(batch, monkeypatch):
    calls = {"radius": 0, "depth": 0, "mask": 0}
    for name in calls:
        real = getattr(ScanGeometry, f"_compute_{name}")

        def counted(self, real=real, name=name):
            calls[name] += 1
            return real(self)

        monkeypatch.setattr(ScanGeometry, f"_compute_{name}", counted)
    torch.manual_seed(0)
    fx = stage(p=0.5, blur_p=1.0)  # effects on random subsets: subsets take their rows of the batch's maps
    fx(batch)
    assert calls == {"radius": 1, "depth": 1, "mask": 1}
    calls.update(radius=0, depth=0, mask=0)
    fx(batch, geometry=fx.geometry)  # a geometry handed in is not estimated (or mapped) again
    assert calls == {"radius": 0, "depth": 0, "mask": 0}


def test_chunked_cpu_path_equals_one_pass(batch, monkeypatch):
    def run() -> torch.Tensor:
        torch.manual_seed(3)
        return stage(p=0.6, blur_p=0.5)(batch)

    one_pass = run()
    monkeypatch.setattr(augment_effects, "CPU_CHUNK_BYTES", SIZE * SIZE * 4)  # one image per chunk
    assert torch.allclose(run(), one_pass, atol=1e-6)


def test_the_caller_batch_is_never_written(batch):
    before = batch.clone()
    torch.manual_seed(1)
    stage(p=1.0, blur_p=1.0)(batch)
    assert torch.equal(batch, before)


def reference_geometry(g: ScanGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radius, depth and mask written out per pixel in float64 from the estimated apex and row ends."""
    b, _, h, w = g.shape
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    ax, ay = g.apex[:, 0].double().numpy(), g.apex[:, 1].double().numpy()
    radius = np.sqrt((xs - ax[:, None, None]) ** 2 + (ys - ay[:, None, None]) ** 2)
    r0, r1 = g.r_min.double().numpy()[:, None, None], g.r_max.double().numpy()[:, None, None]
    depth = np.clip((radius - r0) / np.maximum(r1 - r0, 1.0), 0, 1)
    left, right = g.left.double().numpy()[..., None], g.right.double().numpy()[..., None]
    mask = ((xs >= left) & (xs <= right)).astype(np.float64)
    return radius[:, None], depth[:, None], mask[:, None]


def reference_shadow(batch, g, s, wd, dp, pos, onset: str) -> np.ndarray:
    """The shadow written out per pixel (float64): Gaussian across beams times an onset behind the
    reflector, ``ramp`` (now) or ``logistic`` (before issue 11)."""
    radius, _, _ = reference_geometry(g)
    per = lambda v: v.double().numpy()[:, None, None, None]  # noqa: E731
    r_min, r_max, a_min, a_max = (t.double() for t in (g.r_min, g.r_max, g.a_min, g.a_max))
    r0 = per(r_min + dp.double() * (r_max - r_min))
    a0 = per(a_min + pos.double() * (a_max - a_min))
    sigma = np.maximum(per(wd) * per(a_max - a_min) * r0, 0.5)
    scale = np.maximum(0.01 * per(r_max - r_min), 1.0)
    _, _, h, w = g.shape
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    ax, ay = (g.apex[:, i].double().numpy()[:, None, None, None] for i in (0, 1))
    lateral = r0 * np.sin(np.arctan2(xs - ax, ys - ay) - a0)
    if onset == "ramp":
        behind = np.clip((radius - r0) / (4 * scale) + 0.5, 0, 1)
    else:
        behind = 1 / (1 + np.exp(-(radius - r0) / scale))
    return batch.double().numpy() * (1 - per(s) * np.exp(-(lateral**2) / (2 * sigma**2)) * behind)


def test_maps_and_effects_equal_their_reference_formulas(batch):
    g = estimate_geometry(batch)
    radius, depth, mask = reference_geometry(g)
    np.testing.assert_allclose(g.radius().numpy(), radius, rtol=1e-5)
    np.testing.assert_allclose(g.depth.numpy(), depth, atol=2e-5)
    assert np.array_equal(g.mask().numpy(), mask)
    n, x = batch.shape[0], batch.double().numpy()
    gen = torch.Generator().manual_seed(0)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731
    per = lambda v: v.double().numpy()[:, None, None, None]  # noqa: E731
    # attenuation (float32 radii of ~100 image sides for linear probes: depth to ~3e-5)
    rate = u(0.0, 3.0)
    ref = x * np.exp(-per(rate) * depth)
    np.testing.assert_allclose(us_effects.attenuation(batch, g, rate, 0.0).numpy(), ref, atol=2e-4)
    # haze, noise given
    strength, centre, width, noise = u(0.25, 0.5), u(0.05, 0.95), u(0.02, 0.1), torch.rand(batch.shape, generator=gen)
    band = per(strength) * noise.double().numpy() * np.exp(-((depth - per(centre)) ** 2) / (2 * per(width) ** 2))
    ref = np.minimum(x + band * mask, 1.0)
    np.testing.assert_allclose(us_effects.haze(batch, g, strength, centre, width, noise).numpy(), ref, atol=2e-4)
    # shadow: Gaussian across beams times the linear onset ramp
    s, wd, dp, pos = u(0.25, 0.8), u(0.02, 0.15), u(0.1, 0.7), u(0.1, 0.9)
    ref = reference_shadow(batch, g, s, wd, dp, pos, "ramp")
    # float32 sin(a - a0) from offsets to an apex 100 image sides away (linear probes): ~1e-4
    np.testing.assert_allclose(us_effects.shadow(batch, g, s, wd, dp, pos).numpy(), ref, atol=2e-4)
    # speckle reduction: kornia's bilateral filter
    ss, sc = u(0.5, 2.0), u(0.05, 0.3)
    ref = bilateral_blur(batch, 5, sc, ss[:, None].expand(-1, 2).contiguous())
    assert torch.allclose(us_effects.speckle_reduction(batch, ss, sc, 5), ref, atol=1e-5)


def test_output_distributions_unchanged_by_the_faster_formulas(batch):
    """What changed for speed — a linear instead of a logistic shadow onset, 16-bit haze noise, no
    final mask after multiplicative effects — leaves the images' statistics where they were."""
    g = estimate_geometry(batch)
    n = batch.shape[0]
    gen = torch.Generator().manual_seed(1)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731
    # Shadow: the logistic onset of before vs the ramp of now.
    s, wd, dp, pos = u(0.25, 0.8), u(0.02, 0.15), u(0.1, 0.7), u(0.1, 0.9)
    now = us_effects.shadow(batch, g, s, wd, dp, pos).double().numpy()
    before = reference_shadow(batch, g, s, wd, dp, pos, "logistic")
    assert np.abs(now.mean((1, 2, 3)) - before.mean((1, 2, 3))).max() < 1e-3
    assert np.abs(now.std((1, 2, 3)) - before.std((1, 2, 3))).max() < 1e-3
    assert np.abs(now - before).mean() < 1e-3
    # Haze: torch.rand noise of before vs 16-bit noise now, same band.
    torch.manual_seed(2)
    bits = uniform_noise(batch.shape, batch.device)
    assert float(bits.min()) > 0 and float(bits.max()) < 1
    assert abs(float(bits.mean()) - 0.5) < 0.01 and abs(float(bits.var()) - 1 / 12) < 0.003
    strength, centre, width = u(0.25, 0.5), u(0.05, 0.95), u(0.02, 0.1)
    a = us_effects.haze(batch, g, strength, centre, width, bits)
    b = us_effects.haze(batch, g, strength, centre, width, torch.rand(batch.shape))
    assert float((a.mean((1, 2, 3)) - b.mean((1, 2, 3))).abs().max()) < 2e-3
    assert float((a.std((1, 2, 3)) - b.std((1, 2, 3))).abs().max()) < 2e-3
    # No final mask for multiplicative effects: before, pixels outside the estimated scan area (the
    # dim rim a resize leaves) were set to 0 at the end; now they are only ever scaled.
    torch.manual_seed(4)
    fx = stage(p=1.0, only=("attenuation", "shadow", "gain"))
    out = fx(batch)
    inside = fx.geometry.mask()
    assert bool(((out * (1 - inside)) <= batch * (1 - inside) * 10 ** (8 / 20) + 1e-6).all())
    assert float((out.mean((1, 2, 3)) - (out * inside).mean((1, 2, 3))).abs().max()) < 2e-3


def test_speckle_reduction_matches_usaugments_statistics(batch):
    """usaugment's SpeckleReduction is scikit-image's bilateral filter, whose spatial weight table
    is built on a 6 x 6 grid for a 5-pixel window (``np.arange(-win_size // 2, win_size // 2 + 1)``),
    so its pixel values are not an exact bilateral filter's; ours is (kornia's numbers, above). The
    filtered images' brightness and contrast agree."""
    pytest.importorskip("usaugment")
    from usaugment.albumentations import SpeckleReduction

    x = batch[:6]
    inner = (slice(None), slice(3, -3), slice(3, -3))
    ones = np.ones((SIZE, SIZE), np.float32)
    for s_space, s_color in ((0.8, 0.1), (1.5, 0.3), (2.0, 0.05)):
        theirs_t = SpeckleReduction(sigma_spatial=(s_space, s_space), sigma_color=(s_color, s_color), p=1.0)
        theirs = np.stack([theirs_t(image=img[0].numpy(), scan_mask=ones)["image"] for img in x])[inner]
        ours = us_effects.speckle_reduction(x, torch.full((6,), s_space), torch.full((6,), s_color), 5)[:, 0]
        ours = ours.numpy()[inner]
        assert np.abs(ours.mean((1, 2)) - theirs.mean((1, 2))).max() < 3e-3, (s_space, s_color)
        assert np.abs(ours.std((1, 2)) - theirs.std((1, 2))).max() < 1.5e-2, (s_space, s_color)
