"""Readers, the torch dataset, device transforms, splits and label fractions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from downstream.data import (
    GeometricAugment,
    ImageSet,
    ReaderConfig,
    load_gray,
    load_mask,
    read_busi,
    read_catalog,
    read_class_folders,
    read_hub,
    read_paired,
    to_input,
)
from downstream.data.record import Catalog, Record
from downstream.splits import check_splits, label_fraction, load_or_make_splits, make_splits
from sonodistill.errors import UserError


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path)


def _box_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


@pytest.fixture()
def mini_busi(tmp_path) -> Path:
    """BUSI layout by hand: RGB-stored grayscale, one image with two masks, normal with empty mask."""
    rng = np.random.default_rng(0)
    root = tmp_path / "busi"
    for cls, n in (("benign", 3), ("malignant", 2), ("normal", 2)):
        for k in range(1, n + 1):
            h, w = 40 + k, 50
            _png(root / cls / f"{cls} ({k}).png", rng.integers(0, 255, (h, w), dtype=np.uint8), "RGB")
            m = np.zeros((h, w), np.uint8) if cls == "normal" else _box_mask(h, w, 5, 15, 5, 15)
            _png(root / cls / f"{cls} ({k})_mask.png", m)
    _png(root / "benign" / "benign (2)_mask_1.png", _box_mask(42, 50, 20, 30, 30, 40))
    return root


def test_busi_reader_classes_masks_and_union(mini_busi):
    cat = read_busi(mini_busi)
    assert cat.classes == ["normal", "benign", "malignant"]
    assert Counter(cat.labels()) == {0: 2, 1: 3, 2: 2}
    rec = cat.by_id()["benign/benign (2).png"]
    assert [Path(m).name for m in rec.masks] == ["benign (2)_mask.png", "benign (2)_mask_1.png"]
    m = load_mask(rec.masks)
    assert m.sum() == 100 + 100  # two disjoint 10x10 boxes merged by union
    normal = cat.by_id()["normal/normal (1).png"]
    assert normal.masks and not load_mask(normal.masks).any()
    assert load_gray(rec.image).shape == (42, 50)
    # natural order: (1), (2), (3)
    assert [r.id for r in cat.records if r.label == 1] == [f"benign/benign ({k}).png" for k in (1, 2, 3)]


def test_busi_nested_archive_root(mini_busi, tmp_path):
    wrapper = tmp_path / "wrap"
    wrapper.mkdir()
    mini_busi.rename(wrapper / "Dataset_BUSI_with_GT")
    assert len(read_busi(wrapper)) == 7


def test_busi_missing_class_folder(mini_busi):
    import shutil

    shutil.rmtree(mini_busi / "normal")
    with pytest.raises(UserError, match=r"missing: normal/"):
        read_busi(mini_busi)


def test_busi_missing_mask_error_and_cls_fallback(mini_busi):
    (mini_busi / "malignant" / "malignant (1)_mask.png").unlink()
    with pytest.raises(UserError, match=r"1 image\(s\) without a mask.*malignant \(1\)\.png"):
        read_busi(mini_busi)
    # classification does not need masks: documented fallback
    cat = read_catalog(str(mini_busi), "cls")
    assert len(cat) == 7 and cat.has_labels and not cat.has_masks
    with pytest.raises(UserError, match="without a mask"):
        read_catalog(str(mini_busi), "seg")


def test_mask_size_mismatch_is_an_error(mini_busi):
    _png(mini_busi / "benign" / "benign (1)_mask.png", _box_mask(10, 10, 0, 5, 0, 5))
    with pytest.raises(UserError, match=r"benign \(1\)_mask\.png: mask is 10x10 but its image .* is 50x41"):
        read_busi(mini_busi)
    assert len(read_busi(mini_busi, require_masks=False).records) > 0  # classification reads no mask


@pytest.fixture()
def mini_paired(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "ddti"
    for patient, n in ((1, 3), (2, 1), (7, 2), (12, 4), (13, 2), (20, 3)):
        for k in range(1, n + 1):
            _png(root / "image" / f"{patient}_{k}.png", rng.integers(0, 255, (30, 36), dtype=np.uint8))
            _png(root / "mask" / f"{patient}_{k}.png", _box_mask(30, 36, 3, 9, 4, 12))
    return root


def test_paired_reader_groups(mini_paired):
    cat = read_paired(mini_paired)
    assert len(cat) == 15 and cat.has_masks and not cat.has_labels
    assert Counter(r.group for r in cat.records) == {"1": 3, "2": 1, "7": 2, "12": 4, "13": 2, "20": 3}
    assert cat.records[0].id == "image/1_1.png"
    assert read_catalog(str(mini_paired), "seg").name == "ddti"
    with pytest.raises(UserError, match="needs class labels"):
        read_catalog(str(mini_paired), "cls")


def test_paired_generic_names_and_mask_suffix(tmp_path):
    root = tmp_path / "generic"
    for s in ("a", "b"):
        _png(root / "Images" / f"{s}.jpg", np.full((8, 8), 100, np.uint8))
        _png(root / "masks" / f"{s}_mask.png", _box_mask(8, 8, 0, 4, 0, 4))
    cat = read_paired(root, group_pattern="")
    assert [r.group for r in cat.records] == [None, None]
    assert Path(cat.records[0].masks[0]).name == "a_mask.png"


def test_paired_missing_mask(mini_paired):
    (mini_paired / "mask" / "12_3.png").unlink()
    with pytest.raises(UserError, match=r"1 image\(s\) without a mask.*image/12_3\.png"):
        read_paired(mini_paired)


def test_layout_detection_order_and_names(tmp_path):
    from typing import get_args

    from downstream.data.read import LAYOUTS, Layout, ReaderConfig, detect_layout

    assert set(get_args(Layout)) == {"auto", *LAYOUTS}  # every layout in the table can be named in a config
    root = tmp_path / "d"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    assert detect_layout(str(root)) == "paired"
    (root / "train_val.json").write_text("[]")
    (root / "test.json").write_text("[]")
    assert detect_layout(str(root)) == "ub"  # UltraBench folders hold images/ and masks/ too: ub is tried first
    (root / "state.json").write_text("{}")
    assert detect_layout(str(root)) == "hf"
    assert detect_layout("hf:org/name") == "hf" and detect_layout("ub:/nowhere") == "ub"  # prefixes need no folder
    (tmp_path / "plain" / "x").mkdir(parents=True)
    assert detect_layout(str(tmp_path / "plain")) == "classes"  # the fallback
    with pytest.raises(UserError, match=r"found 1$"):
        read_catalog(str(tmp_path / "plain"), "cls")
    with pytest.raises(UserError, match=r"^data.layout: expected one of auto, busi, paired, classes, hf, ub; got 'x'$"):
        read_catalog(str(root), "cls", ReaderConfig(layout="x"))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="data folder not found"):
        detect_layout(str(tmp_path / "missing"))


def test_class_folders_and_hub_dataset(tmp_path):
    root = tmp_path / "cls"
    for c in ("cat", "dog", "eel"):
        for k in range(2):
            _png(root / c / f"{k}.png", np.full((6, 7), 10 * k, np.uint8))
    cat = read_class_folders(root)
    assert cat.classes == ["cat", "dog", "eel"] and cat.labels() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(UserError, match="missing class folder"):
        read_class_folders(root, classes=["cat", "fox"])
    (root / "eel" / "0.png").unlink()
    (root / "eel" / "1.png").unlink()
    with pytest.raises(UserError, match="'eel/' has no images"):
        read_class_folders(root)

    import datasets

    imgs = [Image.fromarray(np.full((5, 9), v, np.uint8)) for v in (0, 50, 100, 150)]
    masks = [Image.fromarray(_box_mask(5, 9, 0, 2, 0, v // 50 + 1)) for v in (0, 50, 100, 150)]
    ds = datasets.Dataset.from_dict(
        {"image": imgs, "mask": masks, "label": ["b", "a", "b", "a"], "pid": [1, 1, 2, 3]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "mask": datasets.Image(),
                "label": datasets.Value("string"),
                "pid": datasets.Value("int32"),
            }
        ),
    )
    saved = tmp_path / "saved"
    ds.save_to_disk(str(saved))
    cat = read_hub(str(saved), group_column="pid")
    assert cat.classes == ["a", "b"] and cat.labels() == [1, 0, 1, 0]
    assert [r.group for r in cat.records] == ["1", "1", "2", "3"]
    assert load_gray(cat.records[2].image)[0, 0] == 100
    assert load_mask(cat.records[3].masks).sum() == 2 * 4
    assert read_catalog(str(saved), "seg").has_masks
    before = read_catalog(str(saved), "seg").fingerprint()
    masks[0] = Image.fromarray(_box_mask(5, 9, 1, 4, 2, 6))  # one mask redrawn, the dataset saved again
    datasets.Dataset.from_dict(
        {"image": imgs, "mask": masks, "label": ["b", "a", "b", "a"], "pid": [1, 1, 2, 3]}, features=ds.features
    ).save_to_disk(str(tmp_path / "saved2"))
    saved.rename(tmp_path / "saved-before")
    (tmp_path / "saved2").rename(saved)  # at the same path: only the content differs
    assert read_catalog(str(saved), "seg").fingerprint() != before
    with pytest.raises(UserError, match="no image column 'img'"):
        read_hub(str(saved), image_column="img")
    for kind, key in (("cls", "label_column"), ("seg", "mask_column")):  # the column named, and those there are
        msg = rf"no {key[:-7]} column 'nope' \(columns: image, mask, label, pid\); set reader.{key}$"
        with pytest.raises(UserError, match=msg):
            read_catalog(str(saved), kind, ReaderConfig(**{key: "nope"}))
    with pytest.raises(UserError, match="anywhere: not in the local datasets cache, and the Hub is not reachable"):
        read_hub("hf:nobody/not-cached-anywhere")


def test_16bit_and_rgb_decode(tmp_path):
    a = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    p = tmp_path / "x16.png"
    Image.fromarray(a).save(p)
    g = load_gray(str(p))
    assert g.dtype == np.uint8 and g[0, 0] == 0 and g[-1, -1] == round(63000 * 255 / 65535)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match="bad.png: cannot read image"):
        load_gray(str(bad))


def test_16bit_masks_keep_their_values_and_12bit_images_their_range(tmp_path):
    """A 0/1 mask or a label map saved as 16-bit PNG is not scaled to nothing; 12-bit data in a
    16-bit file is scaled by 4095 (the shard builder's rule), values up to 255 are kept."""
    from downstream.data.ultrabench import LabelMask

    mask = np.zeros((20, 20), np.uint16)
    mask[2:12, 3:13] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "I;16"
    assert load_mask([str(tmp_path / "m.png")]).sum() == 100
    labels = mask * 2
    labels[15:17, 15:17] = 3
    Image.fromarray(labels).save(tmp_path / "l.png")
    assert load_mask([LabelMask(str(tmp_path / "l.png"), (2,))]).sum() == 100
    twelve = np.arange(400, dtype=np.uint16).reshape(20, 20) * 10  # up to 3990
    Image.fromarray(twelve).save(tmp_path / "t.png")
    g = load_gray(str(tmp_path / "t.png"))
    assert g[-1, -1] == 3990 * 255 // 4095 and len(np.unique(g)) > 200
    small = (np.arange(400, dtype=np.uint16) % 250).reshape(20, 20)
    Image.fromarray(small).save(tmp_path / "s.png")
    assert np.array_equal(load_gray(str(tmp_path / "s.png")), small.astype(np.uint8))


def test_imageset_and_transforms(mini_busi):
    cat = read_busi(mini_busi)
    ds = ImageSet(cat.records, 32, masks=True, labels=True)
    item = ds[cat.ids().index("benign/benign (2).png")]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (1, 32, 32)
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) == {0, 1}
    assert item["label"].item() == 1
    x = to_input(item["image"][None], (0.5, 0.4, 0.3), (0.2, 0.2, 0.1))
    ref = (item["image"].float() / 255 - 0.4) / 0.2
    assert x.shape == (1, 3, 32, 32) and torch.allclose(x[0, 1], ref[0], atol=1e-6)
    # augmentation moves image and mask identically: augment the mask as both inputs
    m = torch.zeros(4, 1, 32, 32)
    m[:, :, 8:20, 10:24] = 1
    torch.manual_seed(0)
    img_aug, mask_aug = GeometricAugment(32)(m.clone(), m.clone())
    agree = ((img_aug > 0.5).float() == mask_aug).float().mean()
    assert agree > 0.98 and set(mask_aug.unique().tolist()) <= {0.0, 1.0}


