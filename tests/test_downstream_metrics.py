"""Metrics against scikit-learn and hand-computed cases, including the empty-mask convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score, jaccard_score, roc_auc_score

from downstream.metrics import classification_metrics, dice_iou, plot_confusion, segmentation_summary


def test_dice_iou_hand_cases_and_empty_convention():
    t = torch.zeros(4, 1, 4, 4, dtype=torch.bool)
    p = torch.zeros_like(t)
    t[0, 0, :2, :2] = True  # 4 px
    p[0, 0, :2, :3] = True  # 6 px, overlap 4: dice 8/10, iou 4/6
    # image 1: both empty -> 1, 1
    p[2, 0, 0, 0] = True  # image 2: false positive on empty truth -> 0, 0
    t[3, 0, 1, 1] = True  # image 3: missed lesion -> 0, 0
    d, j = dice_iou(p, t)
    assert d.tolist() == pytest.approx([0.8, 1.0, 0.0, 0.0])
    assert j.tolist() == pytest.approx([4 / 6, 1.0, 0.0, 0.0])
    s = segmentation_summary(d.tolist(), j.tolist(), [False, True, True, False])
    assert s["dice"] == pytest.approx(0.45) and s["iou"] == pytest.approx((4 / 6 + 1) / 4)
    assert s["dice_lesion"] == pytest.approx(0.4) and s["n_empty"] == 2 and s["n_images"] == 4


def test_dice_iou_match_sklearn_on_random_masks():
    rng = np.random.default_rng(0)
    t = rng.random((6, 16, 16)) > 0.6
    p = rng.random((6, 16, 16)) > 0.5
    d, j = dice_iou(torch.from_numpy(p), torch.from_numpy(t))
    for k in range(6):
        assert d[k].item() == pytest.approx(f1_score(t[k].ravel(), p[k].ravel()))
        assert j[k].item() == pytest.approx(jaccard_score(t[k].ravel(), p[k].ravel()))


def test_classification_metrics_vs_sklearn_and_hand(tmp_path):
    y = [0, 0, 1, 1, 2, 2, 2]
    prob = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.3, 0.6, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.2, 0.7],
            [0.5, 0.1, 0.4],
            [0.2, 0.1, 0.7],
        ]
    )
    m = classification_metrics(y, prob, ["normal", "benign", "malignant"])
    # hand: predictions 0,1,1,1,2,0,2 -> 5/7 correct
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    # normal: precision 1/2, recall 1/2; benign: precision 2/3, recall 1; malignant: 1, 2/3
    assert m["per_class"]["normal"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["benign"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["malignant"]["recall"] == pytest.approx(2 / 3)
    f1s = [0.5, 0.8, 0.8]
    assert m["macro_f1"] == pytest.approx(sum(f1s) / 3)
    assert m["macro_f1"] == pytest.approx(f1_score(y, prob.argmax(1), average="macro"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    # binary uses the positive-class score; a missing class gives auc None
    mb = classification_metrics([0, 1, 1, 0], np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]]), ["a", "b"])
    assert mb["auc"] == pytest.approx(0.5)  # pairs pos>neg: 2 of 4
    assert classification_metrics([0, 0], np.array([[0.9, 0.1, 0.0], [0.4, 0.6, 0.0]]), ["a", "b", "c"])["auc"] is None
    out = tmp_path / "cm.png"
    plot_confusion(m["confusion_matrix"], ["normal", "benign", "malignant"], out, title="t")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_macro_averages_leave_out_a_class_with_no_test_image():
    # truth 0 0 1 1, predictions 0 1 1 1; class 2 has no test image
    prob = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    m = classification_metrics([0, 0, 1, 1], prob, ["a", "b", "c"])
    f_a, f_b = 2 * 1.0 * 0.5 / 1.5, 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)
    assert m["macro_f1"] == pytest.approx((f_a + f_b) / 2)
    assert m["macro_recall"] == pytest.approx(0.75) and m["macro_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_auc_is_the_macro_over_the_classes_the_test_split_holds():
    # class c has no test image: AUC is the one-vs-rest mean over a and b, as the other macro scores
    y = [0, 0, 1, 1, 1]
    prob = np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.4, 0.4, 0.2], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    m = classification_metrics(y, prob, ["a", "b", "c"])
    # a vs rest: scores 0.7, 0.3 (positives) against 0.4, 0.1, 0.6: pairs won 3 + 1 of 6
    # b vs rest: scores 0.4, 0.8, 0.3 (positives) against 0.2, 0.5: pairs won 1 + 2 + 1 of 6
    assert m["auc"] == pytest.approx((4 / 6 + 4 / 6) / 2)
    assert m["auc"] == pytest.approx(np.mean([roc_auc_score(np.asarray(y) == c, prob[:, c]) for c in (0, 1)]))
    # scores that are not probabilities (rows not summing to 1) are scaled as probabilities in every case
    rng = np.random.default_rng(0)
    p3 = rng.dirichlet(np.ones(3), size=8)  # no ties: float noise of the scaling cannot reorder scores
    scale = rng.uniform(0.2, 5.0, size=(8, 1))
    for yy, pp, cls in (
        ([0, 0, 1, 1, 1, 0, 1, 0], p3, ["a", "b", "c"]),  # c absent
        ([0, 1, 1, 2, 2, 0, 1, 2], p3, ["a", "b", "c"]),  # all present
        ([0, 1, 1, 0, 1, 0, 1, 0], p3[:, :2], ["a", "b"]),  # binary
    ):
        got = classification_metrics(yy, pp * scale, cls)["auc"]
        assert got == pytest.approx(classification_metrics(yy, pp / pp.sum(1, keepdims=True), cls)["auc"])
