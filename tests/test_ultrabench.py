"""UltraBench's processed layout (``ub:DIR``): fields checked against the records, label-map masks,
the dataset's own test split kept by the splitter, and a sweep over ``ub:`` tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from downstream.data.read import ReaderConfig, read_catalog
from downstream.splits import load_or_make_splits, make_splits
from sonodistill.errors import UserError


def write_ultrabench(root: Path, ddti: Path, n_test: int = 10) -> Path:
    """A PSFHS-like folder from synthetic DDTI frames: ``psfh_mask`` label maps (1 = a band above the
    nodule, 2 = the nodule), an integer ``label`` with its name in ``pathology``, ``patient`` ids and
    scan masks; the last ``n_test`` patients' images go to test.json, as ``ultrabench`` writes it."""
    (root / "images").mkdir(parents=True)
    (root / "masks" / "psfh").mkdir(parents=True)
    (root / "masks" / "scan").mkdir(parents=True)
    records = []
    for img in sorted((ddti / "image").glob("*.png")):
        nodule = np.asarray(Image.open(ddti / "mask" / img.name).convert("L")) > 127
        label_map = np.zeros(nodule.shape, np.uint8)
        rows = np.where(nodule.any(1))[0]
        if rows.size:
            label_map[max(0, rows[0] - 6) : rows[0], :] = 1
        label_map[nodule] = 2
        Image.open(img).convert("L").save(root / "images" / img.name)
        Image.fromarray(label_map).save(root / "masks" / "psfh" / img.name)
        Image.fromarray(np.ones(nodule.shape, np.uint8)).save(root / "masks" / "scan" / img.name)
        records.append(
            {
                "patient": int(img.stem.split("_")[0]),
                "image": f"images/{img.name}",
                "psfh_mask": f"masks/psfh/{img.name}",
                "scan_mask": f"masks/scan/{img.name}",
                "area": int(nodule.sum()),
            }
        )
    median = float(np.median([r["area"] for r in records]))
    for r in records:  # a 2-class label: nodule larger than the median
        r["label"] = int(r.pop("area") > median)
        r["pathology"] = ["small", "large"][r["label"]]
    patients = sorted({r["patient"] for r in records})
    test_patients = set(patients[-max(1, len(patients) // 5) :])
    test = [r for r in records if r["patient"] in test_patients]
    (root / "train_val.json").write_text(json.dumps([r for r in records if r["patient"] not in test_patients]))
    (root / "test.json").write_text(json.dumps(test))
    return root


@pytest.fixture(scope="module")
def ub_dir(ddti_dir, tmp_path_factory) -> Path:
    return write_ultrabench(tmp_path_factory.mktemp("ub") / "psfhs_v1", ddti_dir)


def test_segmentation_field_and_label_map(ub_dir):
    from downstream.data.pixels import load_mask

    reader = ReaderConfig(mask_column="psfh_mask", mask_values=[2])
    cat = read_catalog(f"ub:{ub_dir}", "seg", reader)
    test = json.loads((ub_dir / "test.json").read_text())
    assert cat.test_ids == [r["image"] for r in test] and len(cat) == len(test) + len(
        json.loads((ub_dir / "train_val.json").read_text())
    )
    assert all(r.group is not None for r in cat.records)  # patient ids found without being told
    rec = cat.records[0]
    raw = np.asarray(Image.open(ub_dir / "masks" / "psfh" / Path(rec.id).name))
    np.testing.assert_array_equal(load_mask(rec.masks), raw == 2)  # foreground = the listed values
    everything = read_catalog(f"ub:{ub_dir}", "seg", ReaderConfig(mask_column="psfh_mask"))
    np.testing.assert_array_equal(load_mask(everything.by_id()[rec.id].masks), raw > 0)  # default: non-zero
    assert cat.fingerprint() != everything.fingerprint()
    # a redrawn label map is another input (a sweep runs its cells again)
    import shutil

    copy = ub_dir.parent / "psfhs_redrawn"
    shutil.copytree(ub_dir, copy)
    before = read_catalog(f"ub:{copy}", "seg", reader).fingerprint()
    mask = copy / "masks" / "psfh" / Path(rec.id).name
    Image.fromarray(np.ascontiguousarray(raw[::-1])).save(mask)
    assert read_catalog(f"ub:{copy}", "seg", reader).fingerprint() != before


def test_classification_names_and_missing_field_is_a_clear_error(ub_dir):
    cat = read_catalog(f"ub:{ub_dir}", "cls", ReaderConfig())
    assert cat.classes == ["small", "large"]  # integer labels named by the records' pathology field
    with pytest.raises(UserError, match=r"no mask field 'mask'.*reader.mask_column.*psfh_mask"):
        read_catalog(f"ub:{ub_dir}", "seg", ReaderConfig())  # UltraBench PSFHS has no plain 'mask'
    with pytest.raises(UserError, match=r"no label field 'tirads'.*label, pathology, patient"):
        read_catalog(f"ub:{ub_dir}", "cls", ReaderConfig(label_column="tirads"))
    assert read_catalog(str(ub_dir), "cls", ReaderConfig()).classes == cat.classes  # the layout is detected


def test_bad_splits_and_labels_are_one_line_and_the_audit_counts_the_masks_as_used(ub_dir, tmp_path):
    import shutil

    from downstream.audit import unused_images

    cat = read_catalog(f"ub:{ub_dir}", "seg", ReaderConfig(mask_column="psfh_mask"))
    assert unused_images(cat) == []  # label maps and scan masks are named by the records
    copy = tmp_path / "ub"
    shutil.copytree(ub_dir, copy)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(copy / "images" / "stray.png")
    assert unused_images(read_catalog(f"ub:{copy}", "seg", ReaderConfig(mask_column="psfh_mask"))) == [
        "images/stray.png"
    ]
    train = json.loads((copy / "train_val.json").read_text())
    test = json.loads((copy / "test.json").read_text())
    cases = [
        ("test.json", [], r"test.json: holds no records \(UltraBench's test.json is never empty\)$"),
        ("train_val.json", [{**train[0], "label": [0, 1]}, *train[1:]], r"has label \[0, 1\]; expected one class"),
        ("test.json", [{**test[0], "label": 5}, *test[1:]], r"class 5 \(e.g. image .*\) has no image in train_val"),
    ]
    for name, records, msg in cases:
        shutil.copytree(ub_dir, copy, dirs_exist_ok=True)
        (copy / name).write_text(json.dumps(records))
        with pytest.raises(UserError, match=msg):
            read_catalog(f"ub:{copy}", "cls", ReaderConfig())


def test_own_test_split_is_kept(ub_dir, tmp_path):
    cat = read_catalog(f"ub:{ub_dir}", "cls", ReaderConfig())
    splits = make_splits(cat, [0.7, 0.2, 0.1], seed=3)
    assert splits.test == cat.test_ids  # the dataset's test.json, whatever the ratios say
    assert set(splits.train) | set(splits.val) == set(cat.ids()) - set(cat.test_ids)
    groups = {p: {cat.by_id()[i].group for i in splits.part(p)} for p in ("train", "val")}
    assert not groups["train"] & groups["val"]  # train/val still patient-level
    n_val = len(splits.val) / (len(splits.train) + len(splits.val))
    assert 0.1 < n_val < 0.4  # train : val follows ratios[0] : ratios[1]
    path = tmp_path / "splits.json"
    load_or_make_splits(cat, path, [0.7, 0.2, 0.1], 3)
    moved = json.loads(path.read_text())
    moved["test"], moved["train"] = moved["train"][:3], moved["test"] + moved["train"][3:]
    path.write_text(json.dumps(moved))
    with pytest.raises(UserError, match="not the dataset's own"):
        load_or_make_splits(cat, path, [0.7, 0.2, 0.1], 3)


def test_sweep_task_strings_set_kind_and_reader(ub_dir):
    from downstream.data.read import ReaderConfig
    from downstream.sweep import SweepConfig, resolve_tasks

    cfg = SweepConfig(tasks=[f"ub:{ub_dir}?mask=psfh_mask&foreground=1,2", f"ub:{ub_dir}"])
    seg, cls = resolve_tasks(cfg)
    assert (seg.kind, cls.kind) == ("seg", "cls") and seg.data == f"ub:{ub_dir}"
    assert (seg.reader.layout, seg.reader.mask_column, seg.reader.mask_values) == ("ub", "psfh_mask", [1, 2])
    assert cls.reader == ReaderConfig(layout="ub")  # typed, on top of run.reader's defaults
    with pytest.raises(
        UserError, match=r"unknown key 'mask_colum'.*\(or the short keys mask, label, group, foreground\)$"
    ):
        resolve_tasks(SweepConfig(tasks=[f"ub:{ub_dir}?mask_colum=x"]))
