"""How labelled data is read: label-map and noisy masks, reader.mask_values in every layout, Hub rows
without a label, EXIF orientation, classification without mask checks, and the plots' error bars."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from downstream.data import ReaderConfig, load_gray, load_mask, read_catalog
from downstream.data.pixels import binarize
from shards.decode import decode_image
from sonodistill.errors import UserError


def _save(path: Path, arr: np.ndarray, **kw) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return str(path)


def _label_map() -> np.ndarray:
    m = np.zeros((48, 48), np.uint8)
    m[5:17, 5:11] = 1  # 72 px of label 1
    m[5:17, 11:17] = 2  # 72 px of label 2
    return m


def _paired(root: Path, n: int = 3) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        _save(root / "images" / f"{i}.png", rng.integers(0, 255, (48, 48), dtype=np.uint8))
        _save(root / "masks" / f"{i}.png", _label_map())


def test_label_maps_count_every_label_and_noisy_masks_their_bright_part(tmp_path):
    assert load_mask([_save(tmp_path / "l.png", _label_map())]).sum() == 144
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[1:3, 1:3] = [255, 0, 0]  # grey 76
    rgb[5:7, 5:7] = [0, 0, 255]  # grey 29: below half of 76, still a label
    assert load_mask([_save(tmp_path / "rgb.png", rgb)]).sum() == 8
    assert binarize(np.array([[0, 255], [255, 0]], np.uint8)).sum() == 2
    # a 0/255 mask saved as JPEG: noise near 0 and 255 (many values) is not foreground
    truth = np.zeros((64, 64), np.uint8)
    truth[16:40, 20:44] = 255
    buf = io.BytesIO()
    Image.fromarray(truth).save(buf, format="JPEG", quality=60)
    noisy = np.asarray(Image.open(buf))
    assert ((noisy > 0) & (truth == 0)).any()
    assert (binarize(noisy) != (truth > 0)).mean() < 0.01


def test_mask_values_pick_labels_in_every_layout_and_a_value_no_mask_holds_is_an_error(tmp_path):
    _paired(tmp_path / "p")
    from downstream.data.torchset import ImageSet

    def fg(values):
        cat = read_catalog(str(tmp_path / "p"), "seg", ReaderConfig(mask_values=values))
        return int(ImageSet(cat.records, 48, masks=True)[0]["mask"].sum()), cat.fingerprint()

    (both, key_all), (one, key_one) = fg([]), fg([1])
    assert both == 144 and one == 72 and key_all != key_one  # cached features follow the choice
    assert fg([2])[0] == 72
    with pytest.raises(
        UserError, match=r"reader.mask_values \[7\]: no mask holds these values \(values found: 0, 1, 2\)"
    ):
        read_catalog(str(tmp_path / "p"), "seg", ReaderConfig(mask_values=[7]))


def test_hub_rows_without_a_label_are_left_out_with_a_warning(tmp_path, caplog):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)

    def img():
        return Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8))

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.Dataset.from_dict(
        {"image": [img() for _ in range(6)], "label": ["cat", "dog", "cat", None, "dog", "cat"]}, features=features
    ).save_to_disk(str(tmp_path / "strings"))
    with caplog.at_level(logging.WARNING):
        cat = read_catalog(str(tmp_path / "strings"), "cls")
    assert cat.classes == ["cat", "dog"] and cat.labels() == [0, 1, 0, 1, 0] and "3" not in cat.ids()
    assert "1 rows without a label are left out" in caplog.text

    class_label = datasets.ClassLabel(names=["a", "b"])
    labelled = datasets.Features({"image": datasets.Image(), "label": class_label})
    train = datasets.Dataset.from_dict(
        {"image": [img() for _ in range(6)], "label": [0, 1, 0, 1, -1, 1]}, features=labelled
    )
    test = datasets.Dataset.from_dict(
        {"image": [img() for _ in range(3)]}, features=datasets.Features({"image": datasets.Image()})
    )
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "withheld"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cat = read_catalog(str(tmp_path / "withheld"), "cls")
    assert cat.ids() == ["train/0", "train/1", "train/2", "train/3", "train/5"] and cat.test_ids == []
    assert "split 'test' has no label column 'label': its 3 rows are left out" in caplog.text
    assert "split 'train': 1 rows without a label" in caplog.text

    # splits whose class lists differ: a label the first split's list does not name
    wider = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    more = datasets.Dataset.from_dict({"image": [img() for _ in range(2)], "label": [0, 2]}, features=wider)
    datasets.DatasetDict({"train": train, "test": more}).save_to_disk(str(tmp_path / "beyond"))
    with pytest.raises(UserError, match=r"beyond\[test/1\]\.label: 2 is not one of the 2 classes"):
        read_catalog(str(tmp_path / "beyond"), "cls")


def test_exif_orientation_is_applied_as_viewers_do(tmp_path):
    shown = np.zeros((40, 60), np.uint8)
    shown[5:15, 5:25] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers turn it 90 degrees clockwise
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)
    path = tmp_path / "seg" / "images" / "a.jpg"
    path.parent.mkdir(parents=True)
    stored.save(path, exif=exif.tobytes(), quality=95)
    _save(tmp_path / "seg" / "masks" / "a.png", shown)  # drawn on the image as shown
    g = load_gray(str(path))
    assert g.shape == (40, 60) and np.abs(g.astype(int) - shown).mean() < 2
    cat = read_catalog(str(tmp_path / "seg"), "seg")  # the mask's size matches the shown image
    assert load_mask(cat.records[0].masks).sum() == 200
    dec = decode_image(path.read_bytes())  # the shard builder reads it upright too
    assert dec.pixels.shape == (40, 60) and dec.orig_size == (60, 40)


def test_classification_on_class_folders_does_not_check_masks(tmp_path):
    for c in ("cyst", "solid"):
        for i in range(3):
            _save(tmp_path / c / f"{i}.png", np.full((40, 40), 90, np.uint8))
            _save(tmp_path / c / f"{i}_mask.png", np.zeros((40, 40) if i else (20, 20), np.uint8))
    assert len(read_catalog(str(tmp_path), "cls")) == 6
    with pytest.raises(UserError, match="mask is 20x20 but its image"):
        read_catalog(str(tmp_path), "seg")


def test_fraction_plot_error_bars_are_the_tables_sample_std(tmp_path, monkeypatch):
    import matplotlib.axes

    from downstream.curves import plot_fraction_curves
    from downstream.report import mean_std
    from downstream.tables import TaskColumn

    seen = []
    errorbar = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, yerr=None, **kw):
        seen.append(list(yerr))
        return errorbar(self, x, y, yerr=yerr, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    agg = {("busi-cls", "R50", "linear", f): {"accuracy": [0.6, 0.8]} for f in (0.5, 1.0)}
    agg[("busi-cls", "R50", "linear", 0.25)] = {"accuracy": [0.5]}
    col = TaskColumn("busi-cls", "BUSI Cls.", "cls")
    plot_fraction_curves(agg, ["R50"], [col], [0.25, 0.5, 1.0], "linear", str(tmp_path / "f.png"))
    assert mean_std([0.6, 0.8]) == "0.7000 ± 0.1414"
    assert seen == [pytest.approx([0.0, 0.141421356, 0.141421356])]
    # a sweep of KD rows only has no linear-probe row: no plot of empty panels, none listed
    assert not plot_fraction_curves(agg, [], [col], [0.25, 0.5, 1.0], "linear", str(tmp_path / "g.png"))
    assert not (tmp_path / "g.png").exists()


def test_many_valued_masks_keep_their_bright_half():
    soft = np.zeros((8, 8), np.uint8)
    soft[2:6, 2:6] = 255
    soft[2:6, 1] = np.array([40, 90, 140, 200])  # an anti-aliased edge: many values
    soft[0, :4] = [3, 5, 7, 9]
    assert binarize(soft).sum() == 16 + 2


def test_a_plain_minus_one_label_is_a_class_and_masks_are_checked_before_their_values(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)) for _ in range(6)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int32")})
    datasets.Dataset.from_dict({"image": images, "label": [-1, 1, -1, 1, -1, 1]}, features=features).save_to_disk(
        str(tmp_path / "signs")
    )
    cat = read_catalog(str(tmp_path / "signs"), "cls")  # -1 is "no label" only for a ClassLabel
    assert cat.classes == ["-1", "1"] and len(cat) == 6
    _save(tmp_path / "nomasks" / "images" / "0.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "nomasks" / "masks").mkdir()
    with pytest.raises(UserError, match="without a mask"):  # the masks missing, not their values
        read_catalog(str(tmp_path / "nomasks"), "seg", ReaderConfig(mask_values=[1]))
