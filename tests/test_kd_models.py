"""Recipe models: shapes, and parameter counts against the papers (full size, on the meta device)."""

from __future__ import annotations

import pytest
import timm
import torch

from downstream.edge.measure import fp32_mib, gmacs, num_params
from downstream.kd.models.csa_moe import CrossStageAttention, CSAMoENet
from downstream.kd.models.hdkd import HDKDStudent, HDKDTeacher
from downstream.kd.models.hybrid_teacher import HybridViTConvNeXt


def meta(build):
    with torch.device("meta"):
        return build()


def test_hdkd_counts_reproduce_paper_with_code_channels():
    """Paper 001 Table 1: 3.95M / 3.72M / 3.73M (7 classes); only channels [64, 96, 192] give them."""
    t, s, h = (
        meta(lambda: HDKDTeacher(7)),
        meta(lambda: HDKDStudent(7, distill=False)),
        meta(lambda: HDKDStudent(7, distill=True)),
    )
    assert round(num_params(t) / 1e6, 2) == 3.95
    assert round(num_params(s) / 1e6, 2) == 3.72
    assert round(num_params(h) / 1e6, 2) == 3.73
    # the distillation token adds its token, its position embedding and a second head only
    assert num_params(h) - num_params(s) == 256 + 256 + (256 * 7 + 7)
    table1 = meta(lambda: HDKDTeacher(7, channels=(64, 128, 192)))
    assert round(num_params(table1) / 1e6, 2) != 3.95
    # FLOPs within 10 % of the paper's (MACs; their counter also counts norms/activations)
    with torch.device("meta"):
        assert gmacs(t, torch.zeros(1, 3, 224, 224)) == pytest.approx(5.88, rel=0.1)
        assert gmacs(h, torch.zeros(1, 3, 224, 224)) == pytest.approx(2.09, rel=0.1)


def test_csa_moe_counts_against_table_iv():
    r18 = meta(lambda: CSAMoENet(2, "resnet18", ("image",), csa=False))
    moe = meta(lambda: CSAMoENet(2, "resnet18", csa=False))
    csa = meta(lambda: CSAMoENet(2, "resnet18", csa=True))
    assert round(num_params(r18) / 1e6, 3) == 11.178
    assert num_params(moe) / 1e6 == pytest.approx(33.958, rel=0.01)
    assert num_params(csa) / 1e6 == pytest.approx(34.820, rel=0.01)
    # three CSA modules: 4 key + 4 value maps (64+128+256+512 -> 128), query, MLP 128->64->512
    per = 2 * (960 * 128 + 4 * 128) + 128 + (128 * 64 + 64) + (64 * 512 + 512)
    assert num_params(csa) - num_params(moe) == 3 * per
    assert round(num_params(meta(lambda: CSAMoENet(2, "vgg16", ("image",), csa=False))) / 1e6, 3) == 134.269
    assert round(num_params(meta(lambda: CSAMoENet(2, "densenet121", ("image",), csa=False))) / 1e6, 3) == 6.956
    with torch.device("meta"):
        assert gmacs(r18, torch.zeros(1, 1, 3, 224, 224)) == pytest.approx(1.824, rel=0.01)


def test_hybrid_teacher_and_mobilenet_sizes_match_paper_000():
    teacher = meta(lambda: HybridViTConvNeXt(3))
    assert fp32_mib(teacher) == pytest.approx(438.8, rel=0.005)
    student = meta(lambda: timm.create_model("mobilenetv3_small_100", num_classes=3))
    assert fp32_mib(student) == pytest.approx(5.9, abs=0.06)  # 5.85 MiB: the paper rounds to 5.9
    with torch.device("meta"):
        assert teacher(torch.zeros(2, 3, 224, 224)).shape == (2, 3)
    assert teacher.vit.num_features + teacher.cnn.num_features == 1536


