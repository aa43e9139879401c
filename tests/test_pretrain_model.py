"""Student, projection head, eq. 6 loss, mixup, the shared view, and overfitting a fixed batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.augment import PretrainAugmentConfig, build_augment
from pretrain.loss import MixPlan, MixupConfig, mix, sample_mix, token_mse
from pretrain.step import distill_loss, make_view
from pretrain.student import ProjectionHead, build_student, check_grids
from sonodistill.dinov3 import DINOv3
from sonodistill.errors import UserError

SMALL = "resnet10t"  # the same timm ResNet family as resnet50, ~5M parameters


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir) -> DINOv3:
    return DINOv3.from_pretrained(tiny_teacher_dir)


def test_student_output_on_teacher_grid():
    s = build_student(SMALL, teacher_dim=128, head_hidden=32, image_size=64, patch_size=16)
    assert s.stride == 32 and s.grid == (4, 4)
    x = torch.randn(2, 3, 64, 64)
    z = s(x)
    assert z.shape == (2, 128, 4, 4)
    # projected on the 2x2 stride-32 grid, then bilinearly upsampled to 4x4
    f = s.features(x)
    assert f.shape == (2, 512, 2, 2)
    ref = F.interpolate(s.head(f), size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(z, ref, atol=1e-6)
    r50 = build_student("resnet50", teacher_dim=1536, head_hidden=4096, image_size=256, patch_size=16)
    assert r50.grid == (16, 16) and r50.head.fc1.out_channels == 4096 and r50.head.fc2.out_channels == 1536
    assert r50.backbone.num_features == 2048


def test_projection_head_is_tokenwise_two_layer_mlp():
    torch.manual_seed(0)
    head = ProjectionHead(6, 10, 4)
    f = torch.randn(2, 6, 3, 5)
    out = head(f)
    w1, b1 = head.fc1.weight[:, :, 0, 0], head.fc1.bias
    w2, b2 = head.fc2.weight[:, :, 0, 0], head.fc2.bias
    for i in range(3):
        for j in range(5):
            tok = f[:, :, i, j]
            expect = F.gelu(tok @ w1.T + b1) @ w2.T + b2
            assert torch.allclose(out[:, :, i, j], expect, atol=1e-5)


def test_grid_and_dimension_mismatches_are_clear():
    with pytest.raises(UserError, match="72 px is not a multiple of the teacher patch size 16"):
        build_student(SMALL, 128, 32, image_size=72, patch_size=16)
    with pytest.raises(UserError, match="48 px is not a multiple of the student 'resnet10t' stride 32"):
        build_student(SMALL, 128, 32, image_size=48, patch_size=16)
    with pytest.raises(UserError, match="do not align"):
        check_grids(224, 14, 32)  # a /14 teacher: 16x16 vs 7x7
    with pytest.raises(UserError, match="student.out_dim: 768 does not match the teacher embedding dim 1536"):
        build_student(SMALL, 1536, 32, image_size=64, patch_size=16, out_dim=768)
    with pytest.raises(UserError, match="unknown timm model 'resnet5000'"):
        build_student("resnet5000", 128, 32, image_size=64, patch_size=16)
    assert check_grids(256, 16, 32) == (16, 8)


def test_token_mse_matches_eq6_by_hand():
    torch.manual_seed(1)
    s, t = torch.randn(3, 5, 2, 4), torch.randn(3, 5, 2, 4)
    per_image = []
    for b in range(3):
        tokens = [(s[b, :, i, j] - t[b, :, i, j]).pow(2).sum() for i in range(2) for j in range(4)]
        per_image.append(sum(tokens) / len(tokens))  # eq. 6: mean over tokens of squared L2
    expect = sum(per_image) / 3  # batch: mean over images
    assert token_mse(s, t).item() == pytest.approx(expect.item(), rel=1e-6)
    assert token_mse(t, t).item() == 0.0
    assert token_mse(s, t).item() == pytest.approx(token_mse(t, s).item())
    assert token_mse(s.bfloat16(), t).dtype == torch.float32
    with pytest.raises(ValueError, match="differ"):
        token_mse(s, t[:, :4])


def test_mixup_plan_and_formula():
    torch.manual_seed(2)
    plan = sample_mix(64, "cpu", prob=1.0)
    assert plan.lam.shape == (64,) and float(plan.lam.min()) >= 0 and float(plan.lam.max()) < 1
    assert sorted(plan.perm.tolist()) == list(range(64))
    x = torch.randn(4, 3, 2, 2)
    p = MixPlan(torch.tensor([0.0, 0.25, 1.0, 0.5]), torch.tensor([1, 0, 3, 2]))
    y = mix(x, p)
    assert torch.allclose(y[0], x[1]) and torch.allclose(y[2], x[2])
    assert torch.allclose(y[1], 0.25 * x[1] + 0.75 * x[0])
    assert torch.allclose(y[3], 0.5 * x[3] + 0.5 * x[2])
    assert sample_mix(8, "cpu", prob=0.0) is None and mix(x, None) is x
    torch.manual_seed(3)
    mixed = sum(sample_mix(2, "cpu", prob=0.3) is not None for _ in range(400))
    assert 80 < mixed < 160  # ~30 % of batches


def test_make_view_is_augment_then_teacher_normalisation(teacher):
    aug = build_augment(PretrainAugmentConfig(preset="none"), 32)
    images = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    view = make_view(images, aug, teacher)
    assert view.shape == (2, 3, 32, 32)
    assert torch.allclose(view, teacher.normalize(aug(images)))
    # three replicated grey channels, each normalised with its own mean/std
    assert torch.allclose(view[:, 0] * 0.229 + 0.485, view[:, 1] * 0.224 + 0.456, atol=1e-6)


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_same_view_reaches_teacher_and_student(teacher, prob):
    student = build_student(SMALL, teacher.embed_dim, 32, image_size=64, patch_size=16)
    seen: dict[str, torch.Tensor] = {}
    h1 = teacher.register_forward_pre_hook(lambda m, a: seen.__setitem__("teacher", a[0].clone()))
    h2 = student.register_forward_pre_hook(lambda m, a: seen.__setitem__("student", a[0].clone()))
    view = teacher.normalize(torch.rand(4, 1, 64, 64))
    torch.manual_seed(0)
    loss = distill_loss(teacher, student, view, MixupConfig(prob=prob, mode="input"))
    h1.remove(), h2.remove()
    assert torch.equal(seen["teacher"], seen["student"])
    torch.manual_seed(0)
    plan = sample_mix(4, "cpu", prob)
    assert torch.equal(seen["student"], mix(view, plan))
    assert (prob == 0.0) == torch.equal(seen["student"], view)
    expect = token_mse(student(mix(view, plan)), teacher(mix(view, plan)))
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)


def test_a_student_held_in_bf16_gets_its_input_in_bf16(teacher):
    """DeepSpeed's bf16 mode casts the student's weights and autocasts nothing: the float32 view
    must reach it as bf16 (a conv of float32 input and bf16 weights fails)."""
    student = build_student(SMALL, teacher.embed_dim, 32, image_size=64, patch_size=16).eval()
    student.to(torch.bfloat16)
    view = teacher.normalize(torch.rand(2, 1, 64, 64))
    loss = distill_loss(teacher, student, view, MixupConfig(prob=0.0))
    expect = token_mse(student(view.to(torch.bfloat16)), teacher(view))
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expect.item(), rel=1e-6)


def test_target_mode_interpolates_teacher_features(teacher):
    student = build_student(SMALL, teacher.embed_dim, 32, image_size=64, patch_size=16).eval()
    view = teacher.normalize(torch.rand(4, 1, 64, 64))
    torch.manual_seed(5)
    loss = distill_loss(teacher, student, view, MixupConfig(prob=1.0, mode="target"))
    torch.manual_seed(5)
    plan = sample_mix(4, "cpu", 1.0)
    t = teacher(view)
    lam = plan.lam.view(-1, 1, 1, 1)
    target = lam * t + (1 - lam) * t[plan.perm]
    expect = token_mse(student(mix(view, plan)), target)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)


def test_overfits_a_fixed_batch(tmp_path):
    """The student + head fit the teacher's tokens on one batch: the loss falls by more than half.

    A /32 teacher makes both grids 2x2 at 64 px, so the targets are exactly reachable (with a /16
    teacher the 2x upsampling of a random-init teacher's rough token map leaves a large floor).
    """
    from sonodistill.dinov3 import init_tiny

    teacher = DINOv3.from_pretrained(init_tiny(tmp_path / "t32", seed=0, patch_size=32))
    torch.manual_seed(0)
    student = build_student(SMALL, teacher.embed_dim, 128, image_size=64, patch_size=32)
    view = teacher.normalize(torch.rand(4, 1, 64, 64))
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(12):
        loss = distill_loss(teacher, student, view, MixupConfig(prob=0.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
