"""Folder datasets as users ship them: patient ids from sub-folders and ``group_pattern`` in every
folder layout, a BUSI-like folder with a fourth class, case and macOS archive quirks, images that
share a stem, transparency, and label values on lossy masks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from downstream.audit import _rel, unused_images
from downstream.data import ReaderConfig, load_gray, load_mask, read_busi, read_catalog, read_paired
from downstream.data.read import detect_layout
from downstream.splits import make_splits
from sonodistill.errors import UserError


def _img(path: Path, seed: int, size: tuple[int, int] = (24, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8)).save(path)


def _mask(path: Path, size: tuple[int, int] = (24, 32), value: int = 255) -> None:
    m = np.zeros(size, np.uint8)
    m[4:12, 6:20] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)


def _parts_of(cat, splits) -> dict[str, set[str]]:
    """The parts each group's images fell in."""
    part = {i: name for name in ("train", "val", "test") for i in getattr(splits, name)}
    out: dict[str, set[str]] = {}
    for r in cat.records:
        out.setdefault(r.group, set()).add(part[r.id])
    return out


def test_group_pattern_groups_class_folders_and_keeps_patients_whole(tmp_path, caplog):
    root = tmp_path / "cls"
    for cls in ("a", "b"):
        for p in range(6):
            for k in range(4):
                _img(root / cls / f"{cls}{p:02d}-{k}.png", seed=100 * p + 10 * k + ord(cls))
    cat = read_catalog(str(root), "cls", ReaderConfig(group_pattern=r"^(\w+)-"))
    assert sorted({r.group for r in cat.records}) == sorted(f"{c}{p:02d}" for c in "ab" for p in range(6))
    splits = make_splits(cat, ratios=(0.5, 0.25, 0.25), seed=0)
    assert all(len(parts) == 1 for parts in _parts_of(cat, splits).values())
    # by default a class folder of flat files carries no ids (as before: each image its own unit)
    assert {r.group for r in read_catalog(str(root), "cls").records} == {None}
    caplog.set_level(logging.WARNING)
    read_catalog(str(root), "cls", ReaderConfig(group_pattern=r"^(a\d+)-"))
    assert "matched 24 of 48 images" in caplog.text


def test_patient_sub_folders_are_groups_in_the_paired_layout_and_by_pattern(tmp_path):
    paired = tmp_path / "paired"
    for p in range(1, 5):
        for k in range(1, 4):
            _img(paired / "image" / f"P{p:02d}" / f"{k:03d}.png", seed=10 * p + k)
            _mask(paired / "mask" / f"P{p:02d}" / f"{k:03d}.png")
    cat = read_paired(paired)
    assert [r.group for r in cat.records][:4] == ["P01", "P01", "P01", "P02"]  # not frame 001 of every patient
    assert {r.group for r in read_paired(paired, group_pattern=r"^P(\d+)/").records} == {"01", "02", "03", "04"}
    flat = tmp_path / "ddti"
    _img(flat / "image" / "12_1.png", 1)
    _mask(flat / "mask" / "12_1.png")
    assert read_paired(flat).records[0].group == "12"  # DDTI's leading integer, as before
    classes = tmp_path / "classes"
    for cls in ("x", "y"):
        for p in range(2):
            _img(classes / cls / f"pt{p}" / "a.png", seed=p)
    # class folders: sub-folders may be devices or years, not patients; a pattern with "/" names them
    assert {r.group for r in read_catalog(str(classes), "cls").records} == {None}
    by_folder = read_catalog(str(classes), "cls", ReaderConfig(group_pattern=r"^([^/]+)/"))
    assert sorted(r.group for r in by_folder.records) == ["pt0", "pt0", "pt1", "pt1"]
    nested = tmp_path / "nested"  # a pattern without "/" reads the file name, as before
    _img(nested / "image" / "2019" / "3_1.png", 5)
    _mask(nested / "mask" / "2019" / "3_1.png")
    assert read_paired(nested, group_pattern=r"^(\d+)").records[0].group == "3"


def test_busi_names_with_a_fourth_class_or_other_case(tmp_path):
    root = tmp_path / "four"
    for k, cls in enumerate(("normal", "benign", "malignant", "cyst")):
        for j in range(2):
            _img(root / cls / f"{cls} ({j}).png", seed=10 * k + j)
    assert detect_layout(str(root)) == "classes"
    cat = read_catalog(str(root), "cls")
    assert cat.classes == ["benign", "cyst", "malignant", "normal"] and len(cat.records) == 8
    upper = tmp_path / "upper"
    for k, cls in enumerate(("Normal", "Benign", "Malignant")):
        _img(upper / cls / f"{cls} (1).png", seed=k)
        _mask(upper / cls / f"{cls} (1)_mask.png")
    (upper / "__MACOSX" / "Benign").mkdir(parents=True)
    (upper / "__MACOSX" / "Benign" / "._Benign (1).png").write_bytes(b"\0\5\26\7")
    assert detect_layout(str(upper)) == "busi"
    cat = read_busi(upper)
    assert cat.classes == ["normal", "benign", "malignant"] and [r.label for r in cat.records] == [0, 1, 2]