def test_hdkd_shapes_and_inference_averages_the_two_heads():
    torch.manual_seed(0)
    kw = dict(blocks=(1, 1, 1), channels=(8, 16, 24), dim=32, depth=1, heads=2)
    t = HDKDTeacher(3, blocks=(2, 1, 1), channels=(8, 16, 24)).eval()
    s = HDKDStudent(3, True, 32, **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, tf = t(x, return_features=True)
    cls, dist, sf = s(x, train_outputs=True)
    assert logits.shape == cls.shape == dist.shape == (2, 3)
    assert [f.shape for f in sf] == [f.shape for f in tf] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 24, 4, 4)]
    torch.testing.assert_close(s(x), (cls + dist) / 2)
    plain = HDKDStudent(3, False, 32, **kw).eval()
    c2, d2, _ = plain(x, train_outputs=True)
    assert d2 is None and plain(x).shape == (2, 3)
    with pytest.raises(ValueError, match="multiple of 8"):
        HDKDStudent(3, True, 36)


def test_cross_stage_attention_weights_sum_to_one_and_rescale_channels():
    torch.manual_seed(0)
    csa = CrossStageAttention([4, 8, 16, 32], 32)
    stages = [torch.randn(3, c, s, s) for c, s in zip([4, 8, 16, 32], [16, 8, 4, 2])]
    weights, attn = csa(stages)
    assert weights.shape == (3, 32) and ((weights > 0) & (weights < 1)).all()
    torch.testing.assert_close(attn.sum(1), torch.ones(3))
    # hand computation of the stage attention for sample 0
    pooled = [f[0].mean(dim=(1, 2)) for f in stages]
    scores = torch.stack([k(z) @ csa.query for k, z in zip(csa.keys, pooled)]) / 128**0.5
    torch.testing.assert_close(attn[0], scores.softmax(0))


def test_gate_weights_sum_to_one_and_single_view_is_plain_backbone():
    torch.manual_seed(0)
    m = CSAMoENet(2, "resnet18", backbone_kwargs={"layers": [1, 1, 1, 1]}).eval()
    logits, gates = m(torch.randn(2, 3, 3, 32, 32), with_gates=True)
    assert logits.shape == (2, 2) and gates.shape == (2, 3)
    torch.testing.assert_close(gates.sum(1), torch.ones(2))
    sub = CSAMoENet(2, "resnet18", ("image", "boundary"), backbone_kwargs={"layers": [1, 1, 1, 1]}).eval()
    assert sub(torch.randn(2, 2, 3, 32, 32), with_gates=True)[1].shape == (2, 2)
    with pytest.raises(ValueError, match="views"):
        CSAMoENet(2, "resnet18", ("image", "margin"))
    with pytest.raises(ValueError, match=r"\(B, 3"):
        m(torch.randn(2, 2, 3, 32, 32))
    single = meta(lambda: CSAMoENet(2, "resnet18", ("image",), csa=False))
    plain = meta(lambda: timm.create_model("resnet18", num_classes=2))
    assert num_params(single) == num_params(plain)


def test_nanoray_and_mobilenet_counts():
    """Paper 003: ViT-B/16 86M teacher, MobileNetV3-Small 2.5M student (ImageNet 1000-class heads)."""
    from downstream.kd.config import TimmStudentConfig
    from downstream.kd.models.backbones import timm_student
    from downstream.kd.recipes import nanoray

    vit = meta(lambda: nanoray.build_teacher(nanoray.ViTTeacherConfig(), 1000, 224))
    small = meta(lambda: timm_student(TimmStudentConfig(), 1000))
    assert num_params(vit) / 1e6 == pytest.approx(86, rel=0.01)  # 86.57M
    assert round(num_params(small) / 1e6, 1) == 2.5
    large = meta(lambda: timm_student(TimmStudentConfig(model="mobilenetv3_large_100"), 3))
    assert num_params(large) / 1e6 == pytest.approx(4.2, abs=0.05)  # "Large selectable"
