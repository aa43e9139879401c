"""Duplicate groups in downstream data (downstream.groups): duplicate-aware splits and the audit, on a
BUSI-layout folder with planted copies, a label conflict, an empty lesion mask and a wrong-size mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from downstream import audit as audit_cli
from downstream.data.read import read_catalog
from downstream.data.record import Catalog, Record
from downstream.groups import DuplicateGroup, duplicate_groups
from downstream.splits import PARTS, check_splits, load_or_make_splits, make_splits
from shards.synth import write_busi
from sonodistill.errors import UserError

# planted copy -> original (BUSI layout, relative paths)
COPIES = {
    "malignant/malignant (90).png": "benign/benign (2).png",  # the same image under another class
    "benign/benign (91).jpg": "benign/benign (3).png",  # re-encoded and resized
    "malignant/malignant (92).png": "malignant/malignant (1).png",  # mirrored and cropped
}


def _copy(root: Path, copy: str, original: str) -> None:
    img = Image.open(root / original).convert("L")
    w, h = img.size
    if copy.endswith(".jpg"):
        img = img.resize((int(w * 0.7), int(h * 0.7)))
    elif "92" in copy:
        img = img.crop((int(0.08 * w), int(0.05 * h), w, h)).transpose(Image.FLIP_LEFT_RIGHT)
    img.save(root / copy, quality=70) if copy.endswith(".jpg") else img.save(root / copy)
    mask = Image.open(root / original.replace(".png", "_mask.png")).resize(img.size, Image.Resampling.NEAREST)
    mask.save(root / (copy.rsplit(".", 1)[0] + "_mask.png"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("busi_planted")
    write_busi(root, n=24, seed=1)
    for copy, original in COPIES.items():
        _copy(root, copy, original)
    empty = root / "benign" / "benign (5)_mask.png"
    Image.fromarray(np.zeros(Image.open(empty).size[::-1], np.uint8)).save(empty)
    wrong = root / "benign" / "benign (6)_mask.png"
    Image.open(wrong).resize((50, 40)).save(wrong)
    return root


@pytest.fixture(scope="module")
def groups(planted) -> list[DuplicateGroup]:
    return duplicate_groups(read_catalog(str(planted), "cls", check=False))


def test_groups_are_the_planted_copies(groups):
    found = {frozenset(g.ids): (g.exact, g.label_conflict) for g in groups}
    assert found == {
        frozenset(["benign/benign (2).png", "malignant/malignant (90).png"]): (True, True),
        frozenset(["benign/benign (3).png", "benign/benign (91).jpg"]): (False, False),
        frozenset(["malignant/malignant (1).png", "malignant/malignant (92).png"]): (False, False),
    }


def test_split_keeps_groups_whole_and_leaves_conflicts_out(planted, groups, tmp_path):
    cat = read_catalog(str(planted), "cls", check=False)
    path = tmp_path / "splits.json"
    splits = load_or_make_splits(cat, path, (0.5, 0.25, 0.25), 0)
    check_splits(splits, cat, "mem", groups)  # no group in two parts
    conflict = ["benign/benign (2).png", "malignant/malignant (90).png"]
    assert splits.left_out == {"label_conflict": conflict}
    assert not set(conflict) & {i for p in PARTS for i in splits.part(p)}
    data = json.loads(path.read_text())
    assert data["grouping"]["duplicate_groups"] == 3 and data["grouping"]["exact_groups"] == 1
    assert data["grouping"]["left_out"] == {"label_conflict": 2} and data["duplicates"] is True
    assert sum(data["counts"].values()) == len(cat) - 2
    kept = make_splits(cat, (0.5, 0.25, 0.25), 0, groups, label_conflicts="keep")
    assert kept.left_out == {} and len({p for p in PARTS if set(conflict) & set(kept.part(p))}) == 1
    with pytest.raises(UserError, match="was made with split.duplicates=True"):
        load_or_make_splits(cat, path, (0.5, 0.25, 0.25), 0, duplicates=False)


def test_no_seed_separates_a_group():
    rng = np.random.default_rng(0)
    recs = [Record(f"i{k}", f"/x/i{k}.png", label=int(rng.integers(3))) for k in range(60)]
    cat = Catalog("t", "/x", recs, ["normal", "benign", "malignant"])
    groups = [DuplicateGroup(tuple(f"i{k}" for k in ks), False, tuple(recs[k].label for k in ks))
              for ks in ([0, 1, 2], [3, 40], [10, 11, 12, 13, 59])]  # fmt: skip
    for seed in range(20):
        s = make_splits(cat, (0.6, 0.2, 0.2), seed, groups, label_conflicts="keep")
        check_splits(s, cat, "mem", groups)
        assert make_splits(cat, (0.6, 0.2, 0.2), seed, groups, label_conflicts="keep").to_json() == s.to_json()
    bad = make_splits(cat, (0.6, 0.2, 0.2), 0, [], label_conflicts="keep")
    with pytest.raises(UserError, match="duplicate images .* are in"):
        for seed in range(20):  # without the groups some seed puts a group in two parts
            check_splits(make_splits(cat, (0.6, 0.2, 0.2), seed, [], "keep"), cat, "mem", groups)
    plain = make_splits(cat, (0.6, 0.2, 0.2), 0, None)  # made without groups: the parts as before
    assert [plain.part(p) for p in PARTS] == [bad.part(p) for p in PARTS] and plain.grouping == {}


def test_a_fixed_test_split_keeps_its_images_and_drops_their_training_duplicates():
    recs = [Record(f"i{k}", f"/x/i{k}.png", label=k % 2) for k in range(12)]
    cat = Catalog("ub", "/x", recs, ["a", "b"], test_ids=["i0", "i1"])
    groups = [DuplicateGroup(("i0", "i4"), True, (0, 0)), DuplicateGroup(("i6", "i7"), False, (0, 1))]
    s = make_splits(cat, (0.7, 0.3, 0.0001), 0, groups)
    assert s.test == ["i0", "i1"] and s.left_out == {"label_conflict": ["i6", "i7"], "duplicate_of_test": ["i4"]}


def test_audit_finds_planted_duplicates_conflicts_and_mask_faults(planted, tmp_path, capsys):
    out = tmp_path / "audit"
    audit_cli.main(["--task", "busi-seg", "--data", str(planted), "--out", str(out), "num_workers=1"])
    line = capsys.readouterr().out
    assert "3 duplicate groups (1 exact, 6 images), 1 label conflicts" in line
    report = json.loads((out / "audit.json").read_text())
    groups = {frozenset(i["path"] for i in g["images"]): g for g in report["duplicate_groups"]}
    conflict = groups[frozenset(["benign/benign (2).png", "malignant/malignant (90).png"])]
    assert (
        conflict["kind"] == "exact" and conflict["label_conflict"] and report["label_conflicts"] == [conflict["group"]]
    )
    assert {i["class"] for i in conflict["images"]} == {"benign", "malignant"}
    assert [e["path"] for e in report["empty_lesion_masks"]] == ["benign/benign (5).png"]
    (size,) = report["mask_size_mismatches"]
    assert size["mask"] == "benign/benign (6)_mask.png" and size["mask_size"] == [50, 40]
    for g in report["duplicate_groups"]:
        assert (out / g["sheet"]).is_file()
    assert (out / "config.yaml").is_file() and report["summary"]["unreadable"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "busi-cls", "--data", "/nonexistent"], "error: /nonexistent: BUSI folder not found"),
        (["--task", "busi-cls", "--data", "x", "bogus=1"], "error: override: unknown key 'bogus'"),
    ],
)
def test_audit_cli_errors_are_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        audit_cli.main([*args, "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith(message)


def test_synthetic_busi_has_no_duplicates(busi_dir):
    # every image of the generator is drawn apart: none may match another
    assert duplicate_groups(read_catalog(str(busi_dir), "cls")) == []


def test_audit_lists_truncated_images_and_junk_masks_instead_of_stopping(planted, tmp_path, capsys):
    import shutil

    data = tmp_path / "busi"
    shutil.copytree(planted, data)
    img = data / "benign" / "benign (3).png"
    img.write_bytes(img.read_bytes()[:600])  # the header reads, the pixels stop short
    (data / "malignant" / "malignant (1)_mask.png").write_bytes(b"not a png at all")
    out = tmp_path / "audit"
    audit_cli.main(["--task", "busi-seg", "--data", str(data), "--out", str(out), "num_workers=1"])
    report = json.loads((out / "audit.json").read_text())
    bad = {u["path"]: u["error"] for u in report["unreadable"]}
    assert set(bad) == {"benign/benign (3).png", "malignant/malignant (1).png"}
    assert "benign/benign (3).png: cannot read image" in bad["benign/benign (3).png"]
    assert "malignant/malignant (1)_mask.png: cannot read image" in bad["malignant/malignant (1).png"]
    assert str(tmp_path) not in json.dumps(report["unreadable"])
    assert report["summary"]["unreadable"] == 2 and "2 unreadable" in capsys.readouterr().out
    assert report["empty_classes"] == []
    # a class folder emptied: a run refuses the dataset, the audit names the class
    for f in (data / "normal").iterdir():
        f.unlink()
    audit_cli.main(["--task", "busi-cls", "--data", str(data), "--out", str(out), "num_workers=1"])
    report = json.loads((out / "audit.json").read_text())
    assert report["empty_classes"] == ["normal"] and report["summary"]["empty_classes"] == 1
    assert "classes without images: normal -> " in capsys.readouterr().out


def test_a_stop_signal_ends_the_duplicate_search_between_its_phases(planted, tmp_path):
    """SLURM's SIGTERM during a large dataset's search (minutes) is answered there, not after it."""
    import os
    import signal
    import time

    from sonodistill.stop import Stopped, StopRequest

    with StopRequest():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        with pytest.raises(Stopped, match="SIGTERM received; the duplicate search was stopped before any split"):
            load_or_make_splits(read_catalog(str(planted), "cls", check=False), tmp_path / "splits.json")
    assert not (tmp_path / "splits.json").exists()


def test_audit_lists_images_without_a_mask_with_paths_relative_to_a_relative_data(planted, tmp_path, monkeypatch):
    """Run from the folder above the dataset (`--data busi`, as the docs' example): every path in
    audit.json is the dataset's own, an image without a mask is listed, not a stop."""
    import shutil

    data = tmp_path / "busi"
    shutil.copytree(planted, data)
    (data / "benign" / "benign (7)_mask.png").unlink()
    (data / "benign" / "benign (8).png").rename(data / "benign" / "benign (8) renamed.png")  # its mask orphaned
    monkeypatch.chdir(tmp_path)
    audit_cli.main(["--task", "busi-seg", "--data", "busi", "--out", "audit", "num_workers=1"])
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["root"] == "busi" and report["missing_masks"] == [
        "benign/benign (7).png",
        "benign/benign (8) renamed.png",
    ]
    assert report["unused_images"] == ["benign/benign (8)_mask.png"] and report["summary"]["unused_images"] == 1
    assert [e["masks"] for e in report["empty_lesion_masks"]] == [["benign/benign (5)_mask.png"]]
    assert [e["mask"] for e in report["mask_size_mismatches"]] == ["benign/benign (6)_mask.png"]
    with pytest.raises(UserError, match=r"2 image\(s\) without a mask file .* e\.g\. benign/benign \(7\)\.png"):
        read_catalog("busi", "seg")  # a run still stops on it


def test_audit_of_a_saved_dataset_names_rows_without_the_folder(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (48, 64), np.uint8)) for _ in range(4)]
    masks = [Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), ((20, 20), (28, 28)))) for _ in range(4)]
    masks[2] = Image.fromarray(np.zeros((48, 64), np.uint8))  # a lesion without its mask drawn
    masks[3] = masks[3].resize((32, 24))
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    datasets.Dataset.from_dict({"image": imgs, "mask": masks}, features=features).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "audit"
    audit_cli.main(["--task", "seg", "--data", str(tmp_path / "ds"), "--out", str(out), "num_workers=1"])
    report = json.loads((out / "audit.json").read_text())
    assert report["empty_lesion_masks"] == [{"path": "2", "class": None, "masks": ["[2].mask"]}]
    (size,) = report["mask_size_mismatches"]
    assert size["path"] == "3" and size["mask"] == "[3].mask" and size["mask_size"] == [32, 24]