def _catalog(n_groups: int, labels: bool, seed: int = 0) -> Catalog:
    rng = np.random.default_rng(seed)
    recs = []
    for g in range(n_groups):
        for k in range(int(rng.integers(1, 5))):
            lab = int(rng.choice(3, p=[0.56, 0.27, 0.17])) if labels else None
            recs.append(Record(id=f"{g}_{k}", image=f"/x/{g}_{k}.png", label=lab, group=str(g)))
    return Catalog("t", "/x", recs, ["normal", "benign", "malignant"] if labels else [])


def test_splits_patient_disjoint_deterministic_and_ratio(tmp_path):
    cat = _catalog(200, labels=False)
    s1, s2 = make_splits(cat, (445, 127, 65), seed=3), make_splits(cat, (445, 127, 65), seed=3)
    assert s1.to_json() == s2.to_json()
    assert make_splits(cat, (445, 127, 65), seed=4).test != s1.test
    check_splits(s1, cat, "mem")  # every id once, groups whole
    groups = {p: {i.split("_")[0] for i in s1.part(p)} for p in ("train", "val", "test")}
    assert (
        not (groups["train"] & groups["val"])
        and not (groups["train"] & groups["test"])
        and not (groups["val"] & groups["test"])
    )
    n = len(cat)
    for p, r in zip(("train", "val", "test"), (445 / 637, 127 / 637, 65 / 637)):
        assert abs(len(s1.part(p)) - r * n) <= 4  # whole groups of <= 4 images


