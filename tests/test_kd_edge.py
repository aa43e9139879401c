"""Deployment pieces of the edge benchmark: ONNX export, INT8 quantisation, side-by-side timing."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from downstream.kd.efficiency import fp32_mib, latency, side_by_side
from downstream.kd.onnx_export import OrtModel, export, quantize_dynamic_int8, quantize_static_qdq


def test_onnx_student_matches_torch_and_int8_is_smaller(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_100", num_classes=3).eval()
    fp32 = export(model, tmp_path / "s.onnx", size=32)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    ort = OrtModel(fp32, threads=1)
    np.testing.assert_allclose(ort(x.numpy()), ref, rtol=1e-3, atol=1e-4)  # dynamic batch axis works
    assert ort.mb == pytest.approx(fp32_mib(model), rel=0.05)
    dyn = OrtModel(quantize_dynamic_int8(fp32, tmp_path / "d.onnx"), threads=1)
    calib = [np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(4)]
    qdq = OrtModel(quantize_static_qdq(fp32, tmp_path / "q.onnx", calib), threads=1)
    for q in (dyn, qdq):
        assert q.mb < ort.mb / 2
        assert q(x.numpy()).shape == (4, 3)


def test_side_by_side_interleaves_and_counts_runs():
    calls: list[str] = []
    stats = side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=6, warmup=1, rounds=3)
    assert stats["a"]["runs"] == stats["b"]["runs"] == 6
    timed = calls[2:]  # after one warm-up call each
    assert timed == ["a", "a", "b", "b"] * 3  # rounds alternate between the callables
    assert stats["a"]["fps"] == pytest.approx(1000 / stats["a"]["median_ms"])
    single = latency(lambda: None, runs=5, warmup=0)
    assert single["runs"] == 5 and single["p90_ms"] >= single["median_ms"]