def test_audit_of_a_folder_without_a_segmentation_layout_says_which_it_expects(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(SystemExit) as exc:
        audit_cli.main(["--task", "seg", "--data", str(tmp_path / "flat"), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'flat'}: no segmentation layout found: expected image/ and mask/")


def test_audit_again_into_its_folder_keeps_only_its_own_sheets(planted, busi_dir, tmp_path):
    out = tmp_path / "audit"
    audit_cli.main(["--task", "busi-seg", "--data", str(planted), "--out", str(out), "num_workers=1"])
    (out / "groups" / "mine.png").write_bytes(b"x")  # the user's own file stays
    assert sorted(p.name for p in (out / "groups").iterdir()) == [f"group-000{k}.png" for k in (1, 2, 3)] + ["mine.png"]
    audit_cli.main(["--task", "busi-seg", "--data", str(busi_dir), "--out", str(out), "num_workers=1"])
    assert json.loads((out / "audit.json").read_text())["duplicate_groups"] == []
    assert [p.name for p in (out / "groups").iterdir()] == ["mine.png"]


def test_audit_refuses_an_out_inside_the_dataset_and_writes_nothing(planted, tmp_path, capsys):
    import shutil

    data = tmp_path / "busi"
    shutil.copytree(planted, data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    inside = data / "benign" / "audit"
    for args, message in (
        (["--out", str(inside)], f"error: --out {inside}: inside the dataset {data}; the audit's contact sheets"),
        (["--out", str(tmp_path / "a"), "num_workers=0"], "error: num_workers: expected at least 1, got 0"),
    ):
        with pytest.raises(SystemExit) as exc:
            audit_cli.main(["--task", "busi-cls", "--data", str(data), *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith(message), err
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert not (tmp_path / "a").exists()