def test_splits_stratified_without_groups():
    cat = _catalog(300, labels=True)
    cat = Catalog("t", "/x", [Record(r.id, r.image, label=r.label) for r in cat.records], cat.classes)
    s = make_splits(cat, (0.7, 0.2, 0.1), seed=0)
    total = Counter(cat.labels())
    index = cat.by_id()
    for p, r in zip(("train", "val", "test"), (0.7, 0.2, 0.1)):
        got = Counter(index[i].label for i in s.part(p))
        for c, n in total.items():
            assert abs(got[c] - r * n) <= 1.0, (p, c, got[c], r * n)


def test_splits_file_written_reused_and_checked(tmp_path):
    cat = _catalog(40, labels=True)  # image files that do not exist: no duplicate grouping
    path = tmp_path / "splits.json"
    s = load_or_make_splits(cat, path, (0.6, 0.2, 0.2), seed=1, duplicates=False)
    data = json.loads(path.read_text())
    assert data["train"] == s.train and sum(data["counts"].values()) == len(cat)
    assert sum(data["class_counts"]["test"].values()) == len(s.test)
    # reuse: a hand-edited file is honoured as long as it is valid
    data["train"], data["val"] = data["val"], data["train"]
    path.write_text(json.dumps(data))
    assert load_or_make_splits(cat, path, (0.6, 0.2, 0.2), seed=1, duplicates=False).train == s.val
    with pytest.raises(UserError, match="delete the file or point split.file"):
        load_or_make_splits(cat, path, (0.8, 0.1, 0.1), seed=1, duplicates=False)
    smaller = Catalog("t", "/x", cat.records[:-3], cat.classes)
    with pytest.raises(UserError, match="is not in the dataset"):
        load_or_make_splits(smaller, path, (0.6, 0.2, 0.2), seed=1, duplicates=False)
    bigger = Catalog("t", "/x", cat.records + [Record("new", "/x/new.png", label=0, group="new")], cat.classes)
    with pytest.raises(UserError, match="1 image\\(s\\) of /x are in no split"):
        load_or_make_splits(bigger, path, (0.6, 0.2, 0.2), seed=1, duplicates=False)
    leak = dict(data)
    g0 = next(r.group for r in cat.records if r.id == data["train"][0])
    mate = [r.id for r in cat.records if r.group == g0]
    if len(mate) > 1:  # move one image of the group to test: leakage must be caught
        leak["train"] = [i for i in data["train"] if i != mate[1]]
        leak["test"] = data["test"] + [mate[1]]
        path.write_text(json.dumps(leak))
        with pytest.raises(UserError, match=f"patient/group '{g0}' is in both"):
            load_or_make_splits(cat, path, (0.6, 0.2, 0.2), seed=1, duplicates=False)
    with pytest.raises(UserError, match="too few"):
        make_splits(_catalog(2, labels=False, seed=5), (0.7, 0.2, 0.1))


