"""Augmentation presets: shapes, orientation, parameter bounds, determinism, config handling."""

from __future__ import annotations

import pytest
import torch

from pretrain.augment import PRESETS, PretrainAugmentConfig, build_augment, resolve
from sonodistill.config import ConfigError, load_config, save_config
from sonodistill.errors import UserError

EFFECTS = ("attenuation", "shadow", "haze", "speckle", "despeckle", "gain")


def vertical_ramp(b: int, h: int, w: int) -> torch.Tensor:
    """Bright at the top (1) to dark at the bottom (0), constant across each row."""
    return torch.linspace(1.0, 0.0, h).view(1, 1, h, 1).expand(b, 1, h, w).contiguous()


def triangle(b: int, side: int) -> torch.Tensor:
    """A scan area narrow at the top and full-width at the bottom (apex at the top centre)."""
    ys, xs = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    inside = (xs - (side - 1) / 2).abs() <= ys / 2 + 0.5
    g = torch.Generator().manual_seed(0)
    img = (0.3 + 0.5 * torch.rand(b, 1, side, side, generator=g)) * inside
    return img


def physics_all_on(**overrides) -> PretrainAugmentConfig:
    cfg = PretrainAugmentConfig(preset="us-physics", **overrides)
    for name in EFFECTS:
        getattr(cfg, name).p = 1.0
    return cfg


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_gives_float_unit_range_images_of_the_output_size(preset):
    torch.manual_seed(0)
    aug = build_augment(PretrainAugmentConfig(preset=preset), 24)
    u8 = (triangle(5, 40)[..., :36] * 255).to(torch.uint8)  # non-square input
    for images in (u8, u8.float() / 255, (u8.float() / 255).to(torch.bfloat16)):
        out = aug(images)
        assert out.shape == (5, 1, 24, 24)
        assert out.dtype == torch.float32 and out.device == images.device
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.isfinite(out).all()
        assert not out.requires_grad


def test_uint8_and_float_inputs_give_the_same_views():
    x = triangle(4, 32)
    u8 = (x * 255).round().to(torch.uint8)
    aug = build_augment(physics_all_on(), 32)
    torch.manual_seed(3)
    a = aug(u8)
    torch.manual_seed(3)
    b = aug(u8.float() / 255)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_float_input_is_never_modified_in_place(preset):
    torch.manual_seed(0)
    x = triangle(3, 24) * 1.5 - 0.2  # values outside [0, 1]: the output clamps, the caller's batch must not
    before = x.clone()
    out = build_augment(PretrainAugmentConfig(preset=preset), 24)(x)
    assert torch.equal(x, before)
    assert out.data_ptr() != x.data_ptr() and out.min() >= 0 and out.max() <= 1


def test_runs_in_float32_under_bf16_autocast():
    aug = build_augment(physics_all_on(), 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug(triangle(2, 32))
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    "bad, what",
    [
        (torch.zeros(2, 3, 8, 8), "[B,1,H,W]"),
        (torch.zeros(1, 8, 8), "[B,1,H,W]"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.int32), "uint8 or float"),
    ],
)
def test_bad_input_is_a_user_error(bad, what):
    with pytest.raises(UserError, match="augment input: expected") as exc:
        build_augment(PretrainAugmentConfig(), 256)(bad)
    assert what in str(exc.value)


# --- orientation and flips ---------------------------------------------------------------------


def test_us_never_flips_vertically():
    torch.manual_seed(0)
    aug = build_augment(PretrainAugmentConfig(preset="us", blur_p=1.0), 32)
    out = aug(vertical_ramp(64, 48, 48))
    q = out.shape[-2] // 4
    top, bottom = out[..., :q, :].mean((1, 2, 3)), out[..., -q:, :].mean((1, 2, 3))
    assert bool((top > bottom + 0.2).all())
    # Every column stays bright-on-top; a vertical flip would reverse it.
    assert bool((out[..., 0, :] > out[..., -1, :]).all())


def test_us_physics_never_flips_vertically():
    torch.manual_seed(0)
    aug = build_augment(physics_all_on(blur_p=1.0), 32)
    out = aug(triangle(64, 48))
    q = out.shape[-2] // 4
    nonzero = (out > 0).float()
    top, bottom = nonzero[..., :q, :].sum((1, 2, 3)), nonzero[..., -q:, :].sum((1, 2, 3))
    assert bool((top < bottom).all())  # the scan area stays narrow at the top, wide at the bottom


