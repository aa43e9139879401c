"""Synthetic frames: scan geometry, lesions and their posterior effects, overlays, Doppler,
distinct source statistics, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion
from skimage.measure import regionprops

from shards.synth import PRESETS, Frame, render
from sonodistill.errors import UserError

FAN = {"cardiac": "sector", "fetal": "convex", "liver": "convex"}
LINEAR = ("breast", "thyroid", "musculoskeletal")


def rng(i: int) -> np.random.Generator:
    return np.random.default_rng(i)


def test_presets_cover_the_six_sources():
    assert {"breast", "thyroid", "cardiac", "fetal", "musculoskeletal", "liver"} <= set(PRESETS)
    for name in LINEAR:
        assert PRESETS[name].geometry == "linear"
    for name, kind in FAN.items():
        assert PRESETS[name].geometry == kind


@pytest.mark.parametrize("preset", list(PRESETS))
def test_frame_fields_and_black_outside_scan_area(preset):
    f = render(preset, rng(7), size=(200, 260))
    assert isinstance(f, Frame)
    assert f.image.dtype == np.uint8 and f.image.shape == (200, 260)
    assert f.scan_mask.dtype == bool and f.mask.dtype == bool and f.mask.shape == (200, 260)
    assert not f.image[~f.scan_mask].any()  # exactly 0 outside before overlays
    assert f.image[f.scan_mask].mean() > 20  # and an actual image inside
    assert f.lesion == "normal" and not f.mask.any() and f.lesion_masks == []
    x0, y0, x1, y1 = f.bbox
    rows, cols = np.nonzero(f.scan_mask)
    assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    assert f.geometry == PRESETS[preset].geometry and f.preset == preset and f.overlays == []


@pytest.mark.parametrize("preset", LINEAR)
def test_linear_scan_area_is_a_rectangle(preset):
    f = render(preset, rng(3))
    x0, y0, x1, y1 = f.bbox
    assert f.scan_mask[y0:y1, x0:x1].all()
    assert f.scan_mask.sum() == (x1 - x0) * (y1 - y0)


@pytest.mark.parametrize("preset", list(FAN))
def test_fan_scan_area_is_a_fan(preset):
    f = render(preset, rng(4))
    m = f.scan_mask
    x0, y0, x1, y1 = f.bbox
    h = y1 - y0
    # top corners of the bounding box are outside, the bottom centre inside
    assert not m[y0, x0] and not m[y0, x1 - 1] and m[y1 - 2, (x0 + x1) // 2]
    # widening with depth, symmetric about the centre line
    widths = m[y0:y1].sum(axis=1)
    assert widths[int(0.1 * h)] < widths[int(0.5 * h)] < widths[int(0.8 * h)]
    row = m[y0 + h // 2]
    cols = np.flatnonzero(row)
    assert abs((cols.min() + cols.max()) / 2 - (x0 + x1 - 1) / 2) <= 1.5
    if FAN[preset] == "sector":  # phased array: apex at the top centre
        top = np.flatnonzero(m[y0])
        assert top.size <= 5 and abs(top.mean() - (x0 + x1 - 1) / 2) <= 2
    else:  # convex: the top edge is an arc about an apex above the image: its ends are highest
        cx = (x0 + x1) // 2
        top = np.flatnonzero(m[y0])
        assert top.min() < cx - 5 and top.max() > cx + 5 and not m[y0, cx]
        assert np.flatnonzero(m[:, cx])[0] > y0 + 3


def _posterior(f: Frame) -> tuple[float, float]:
    """(mean below the lesion - mean beside it, mean inside - mean of a ring around it)."""
    img, m, sm = f.image.astype(np.float64), f.mask, f.scan_mask
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    y1, x0, x1 = rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = rows[-1] + 1 - rows[0], x1 - x0
    r0, r1 = y1 + 3, min(y1 + 3 + max(h // 2, 8), img.shape[0])
    q = w // 4
    below = img[r0:r1, x0 + q : x1 - q][sm[r0:r1, x0 + q : x1 - q]]
    left = img[r0:r1, max(x0 - w // 2, 0) : x0][sm[r0:r1, max(x0 - w // 2, 0) : x0]]
    right = img[r0:r1, x1 : x1 + w // 2][sm[r0:r1, x1 : x1 + w // 2]]
    ring = binary_dilation(m, iterations=6) & ~m & sm
    return below.mean() - np.concatenate([left, right]).mean(), img[m].mean() - img[ring].mean()


@pytest.fixture(scope="module")
def lesion_frames():
    return {
        kind: [render("breast", rng(100 + i), lesion=kind, size=(360, 360)) for i in range(8)]
        for kind in ("benign", "malignant")
    }


def test_lesion_masks_are_the_lesion_and_darker(lesion_frames):
    for kind, frames in lesion_frames.items():
        for f in frames:
            assert f.lesion == kind and len(f.lesion_masks) == 1
            assert f.mask.sum() > 50
            assert np.array_equal(f.mask, f.lesion_masks[0])
            assert not (f.mask & ~f.scan_mask).any()
            _, contrast = _posterior(f)
            assert contrast < -10, f"{kind}: lesion interior not darker than its surroundings ({contrast:.1f})"
            assert _edge_step(f, f.mask) < -5


def test_lesion_masks_are_aligned_with_the_image(lesion_frames):
    """The contrast across the mask boundary is strongest for the mask as given: shifting it by
    2 px in any direction weakens it (the mask is exactly the lesion region of the image)."""
    frames = lesion_frames["benign"] + lesion_frames["malignant"]
    true = np.mean([_edge_step(f, f.mask) for f in frames])
    for axis in (0, 1):
        for d in (-2, 2):
            shifted = np.mean([_edge_step(f, np.roll(f.mask, d, axis=axis)) for f in frames])
            assert true < shifted - 3.0, (axis, d, true, shifted)


def _edge_step(f: Frame, mask: np.ndarray) -> float:
    """Mean grey of a 3-px band just inside ``mask`` minus one just outside it."""
    inner = mask & ~binary_erosion(mask, iterations=3)
    outer = binary_dilation(mask, iterations=3) & ~mask & f.scan_mask
    img = f.image.astype(np.float64)
    return img[inner].mean() - img[outer].mean()


def test_posterior_enhancement_benign_and_shadowing_malignant(lesion_frames):
    benign = np.mean([_posterior(f)[0] for f in lesion_frames["benign"]])
    malignant = np.mean([_posterior(f)[0] for f in lesion_frames["malignant"]])
    assert benign > 8.0  # brighter below than beside
    assert malignant < -8.0  # darker below than beside


def test_malignant_margins_less_convex_and_taller(lesion_frames):
    def stats(frames):
        props = [regionprops(f.mask.astype(np.uint8))[0] for f in frames]
        solidity = np.mean([p.solidity for p in props])
        tall = np.mean([(p.bbox[2] - p.bbox[0]) / (p.bbox[3] - p.bbox[1]) for p in props])
        return solidity, tall

    sb, tb = stats(lesion_frames["benign"])
    sm, tm = stats(lesion_frames["malignant"])
    assert sm < sb - 0.05
    assert tm > tb + 0.1


def test_lesion_classes_overlap_so_shape_alone_is_not_trivial():
    """Over many drawn lesions (rasterised, no B-mode), malignant ones are on average less convex
    and taller, yet some malignant lesions are as convex as typical benign ones and vice versa."""
    from shards.synth.geometry import Points
    from shards.synth.lesions import draw_lesion
    from shards.synth.scene import Scene

    yy, xx = np.mgrid[-30:30:0.35, -30:30:0.35].astype(np.float32)
    pts = Points(xx.ravel(), yy.ravel(), yy.ravel())
    scene = Scene(0.0, 10.0, lesion_zone=(-30.0, 30.0, -30.0, 30.0))
    g = rng(5)
    solidity = {}
    for kind in ("benign", "malignant"):
        vals = []
        for _ in range(100):
            les = draw_lesion(kind, g, scene, (4.0, 10.0))
            m = les.shape.inside(pts).reshape(xx.shape)
            vals.append(regionprops(m.astype(np.uint8))[0].solidity)
        solidity[kind] = np.array(vals)
    b, m = solidity["benign"], solidity["malignant"]
    assert m.mean() < b.mean() - 0.08
    assert (m > np.percentile(b, 25)).mean() > 0.05  # circumscribed carcinomas
    assert (b < np.percentile(m, 75)).mean() > 0.03  # irregular benign lesions


def test_two_lesions_get_separate_masks():
    f = render("breast", rng(11), lesion="benign", n_lesions=2, size=(400, 400))
    assert len(f.lesion_masks) == 2
    a, b = f.lesion_masks
    assert a.any() and b.any() and not (a & b).any()
    assert np.array_equal(f.mask, a | b)


def test_fan_lesion_mask_is_in_the_scan_area():
    f = render("liver", rng(5), lesion="malignant")
    assert f.mask.sum() > 50 and not (f.mask & ~f.scan_mask).any()
    ring = binary_dilation(f.mask, iterations=6) & ~f.mask & f.scan_mask
    assert f.image[f.mask].mean() < f.image[ring].mean()
    assert _edge_step(f, f.mask) < -5


def test_overlays_stay_out_of_the_scan_area_except_calipers():
    drawn = set()
    for i in range(6):
        plain = render("thyroid", rng(20 + i))
        f = render("thyroid", rng(20 + i), overlays=True)
        assert np.array_equal(f.scan_mask, plain.scan_mask)
        grey = f.image if f.image.ndim == 2 else f.image[..., 0]
        changed = grey != plain.image
        if f.image.ndim == 3:
            changed |= (f.image != plain.image[..., None]).any(axis=2)
        drawn |= set(f.overlays)
        if "text" in f.overlays or "depth_scale" in f.overlays:
            assert changed[~f.scan_mask].any()
        if "calipers" not in f.overlays:
            assert not changed[f.scan_mask].any()
    assert {"text", "depth_scale", "calipers"} <= drawn


def test_doppler_frames_are_colour_inside_the_scan_area():
    for preset in ("breast", "cardiac"):
        f = render(preset, rng(9), doppler=True)
        assert f.image.ndim == 3 and f.image.shape[2] == 3 and "doppler" in f.overlays
        colour = (f.image[..., 0] != f.image[..., 1]) | (f.image[..., 1] != f.image[..., 2])
        assert (colour & f.scan_mask).sum() > 100
        red = (f.image[..., 0] > f.image[..., 2] + 60) & f.scan_mask
        blue = (f.image[..., 2] > f.image[..., 0] + 60) & f.scan_mask
        assert red.any() or blue.any()


def test_render_is_deterministic_per_generator():
    a = render("fetal", rng(42), lesion="benign", overlays=True)
    b = render("fetal", rng(42), lesion="benign", overlays=True)
    c = render("fetal", rng(43), lesion="benign", overlays=True)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_same_anatomy_generator_gives_the_same_patient():
    anatomy = [np.random.default_rng(np.random.SeedSequence([1, 2])) for _ in range(2)]
    a = render("thyroid", rng(1), lesion="malignant", anatomy_rng=anatomy[0], tight=True)
    b = render("thyroid", rng(2), lesion="malignant", anatomy_rng=anatomy[1], tight=True)
    assert a.image.shape == b.image.shape and a.bbox == b.bbox
    assert not np.array_equal(a.image, b.image)  # new speckle, gain and probe position
    assert abs(int(a.mask.sum()) - int(b.mask.sum())) < 0.1 * a.mask.sum()  # same nodule


def test_bad_arguments_raise_user_errors():
    with pytest.raises(UserError, match="preset"):
        render("kidney", rng(0))
    with pytest.raises(UserError, match="lesion"):
        render("breast", rng(0), lesion="cancer")
    with pytest.raises(UserError, match="size"):
        render("breast", rng(0), size=(10, 10))


def _features(f: Frame) -> list[float]:
    x0, y0, x1, y1 = f.bbox
    sm, img = f.scan_mask[y0:y1, x0:x1], f.image[y0:y1, x0:x1].astype(np.float64)
    v = img[sm]
    both = sm[:, :-3] & sm[:, 3:]
    lateral = np.corrcoef(img[:, :-3][both], img[:, 3:][both])[0, 1]
    return [(y1 - y0) / (x1 - x0), sm.mean(), v.mean() / 255, v.std() / 255, lateral]


def test_sources_have_distinct_statistics():
    """Simple image statistics (scan aspect, fraction of the bounding box that is scan area, mean,
    contrast, lateral speckle correlation) tell the presets apart: a leave-one-out nearest-centroid
    classifier on them is far above chance (1/6), and every pair differs clearly in one of them."""
    names = list(PRESETS)
    x = np.array([_features(render(n, rng(1000 + i))) for n in names for i in range(4)])
    y = np.repeat(np.arange(len(names)), 4)
    z = (x - x.mean(0)) / x.std(0)
    hits = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        cents = np.array([z[keep & (y == k)].mean(0) for k in range(len(names))])
        hits += int(np.argmin(((cents - z[i]) ** 2).sum(1)) == y[i])
    assert hits / len(y) >= 0.6
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            xa, xb = x[y == a], x[y == b]
            sep = np.abs(xa.mean(0) - xb.mean(0)) / np.sqrt((xa.var(0) + xb.var(0)) / 2 + 1e-9)
            assert sep.max() > 1.5, f"{names[a]} vs {names[b]} look alike"