def test_label_fractions_nested_stratified_min_one():
    rng = np.random.default_rng(0)
    labels = [int(x) for x in rng.choice(3, size=300, p=[0.6, 0.3, 0.1])]
    labels[:3] = [2, 2, 2]
    ids = [f"i{k}" for k in range(len(labels))]
    lab_of = dict(zip(ids, labels))
    for seed in (0, 1):
        subsets = {f: label_fraction(ids, labels, f, seed) for f in (0.05, 0.1, 0.2, 0.5, 1.0)}
        fr = sorted(subsets)
        for a, b in zip(fr, fr[1:]):
            assert set(subsets[a]) < set(subsets[b])
        assert subsets[1.0] == ids
        total = Counter(labels)
        for f, sub in subsets.items():
            got = Counter(lab_of[i] for i in sub)
            for c, n in total.items():
                assert got[c] == min(n, max(1, int(np.floor(f * n + 0.5))))
        assert label_fraction(ids, labels, 0.1, seed) == subsets[0.1]
    assert set(label_fraction(ids, labels, 0.1, 0)) != set(label_fraction(ids, labels, 0.1, 1))
    tiny = label_fraction(["a", "b", "c"], [0, 1, 1], 0.05, 0)
    assert Counter(lab_of_t for lab_of_t in ([0, 1, 1][["a", "b", "c"].index(i)] for i in tiny)) == {0: 1, 1: 1}
    with pytest.raises(UserError, match="fraction"):
        label_fraction(ids, labels, 0.0, 0)