@pytest.mark.parametrize("preset", ["us", "us-physics", "default"])
def test_horizontal_flips_happen_for_about_half_the_batch(preset):
    torch.manual_seed(1)
    cfg = PretrainAugmentConfig(preset=preset, blur_p=0.0, jitter_p=0.0, solarize_p=0.0)
    for name in EFFECTS:
        getattr(cfg, name).p = 0.0
    aug = build_augment(cfg, 32)
    left_bright = torch.linspace(0.9, 0.1, 48).view(1, 1, 1, 48).expand(128, 1, 48, 48).contiguous()
    out = aug(left_bright)
    flipped = out[..., :16].mean((1, 2, 3)) < out[..., -16:].mean((1, 2, 3))
    assert torch.equal(flipped, aug.last_params["hflip"]["batch_prob"].bool())
    assert 0.3 < float(flipped.float().mean()) < 0.7


def test_no_vertical_flip_and_no_colour_jitter_in_the_ultrasound_presets():
    for preset in ("us", "us-physics"):
        names = {type(m).__name__ for m in build_augment(PretrainAugmentConfig(preset=preset), 256).modules()}
        assert "RandomVerticalFlip" not in names
        assert not any(n.startswith("Color") or "Brightness" in n or "Contrast" in n for n in names)
    names = {type(m).__name__ for m in build_augment(PretrainAugmentConfig(preset="default"), 256).modules()}
    assert "ColorJitter" in names and "RandomVerticalFlip" not in names


# --- intensity: no colour jitter in `us` ------------------------------------------------------------


def test_us_without_crop_and_blur_preserves_every_pixel_up_to_flip():
    x = triangle(16, 32) + 0.1 * vertical_ramp(16, 32, 32)
    torch.manual_seed(0)
    aug = build_augment(
        PretrainAugmentConfig(preset="us", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), blur_p=0.0), 32
    )
    out = aug(x)
    flipped = aug.last_params["hflip"]["batch_prob"].bool().view(-1, 1, 1, 1)
    assert torch.allclose(out, torch.where(flipped, x.flip(-1), x), atol=1e-4)
    assert torch.allclose(out.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)
    # With blur on, the mean intensity is still kept (a blur only redistributes it).
    blurred = build_augment(
        PretrainAugmentConfig(
            preset="us", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), blur_p=1.0, blur_sigma=(1.5, 1.5)
        ),
        32,
    )(x)
    assert torch.allclose(blurred.mean((1, 2, 3)), x.mean((1, 2, 3)), rtol=0.02)
    # The natural-image preset with its jitter forced on does change it: the check can fail.
    jittered = build_augment(
        PretrainAugmentConfig(
            preset="default",
            crop_scale=(1.0, 1.0),
            crop_ratio=(1.0, 1.0),
            blur_p=0.0,
            solarize_p=0.0,
            jitter_p=1.0,
        ),
        32,
    )(x)
    assert float((jittered.mean((1, 2, 3)) - x.mean((1, 2, 3))).abs().max()) > 0.01


def test_us_physics_with_every_effect_off_is_the_us_geometry_only():
    x = triangle(8, 32)
    cfg = PretrainAugmentConfig(
        preset="us-physics", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, blur_p=0.0
    )
    for name in EFFECTS:
        getattr(cfg, name).p = 0.0
    assert torch.allclose(build_augment(cfg, 32)(x), x, atol=1e-4)


# --- parameter bounds ------------------------------------------------------------------------------


def test_crop_area_and_aspect_stay_in_the_configured_ranges():
    torch.manual_seed(0)
    aug = build_augment(PretrainAugmentConfig(preset="us", crop_scale=(0.5, 0.8), crop_ratio=(0.8, 1.25)), 32)
    aug(torch.rand(256, 1, 64, 64))
    src = aug.last_params["crop"]["src"]
    w = src[:, 1, 0] - src[:, 0, 0] + 1
    h = src[:, 2, 1] - src[:, 1, 1] + 1
    area = w * h / (64 * 64)
    # Kornia rounds each side to whole pixels: allow one pixel on each side.
    assert float(area.min()) >= 0.5 * (1 - 2 / 45) and float(area.max()) <= 0.8 * (1 + 2 / 45)
    assert float((w / h).min()) >= 0.8 * (1 - 2 / 30) and float((w / h).max()) <= 1.25 * (1 + 2 / 30)
    assert float(src.min()) >= 0 and float(src.max()) <= 63
    assert float(area.max() - area.min()) > 0.2  # the range is actually explored


