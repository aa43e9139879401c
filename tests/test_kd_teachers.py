"""Any downstream encoder as a KD teacher (``teacher.encoder``): re-normalised input, the stage
features hdkd's feature loss needs, and clear refusals where a recipe's loss cannot use the teacher."""

from __future__ import annotations

import pytest
import torch
from test_downstream_models import one_thread, save_encoder  # noqa: F401  (shared helper + fixture)
from test_kd_recipes import fails, train

from downstream.kd.checkpoint import read_arch
from downstream.kd.models.encoder_teacher import EncoderTeacher
from downstream.kd.models.hdkd import HDKDStudent


def test_encoder_teacher_renormalises_to_its_own_statistics():
    import dataclasses

    from downstream.encoders import load_encoder

    torch.manual_seed(0)
    enc = dataclasses.replace(load_encoder("rand:resnet18"), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    t = EncoderTeacher(enc, 3).eval()
    x = torch.randn(2, 3, 32, 32)  # ImageNet-normalised, as the recipes feed their models
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    pixels = x * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    own = (pixels - 0.5) / torch.tensor((0.25, 0.5, 1.0)).view(1, 3, 1, 1)  # the encoder's own statistics
    with torch.no_grad():
        torch.testing.assert_close(t(x), t.classifier(own))


def test_hdkd_stage_features_match_the_student_or_are_refused():
    torch.manual_seed(0)
    teacher = EncoderTeacher.build("rand:resnet18", 3, stage_channels=[64, 64, 128]).eval()
    student = HDKDStudent(3, True, 32, [1, 1, 1], [64, 64, 128], dim=32, depth=1, heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = teacher(x, return_features=True)
        _, _, s_feats = student(x, train_outputs=True)
    assert logits.shape == (2, 3) and [f.shape for f in feats] == [f.shape for f in s_feats]
    from sonodistill.errors import UserError

    with pytest.raises(UserError, match=r"stages 64@/2, 64@/4, 128@/8.*compares stages 64@/2, 96@/4, 192@/8"):
        EncoderTeacher.build("rand:resnet18", 3, stage_channels=[64, 96, 192])


def test_recipes_take_an_encoder_teacher(busi_dir, tmp_path, capsys):
    export = save_encoder(tmp_path / "export", "resnet18", seed=2)
    tiny = ["teacher.train.epochs=1", "teacher.train.batch_size=16", "student.train.epochs=1"]
    tiny += ["student.train.batch_size=16", "split.ratios=[0.6,0.2,0.2]"]
    m = train("nanoray", busi_dir, tmp_path / "nanoray", f"teacher.encoder={export}", "gradcam.images=0", *tiny)
    arch = read_arch(tmp_path / "nanoray" / "teacher" / "model.safetensors")
    assert arch["model"] == "encoder_teacher" and arch["encoder"] == str(export)
    assert m["models"]["teacher"]["params"] == 11_176_512 + 512 * 3 + 3  # ResNet-18 + a 3-class linear head
    # hdkd: the default student stages do not match a ResNet; logits-only distillation works
    err = fails("hdkd", busi_dir, tmp_path / "hdkd_stages", capsys, f"teacher.encoder={export}")
    assert "hdkd's feature loss compares stages" in err and "loss.feature_weight=0" in err
    hd = ["model.channels=[16,24,32]", "model.student_blocks=[1,1,1]", "model.dim=32", "model.depth=1"]
    hd += ["model.heads=2", "sweep.per_class=[0]", "loss.feature_weight=0", *tiny]
    m = train("hdkd", busi_dir, tmp_path / "hdkd", f"teacher.encoder={export}", *hd)
    assert 0 <= m["models"]["hdkd_0"]["accuracy"] <= 1
    assert m["complexity"]["teacher"]["params"] == 11_176_512 + 512 * 3 + 3  # Table 2 counts the teacher trained
    err = fails("csa_moe", busi_dir, tmp_path / "csa", capsys, f"teacher.encoder={export}")
    assert "recipe 'csa_moe' has no teacher" in err


def test_seg_recipe_needs_a_teacher_encoder(ddti_dir, tmp_path, capsys):
    err = fails("seg_unet", ddti_dir, tmp_path / "seg", capsys)
    assert "teacher.encoder: give the teacher's encoder spec" in err


def test_settings_a_later_stage_would_refuse_are_refused_before_any_data_is_read(busi_dir, ddti_dir, tmp_path, capsys):
    cases = [
        (
            "seg_unet",
            ddti_dir,
            ["teacher.encoder=rand:resnet18", "student.encoder=tu-bogusnet"],
            "student.encoder: smp has no encoder 'tu-bogusnet'",
        ),
        ("seg_unet", ddti_dir, ["teacher.encoder=hf-hub"], "unknown encoder spec"),
        ("nanoray", busi_dir, [f"teacher.checkpoint={tmp_path / 'gone.safetensors'}"], "teacher.checkpoint: "),
        ("csa_moe", busi_dir, ["variants=[bogus]"], "variants"),
        ("csa_moe", busi_dir, ["repeats=0"], "repeats: expected >= 1, got 0"),
    ]
    for i, (recipe, data, overrides, said) in enumerate(cases):
        out = tmp_path / f"o{i}"
        err = fails(recipe, data, out, capsys, *overrides)
        assert said in err, err
        assert not out.exists()  # refused before the split (or the teacher) was made


def test_a_select_no_stage_of_the_task_reports_is_refused_before_any_data_is_read(busi_dir, ddti_dir, tmp_path, capsys):
    cases = [
        ("nanoray", busi_dir, ["teacher.train.select=val_foo"], "teacher.train.select: val_foo is not a validation"),
        (
            "seg_unet",
            ddti_dir,
            ["teacher.encoder=rand:resnet18", "student.train.select=val_accuracy"],
            "student.train.select: val_accuracy is not a validation metric of a seg task",
        ),
    ]
    for i, (recipe, data, overrides, said) in enumerate(cases):
        out = tmp_path / f"s{i}"
        err = fails(recipe, data, out, capsys, *overrides)
        assert said in err and "valid: auto, last, val_" in err, err
        assert not out.exists()