def test_split_ratios_must_be_positive():
    cat = _catalog(30, labels=False)
    for bad in ([0.8, 0.2, 0.0], [0.7, 0.3], [-1, 1, 1]):
        with pytest.raises(UserError, match="split.ratios: expected three positive numbers"):
            make_splits(cat, bad)


def test_readers_on_synthetic_busi_and_ddti(busi_dir, ddti_dir):
    busi = read_catalog(str(busi_dir), "seg")
    counts = Counter(busi.classes[label] for label in busi.labels())
    assert sum(counts.values()) == 60 and counts["benign"] > counts["malignant"] > counts["normal"] >= 1
    multi = [r for r in busi.records if len(r.masks) > 1]
    assert multi, "synthetic BUSI has images with _mask_1 files"
    r = multi[0]
    union = load_mask(r.masks)
    parts = [load_mask([m]) for m in r.masks]
    assert union.sum() >= max(p.sum() for p in parts) and (union == np.logical_or.reduce(parts)).all()
    assert all(not load_mask(x.masks).any() for x in busi.records if busi.classes[x.label] == "normal")
    ddti = read_catalog(str(ddti_dir), "seg")
    assert len(ddti) == 48 and ddti.has_groups
    sizes = Counter(x.group for x in ddti.records)
    assert max(sizes.values()) > 1  # several images per patient
    s = make_splits(ddti, (0.6, 0.2, 0.2), seed=0)
    check_splits(s, ddti, "synthetic ddti")


def test_multi_image_units_reach_every_part_as_often_as_single_images():
    """Duplicate pairs (or patients with two images) among single images: over seeds, a pair is in the
    test split about as often as the test share, not never (as when every unit went biggest first)."""
    recs = [Record(id=f"s{i}", image=f"/x/s{i}.png", label=i % 3) for i in range(160)]
    pairs = [(g, k) for g in range(20) for k in (0, 1)]
    recs += [Record(id=f"g{g}_{k}", image=f"/x/g{g}_{k}.png", label=g % 3, group=f"g{g}") for g, k in pairs]
    cat = Catalog("t", "/x", recs, ["normal", "benign", "malignant"])
    share = {p: 0 for p in ("train", "val", "test")}
    for seed in range(50):
        s = make_splits(cat, (0.7, 0.2, 0.1), seed=seed)
        check_splits(s, cat, "mem")
        for p in share:
            share[p] += sum(f"g{g}_0" in set(s.part(p)) for g in range(20)) / (20 * 50)
    assert 0.55 <= share["train"] <= 0.85 and 0.1 <= share["val"] <= 0.3 and 0.04 <= share["test"] <= 0.16, share