def test_busi_read_as_such_says_which_class_folders_it_leaves_out(tmp_path, caplog):
    root = tmp_path / "busi"
    for k, cls in enumerate(("normal", "benign", "malignant", "cyst")):
        _img(root / cls / f"{cls} (1).png", seed=k)
        _mask(root / cls / f"{cls} (1)_mask.png")
    caplog.set_level(logging.WARNING)
    assert len(read_busi(root).records) == 3
    assert "left out: cyst/" in caplog.text


def test_a_macos_archive_folder_is_not_a_class(tmp_path):
    root = tmp_path / "d"
    for cls in ("a", "b"):
        _img(root / cls / "1.png", seed=len(cls))
        _img(root / cls / "2.png", seed=2)
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._1.png").write_bytes(b"\0\5\26\7")
    assert read_catalog(str(root), "cls").classes == ["a", "b"]


def test_two_images_of_one_stem_are_both_kept(tmp_path):
    root = tmp_path / "d"
    for cls in ("a", "b"):
        _img(root / cls / "img0.png", seed=1)
        _img(root / cls / "img1.png", seed=2)
    Image.open(root / "a" / "img0.png").save(root / "a" / "img0.jpg", quality=95)
    ids = [r.id for r in read_catalog(str(root), "cls").records]
    assert ids == ["a/img0.jpg", "a/img0.png", "a/img1.png", "b/img0.png", "b/img1.png"]


def test_transparency_is_composited_onto_black_and_alpha_drawn_masks_read(tmp_path):
    h, w = 24, 32
    red = np.zeros((h, w, 4), np.uint8)
    red[..., :3] = 255  # white where transparent: no lesion there
    red[4:12, 6:20] = (255, 0, 0, 255)
    Image.fromarray(red, "RGBA").save(tmp_path / "red.png")
    alpha_only = np.zeros((h, w, 4), np.uint8)
    alpha_only[4:12, 6:20, 3] = 255  # black lesion drawn in the alpha channel alone
    Image.fromarray(alpha_only, "RGBA").save(tmp_path / "alpha.png")
    for name in ("red.png", "alpha.png"):
        assert load_mask([str(tmp_path / name)]).sum() == 8 * 14, name
    img = np.zeros((h, w, 4), np.uint8)
    img[..., :3] = 200
    img[2:20, 4:28, 3] = 255  # a scan with a transparent frame around it
    Image.fromarray(img, "RGBA").save(tmp_path / "scan.png")
    grey = load_gray(str(tmp_path / "scan.png"))
    assert grey[0, 0] == 0 and grey[10, 10] == 200  # as the shard builder reads it


@pytest.fixture()
def label_busi(tmp_path) -> Path:
    root = tmp_path / "busi"
    for k, cls in enumerate(("normal", "benign", "malignant")):
        for j in range(2):
            _img(root / cls / f"{cls} ({j}).png", seed=10 * k + j)
            _mask(root / cls / f"{cls} ({j})_mask.png", value=0 if cls == "normal" else 255)
    return root


def test_the_audit_sees_label_masks_as_used_files_with_relative_paths(label_busi):
    cat = read_catalog(str(label_busi), "seg", ReaderConfig(mask_values=[255]))
    assert unused_images(cat) == []
    mask = cat.records[2].masks[0]
    assert _rel(mask, cat.root) == "benign/benign (0)_mask.png"


def test_label_values_on_jpeg_masks_are_refused(tmp_path):
    root = tmp_path / "paired"
    for k in range(3):
        _img(root / "image" / f"{k}_1.png", seed=k)
        _mask(root / "mask" / f"{k}_1.png")
    Image.open(root / "mask" / "1_1.png").save(root / "mask" / "1_1.jpg", quality=90)
    (root / "mask" / "1_1.png").unlink()
    with pytest.raises(UserError, match=r"1_1\.jpg: reader\.mask_values needs lossless masks"):
        read_catalog(str(root), "seg", ReaderConfig(mask_values=[255]))
    assert read_catalog(str(root), "seg").has_masks  # the automatic rule reads JPEG masks
