"""Mask-derived CSA-MoE views on synthetic masks and on the synthetic BUSI layout."""

from __future__ import annotations

import numpy as np
import pytest

from downstream.kd.views import boundary_band, core_mask, mask_views


def square(size: int = 64, lo: int = 20, side: int = 20) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[lo : lo + side, lo : lo + side] = True
    return m


def test_core_is_inside_the_mask_and_shrinks_by_the_iterations():
    m = square()
    core = core_mask(m, 5)
    assert core.sum() == (20 - 2 * 5) ** 2  # a 3x3 erosion removes one pixel per side per iteration
    assert not (core & ~m).any()
    assert core[25:35, 25:35].all()
    assert core_mask(m, 10).sum() == 0  # eroded away


def test_band_is_outside_the_mask_and_five_pixels_wide():
    m = square()
    band = boundary_band(m, 5)
    assert band.sum() == (20 + 2 * 5) ** 2 - 20**2
    assert not (band & m).any()
    assert band[15, 15] and band[15, 30] and not band[14, 30] and not band[30, 30]


def test_views_multiply_the_image():
    rng = np.random.default_rng(0)
    img = rng.integers(1, 255, (64, 64), dtype=np.uint8)
    m = square()
    v = mask_views(img, m)
    assert v.shape == (3, 64, 64) and v.dtype == np.uint8
    np.testing.assert_array_equal(v[0], img)
    core, band = core_mask(m), boundary_band(m)
    np.testing.assert_array_equal(v[1][core], img[core])
    assert (v[1][~core] == 0).all()
    np.testing.assert_array_equal(v[2][band], img[band])
    assert (v[2][~band] == 0).all()
    with pytest.raises(ValueError, match="differ in size"):
        mask_views(img, m[:10])


def test_empty_mask_gives_empty_views():
    img = np.full((16, 16), 7, np.uint8)
    v = mask_views(img, np.zeros((16, 16), bool))
    assert v[1].sum() == 0 and v[2].sum() == 0 and (v[0] == 7).all()


def test_viewset_on_synthetic_busi(busi_dir, tmp_path):
    from downstream.kd.config import RecipeConfig
    from downstream.kd.data import ViewSet, prepare

    prep = prepare(str(busi_dir), RecipeConfig(classes=["benign", "malignant"]), tmp_path, need_masks=True)
    assert prep.classes == ["benign", "malignant"]
    assert all(r.label in (0, 1) for p in prep.parts.values() for r in p)
    item = ViewSet(prep.parts["train"][:1], 48)[0]
    views = item["views"].numpy()
    assert views.shape == (3, 48, 48) and "image" not in item
    assert views[1].astype(bool).sum() < views[0].astype(bool).sum()  # the core is part of the image
    assert not (views[1].astype(bool) & views[2].astype(bool)).any()  # core and band never overlap


def test_a_given_split_file_is_reused_as_made(busi_dir, tmp_path):
    """A downstream run's splits.json (other ratios and seed) drives a 2-class recipe's parts."""
    import json

    from downstream.data import read_catalog
    from downstream.kd.config import RecipeConfig
    from downstream.kd.data import prepare
    from downstream.splits import SplitConfig, load_or_make_splits
    from sonodistill.errors import UserError

    made = load_or_make_splits(read_catalog(str(busi_dir), "cls"), tmp_path / "other.json", [0.6, 0.2, 0.2], seed=7)
    cfg = RecipeConfig(classes=["benign", "malignant"], split=SplitConfig(file=str(tmp_path / "other.json")))
    prep = prepare(str(busi_dir), cfg, tmp_path / "run")
    for part in ("train", "val", "test"):
        ids = [r.id for r in prep.parts[part]]
        assert ids and set(ids) <= set(made.part(part))
        assert all(not i.startswith("normal/") for i in ids)
    assert json.loads((tmp_path / "other.json").read_text())["seed"] == 7
    with pytest.raises(UserError, match="not found"):
        prepare(str(busi_dir), RecipeConfig(split=SplitConfig(file=str(tmp_path / "missing.json"))), tmp_path)