def test_duplicate_pairs_of_a_small_dataset_reach_the_test_split_too():
    """53 images: a pair is over a quarter of the test target (5.3), so it is placed first; drawn by
    the room left it lands in each part about as often as its share (placed greedily into empty
    parts, every pair went to train for every seed)."""
    recs = [Record(id=f"s{i}", image=f"/x/s{i}.png", label=i % 3) for i in range(47)]
    recs += [Record(f"g{g}_{k}", f"/x/g{g}_{k}.png", label=g % 3, group=f"g{g}") for g in range(3) for k in (0, 1)]
    cat = Catalog("t", "/x", recs, ["normal", "benign", "malignant"])
    where = Counter()
    for seed in range(100):
        s = make_splits(cat, (0.7, 0.2, 0.1), seed=seed)
        check_splits(s, cat, "mem")
        sizes = np.array([len(s.train), len(s.val), len(s.test)])
        assert np.abs(sizes - [37.1, 10.6, 5.3]).max() < 1.5, (seed, sizes)  # the ratios still hold
        for g in range(3):
            part = next(p for p in ("train", "val", "test") if f"g{g}_0" in s.part(p))
            assert f"g{g}_1" in s.part(part)  # the pair stays together
            where[part] += 1
    assert 0.6 <= where["train"] / 300 <= 0.8 and 0.12 <= where["val"] / 300 <= 0.3, where
    assert 0.05 <= where["test"] / 300 <= 0.16, where


def test_large_units_are_drawn_per_class_so_every_part_holds_every_class():
    """30 patients of 4 images, one class each: every patient is a large unit. Drawn by the room left
    in total, whole classes went missing from val or test (92 of 200 parts); by the room left in the
    unit's class, none does and the parts hold equal class counts."""
    recs = [Record(f"p{g}_{k}", f"/x/p{g}_{k}.png", label=g % 3, group=f"p{g}") for g in range(30) for k in range(4)]
    cat = Catalog("t", "/x", recs, ["normal", "benign", "malignant"])
    label = {r.id: r.label for r in recs}
    in_test = Counter()
    for seed in range(40):
        s = make_splits(cat, (0.7, 0.2, 0.1), seed=seed)
        check_splits(s, cat, "mem")
        for part in (s.train, s.val, s.test):
            counts = np.bincount([label[i] for i in part], minlength=3)
            assert counts.min() == counts.max() > 0, (seed, counts)
        in_test.update(i.split("_")[0] for i in s.test)
    assert len(in_test) >= 20  # the test patients change with the seed


def test_a_class_of_one_image_is_placed_in_training_whatever_the_seed():
    recs = [Record(f"a{i}", f"/x/a{i}.png", label=0) for i in range(40)]
    recs += [Record(f"b{i}", f"/x/b{i}.png", label=1) for i in range(40)]
    recs += [Record("c0", "/x/c0.png", label=2), Record("d0", "/x/d0.png", label=3), Record("d1", "/x/d1.png", label=3)]
    cat = Catalog("t", "/x", recs, ["a", "b", "c", "d"])
    for seed in range(12):
        s = make_splits(cat, (0.7, 0.2, 0.1), seed=seed)
        assert "c0" in s.train and ("d0" in s.train or "d1" in s.train), seed
        assert abs(len(s.train) - 0.7 * len(recs)) <= 2 and s.test  # the ratios still hold


def test_hidden_folders_are_not_data(tmp_path):
    root = tmp_path / "cls"
    for c in ("a", "b"):
        for k in range(2):
            _png(root / c / f"{k}.png", np.full((6, 7), 10 * k, np.uint8))
    _png(root / "a" / ".ipynb_checkpoints" / "0-checkpoint.png", np.zeros((6, 7), np.uint8))
    _png(root / "b" / "deeper" / ".git" / "x.png", np.zeros((6, 7), np.uint8))
    _png(root / "b" / "deeper" / "kept.png", np.zeros((6, 7), np.uint8))
    assert read_class_folders(root).ids() == ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "b/deeper/kept.png"]


