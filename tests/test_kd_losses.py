"""KD losses against hand computations on tiny batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from downstream.kd.losses import HDKDLoss, HDKDLossConfig, LogitKDLoss, feature_distillation, kd_kl
from sonodistill.errors import UserError

S = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.2]])
T = torch.tensor([[1.0, 1.5, -0.5], [-0.4, 0.9, 0.2]])
Y = torch.tensor([0, 2])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def hand_kl(s: torch.Tensor, t: torch.Tensor, temp: float) -> float:
    """T^2 * mean over samples of sum_c p_t log(p_t / p_s) on softened distributions."""
    ps, pt = softmax(s.numpy() / temp), softmax(t.numpy() / temp)
    return float((pt * np.log(pt / ps)).sum(1).mean() * temp**2)


def hand_ce(s: torch.Tensor, y: torch.Tensor) -> float:
    p = softmax(s.numpy())
    return float(-np.log(p[np.arange(len(y)), y.numpy()]).mean())


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kl_matches_hand_computation_batchmean_times_t2(temp):
    assert kd_kl(S, T, temp).item() == pytest.approx(hand_kl(S, T, temp), rel=1e-5)


def test_identical_logits_give_zero_kl_and_shift_invariance():
    assert kd_kl(T, T, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_kl(T + 3.0, T, 4.0).item() == pytest.approx(0.0, abs=1e-6)  # softmax ignores a constant shift
    assert kd_kl(S, T, 4.0).item() > 0


def test_weights_are_named_for_what_they_weigh():
    # paper 000: alpha*CE + (1-alpha)*T^2*KL with alpha = 0.5
    loss = LogitKDLoss(ce_weight=0.5, kd_weight=0.5, temperature=4.0)(S, Y, T)
    expect = 0.5 * hand_ce(S, Y) + 0.5 * hand_kl(S, T, 4.0)
    assert loss.total.item() == pytest.approx(expect, rel=1e-5)
    assert loss.ce.item() == pytest.approx(hand_ce(S, Y), rel=1e-5)
    # paper 003: alpha*T^2*KL + (1-alpha)*CE with alpha = 0.25
    loss = LogitKDLoss(ce_weight=0.75, kd_weight=0.25, temperature=4.0)(S, Y, T)
    assert loss.total.item() == pytest.approx(0.25 * hand_kl(S, T, 4.0) + 0.75 * hand_ce(S, Y), rel=1e-5)
    # kd_weight = 0: pure cross-entropy, whatever (or whether) the teacher says
    pure = LogitKDLoss(ce_weight=1.0, kd_weight=0.0, temperature=4.0)
    assert pure(S, Y, T * 100).total.item() == pytest.approx(F.cross_entropy(S, Y).item(), rel=1e-6)
    assert pure(S, Y, None).total.item() == pytest.approx(hand_ce(S, Y), rel=1e-6)
    # the weights need not sum to 1
    loss = LogitKDLoss(ce_weight=1.0, kd_weight=2.0, temperature=2.0)(S, Y, T)
    assert loss.total.item() == pytest.approx(hand_ce(S, Y) + 2 * hand_kl(S, T, 2.0), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ce_weight": -1.0, "kd_weight": 0.5, "temperature": 4.0}, "must be finite, >= 0"),
        ({"ce_weight": 0.0, "kd_weight": 0.0, "temperature": 4.0}, "not both 0"),
        ({"ce_weight": 0.5, "kd_weight": 0.5, "temperature": 0.0}, "temperature: must be a finite number > 0"),
    ],
)
def test_bad_weights_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        LogitKDLoss(**kwargs)


def test_pure_kd_and_missing_teacher():
    only_kd = LogitKDLoss(ce_weight=0.0, kd_weight=1.0, temperature=2.0)(S, Y, T)
    assert only_kd.total.item() == pytest.approx(hand_kl(S, T, 2.0), rel=1e-5)
    with pytest.raises(ValueError, match="teacher logits"):
        LogitKDLoss(ce_weight=0.5, kd_weight=0.5, temperature=1.0)(S, Y, None)


def test_gradient_scale_of_t_squared():
    """With T^2 the soft-loss gradient magnitude stays comparable across temperatures (Hinton)."""
    s = S.clone().requires_grad_(True)
    grads = []
    for temp in (2.0, 8.0):
        s.grad = None
        kd_kl(s, T, temp).backward()
        grads.append(s.grad.abs().sum().item())
    # without T^2 the T=8 gradient would be ~16x smaller than T=2's; with it they stay within 4x
    assert grads[1] > grads[0] / 4


def test_feature_distillation_weights_stages_by_j():
    torch.manual_seed(0)
    s = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4), torch.randn(2, 8, 2, 2)]
    t = [torch.randn_like(x) for x in s]
    expect = sum((j + 1) * float(((a - b) ** 2).mean()) for j, (a, b) in enumerate(zip(s, t)))
    assert feature_distillation(s, t, stage_exponent=1.0).item() == pytest.approx(expect, rel=1e-5)
    flat = sum(float(((a - b) ** 2).mean()) for a, b in zip(s, t))
    assert feature_distillation(s, t, stage_exponent=0.0).item() == pytest.approx(flat, rel=1e-5)
    assert feature_distillation(s, s).item() == 0.0
    with pytest.raises(ValueError, match="stage 2"):
        feature_distillation(s, [t[0], t[1][:, :3], t[2]])


def test_hdkd_loss_ce_on_cls_head_kl_on_distill_head():
    torch.manual_seed(1)
    dist = torch.randn(2, 3)
    s = [torch.randn(2, 4, 4, 4)]
    t = [torch.randn(2, 4, 4, 4)]
    cfg = HDKDLossConfig(ce_weight=0.5, kd_weight=0.5, temperature=1.0, feature_weight=10.0, stage_exponent=1.0)
    parts = HDKDLoss(cfg)(S, dist, Y, T, s, t)
    l_cls = 0.5 * hand_ce(S, Y) + 0.5 * hand_kl(dist, T, 1.0)
    l_feat = float(((s[0] - t[0]) ** 2).mean())
    assert parts.total.item() == pytest.approx(l_cls + 10 * l_feat, rel=1e-5)
    assert parts.kd.item() == pytest.approx(hand_kl(dist, T, 1.0), rel=1e-5)
    assert math.isclose(parts.items()["feat"], l_feat, rel_tol=1e-5)