def test_effect_parameters_stay_in_their_ranges_and_probabilities_hold():
    torch.manual_seed(0)
    cfg = PretrainAugmentConfig(preset="us-physics", blur_p=0.5, blur_sigma=(0.3, 1.1))
    aug = build_augment(cfg, 32)
    aug(triangle(200, 32))
    params = aug.last_params
    ranges = {
        ("blur", "sigma"): cfg.blur_sigma,
        ("attenuation", "rate"): cfg.attenuation.rate,
        ("shadow", "strength"): cfg.shadow.strength,
        ("shadow", "width"): cfg.shadow.width,
        ("shadow", "depth"): cfg.shadow.depth,
        ("shadow", "position"): cfg.shadow.position,
        ("haze", "strength"): cfg.haze.strength,
        ("haze", "centre"): cfg.haze.depth,
        ("haze", "width"): cfg.haze.width,
        ("speckle", "looks"): cfg.speckle.looks,
        ("despeckle", "sigma_space"): cfg.despeckle.sigma_space,
        ("despeckle", "sigma_color"): cfg.despeckle.sigma_color,
        ("gain", "gain_db"): cfg.gain.gain_db,
        ("gain", "tgc_db"): cfg.gain.tgc_db,
    }
    for (effect, key), (lo, hi) in ranges.items():
        v = params[effect][key]
        assert float(v.min()) >= lo and float(v.max()) <= hi, (effect, key)
        assert v.shape[0] == params[effect]["index"].numel()
    for effect in ("blur", *EFFECTS):
        chosen = params[effect]["index"].numel() / 200
        assert 0.35 < chosen < 0.65, effect  # p = 0.5 each, 200 images
    assert params["gain"]["tgc_db"].shape[1] == cfg.gain.points


def test_an_effect_touches_only_the_images_it_chose():
    cfg = PretrainAugmentConfig(
        preset="us-physics", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, blur_p=0.0
    )
    for name in EFFECTS:
        getattr(cfg, name).p = 0.0
    cfg.attenuation.p, cfg.attenuation.rate = 0.5, (1.0, 3.0)
    torch.manual_seed(2)
    aug = build_augment(cfg, 32)
    x = triangle(32, 32)
    out = aug(x)
    chosen = torch.zeros(32, dtype=torch.bool)
    chosen[aug.last_params["attenuation"]["index"]] = True
    changed = (out - x).abs().flatten(1).amax(1) > 1e-3
    assert 0 < int(chosen.sum()) < 32
    assert torch.equal(changed, chosen)


# --- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_same_seed_same_views_different_seed_different_views(preset):
    x = (triangle(8, 40) * 255).to(torch.uint8)
    aug = build_augment(PretrainAugmentConfig(preset=preset), 32)
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    assert torch.equal(a, b)
    torch.manual_seed(8)
    c = build_augment(PretrainAugmentConfig(preset=preset), 32)(x)
    if preset == "none":
        assert torch.equal(a, c)  # resize only: nothing random
    else:
        assert not torch.equal(a, c)


def test_restoring_the_rng_state_repeats_the_next_batch():
    aug = build_augment(physics_all_on(), 32)
    x = triangle(4, 40)
    torch.manual_seed(0)
    aug(x)
    state = torch.get_rng_state()
    a = aug(x)
    torch.set_rng_state(state)
    assert torch.equal(aug(x), a)


# --- config ------------------------------------------------------------------------------------------


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = resolve(PretrainAugmentConfig(preset="default"))
    assert cfg.crop_scale == (0.32, 1.0) and cfg.blur_sigma == (0.1, 2.0)
    assert resolve(PretrainAugmentConfig(preset="us")).crop_scale == (0.4, 1.0)
    save_config(cfg, tmp_path / "augment.yaml")
    assert load_config(PretrainAugmentConfig, tmp_path / "augment.yaml") == cfg
    over = load_config(PretrainAugmentConfig, overrides=["preset=us-physics", "shadow.p=1", "crop_scale=[0.5,0.9]"])
    assert over.preset == "us-physics" and over.shadow.p == 1.0 and over.crop_scale == (0.5, 0.9)


def test_output_size_below_8_is_refused_naming_image_size():
    with pytest.raises(ConfigError, match=r"image_size: expected an integer >= 8, got 4"):
        build_augment(PretrainAugmentConfig(), 4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("crop_scale=[0.9,0.5]", "augment.crop_scale: expected a range [low, high] with low <= high"),
        ("crop_scale=[0.5,1.5]", "augment.crop_scale: expected a range"),
        ("hflip_p=1.5", "augment.hflip_p: expected a probability in [0, 1]"),
        ("shadow.strength=[0.5,1.2]", "augment.shadow.strength: expected a range"),
        ("haze.width=[0,0.1]", "augment.haze.width: expected a range [low, high] with low <= high, low > 0"),
        ("despeckle.kernel_size=4", "augment.despeckle.kernel_size: expected an odd integer >= 3"),
        ("gain.points=1", "augment.gain.points: expected an integer >= 2"),
        ("preset=vertical", "key 'preset' expects one of"),
    ],
)
def test_bad_config_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(PretrainAugmentConfig, overrides=[override])
    assert message in str(exc.value)