def test_a_dataset_dict_keeps_its_own_test_split(tmp_path):
    import datasets

    def part(values):
        imgs = [Image.fromarray(np.random.default_rng(v).integers(0, 256, (32, 32), dtype=np.uint8)) for v in values]
        return datasets.Dataset.from_dict({"image": imgs, "label": [v % 2 for v in values]})

    saved = tmp_path / "dd"
    datasets.DatasetDict({"train": part(range(0, 40)), "test": part(range(100, 110))}).save_to_disk(str(saved))
    cat = read_catalog(str(saved), "cls")
    assert cat.test_ids == [f"test/{i}" for i in range(10)]
    s = load_or_make_splits(cat, tmp_path / "splits.json", (0.7, 0.2, 0.1), seed=0)
    assert sorted(s.test) == sorted(cat.test_ids)
    assert set(s.train) | set(s.val) == {f"train/{i}" for i in range(40)}
    assert abs(len(s.train) - 40 * 0.7 / 0.9) <= 1
    # one Dataset (or a dict without a test split) is split as a whole
    part(range(20)).save_to_disk(str(tmp_path / "one"))
    assert read_catalog(str(tmp_path / "one"), "cls").test_ids == []
    with pytest.raises(UserError, match=rf"^hf:{saved}: a folder written by save_to_disk; give it without 'hf:'"):
        read_hub(f"hf:{saved}")


def test_frames_of_clips_spread_over_the_parts_are_named(caplog):
    """Class folders of frames named <clip>_<n> have no group ids: the split spreads a clip's frames
    over the parts (the copy matcher joins some, never all); a warning names the runs and the pattern."""
    from downstream.data.grouping import GroupRule, numbered_runs

    clips = [f"clip{c}" for c in range(6)]
    ids = [f"{'ab'[c % 2]}/{name}_{f:04d}.png" for c, name in enumerate(clips) for f in range(0, 40, 4)]
    recs = [Record(id=i, image=f"/x/{i}", label="ab".index(i[0])) for i in ids]
    cat = Catalog("t", "/x", recs, ["a", "b"])
    with caplog.at_level("WARNING", logger="downstream.splits"):
        make_splits(cat, (0.7, 0.15, 0.15), seed=0)
    assert "/x: the images of 6 of 6 file-name runs ('a/clip" in caplog.text
    assert r"reader.group_pattern='^((?:.*/)?.*?)[_-]?\d+$' to keep a clip in one part" in caplog.text
    # the pattern the warning gives groups each clip: one part per clip, and nothing said
    rule = GroupRule(r"^((?:.*/)?.*?)[_-]?\d+$", paired=False)
    grouped = Catalog(
        "t", "/x", [Record(r.id, r.image, label=r.label, group=rule.group(r.id[2:-4])) for r in recs], cat.classes
    )
    assert {r.group for r in grouped.records} == set(clips)
    caplog.clear()
    with caplog.at_level("WARNING", logger="downstream.splits"):
        splits = make_splits(grouped, (0.7, 0.15, 0.15), seed=0)
    assert not caplog.text
    assert all(len({p for p in ("train", "val", "test") for i in splits.part(p) if c in i}) == 1 for c in clips)
    # not clips: BUSI's bracketed counter, one name with a counter, a class's name
    assert numbered_runs(["benign/benign (1).png", "benign/benign (2).png", "m/malignant (1).png"], []) == {}
    assert numbered_runs(["a/IM_0001.png", "a/IM_0002.png", "b/IM_0003.png"], ["a", "b"]) == {}
    assert (
        numbered_runs(["benign/benign_1.png", "benign/benign_2.png", "x/x_1.png", "x/x_2.png"], ["benign", "x"]) == {}
    )
    assert numbered_runs(["p/case3-45.png", "p/case3-46.png", "p/case4-1.png", "p/case4-2.png"], []) == {
        "p/case3": [0, 1], "p/case4": [2, 3]}  # fmt: skip
    # one folder per patient, the same frame names in each: runs apart; a counter over most images: none
    per_patient = ["p1/frame_001.png", "p1/frame_002.png", "p2/frame_001.png", "p2/frame_002.png"]
    assert list(numbered_runs(per_patient, [])) == ["p1/frame", "p2/frame"]
    assert numbered_runs([f"a/IMG_{i}.png" for i in range(8)] + ["b/DSC_1.png", "b/DSC_2.png"], []) == {}
