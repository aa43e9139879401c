"""Deployment pieces of the edge benchmark: ONNX export, INT8 quantisation, side-by-side timing."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import timm
import torch

from downstream.edge.measure import fp32_mib, latency, side_by_side
from downstream.edge.onnx import OrtModel, export, quantize_dynamic_int8, quantize_static_qdq


def test_onnx_student_matches_torch_and_int8_is_smaller(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_100", num_classes=3).eval()
    fp32 = export(model, tmp_path / "s.onnx", 32)
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


@pytest.mark.parametrize("runs, rounds", [(10, 4), (1, 4), (5, 3), (20, 4)])
def test_side_by_side_times_exactly_runs_calls(runs, rounds):
    """``run.edge.runs`` calls, whatever the rounds (10 over 4 rounds timed 12, 1 over 4 timed 4)."""
    calls: list[str] = []
    stats = side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs, 0, rounds)
    assert stats["a"]["runs"] == stats["b"]["runs"] == runs and calls.count("a") == runs


def test_p90_is_numpys_percentile(monkeypatch):
    import downstream.edge.measure as measure

    ticks = iter(float(t) for k in range(1, 11) for t in (0, k / 1000))  # calls of 1..10 ms
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(ticks))
    stats = latency(lambda: None, runs=10, warmup=0)
    assert stats["p90_ms"] == pytest.approx(np.percentile(np.arange(1, 11), 90))  # 9.1, not the maximum
    assert stats["median_ms"] == pytest.approx(5.5)


def _batches(n: int, size: int, seed: int, masks: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, 4):
        b = {
            "image": torch.randint(0, 256, (4, 1, size, size), dtype=torch.uint8, generator=g),
            "index": torch.arange(i, i + 4),
        }
        if masks:
            b["mask"] = (torch.rand(4, 1, size, size, generator=g) > 0.7).to(torch.uint8)
        else:
            b["label"] = torch.randint(0, 3, (4,), generator=g)
        out.append(b)
    return out


def test_edge_column_scores_runtimes_and_caches_latency(tmp_path):
    from downstream.data.inputs import Inputs
    from downstream.edge.measure import gmacs
    from downstream.edge.onnx import QuantConfig
    from downstream.edge.profile import EdgeConfig, LatencyCache, profile
    from downstream.edge.score import classification_deployment

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_100", num_classes=3).eval()
    inputs = Inputs()
    prepare = lambda g: inputs(g, train=False)  # noqa: E731
    test, calib = _batches(8, 32, 0), _batches(4, 32, 1)
    dep = classification_deployment(test, calib, prepare)
    cfg = EdgeConfig(threads=1, runs=4, warmup=1, rounds=2, quant=QuantConfig(calib_images=4))
    cache = LatencyCache(tmp_path / "latency")
    x = torch.zeros(1, 3, 32, 32)
    first = profile(model, x, cfg, deployable=True, deployment=dep, cache=cache, workdir=tmp_path)
    assert first["threads"] == 1 and first["input"] == [1, 3, 32, 32] and not first["latency_cached"]
    assert first["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=1e-4)
    assert first["gmacs"] == pytest.approx(gmacs(model, x), rel=1e-3)
    onnx = first["onnx"]
    with torch.no_grad():  # onnxruntime fp32 scores exactly what PyTorch predicts
        right = sum(int((model(prepare(b["image"])).argmax(1) == b["label"]).sum()) for b in test)
    assert onnx["fp32_metric"] == pytest.approx(right / 8)
    assert onnx["int8_metric_change"] == pytest.approx(onnx["int8_metric"] - onnx["fp32_metric"])
    assert onnx["int8_speedup"] == pytest.approx(onnx["fp32_ms"] / onnx["int8_ms"], rel=1e-2)
    # MobileNetV3's hard-sigmoid (hard-swish, squeeze-excitation) has no int8 kernel: fp32 islands
    assert onnx["int8_graph"]["fp32_ops"].get("HardSigmoid", 0) > 0 and onnx["int8_graph"]["depthwise_int8_convs"] > 0
    again = profile(model, x, cfg, deployable=True, deployment=dep, cache=LatencyCache(tmp_path / "latency"))
    assert again["latency_cached"] and again["eager_ms"] == first["eager_ms"]
    assert again["onnx"]["int8_ms"] == onnx["int8_ms"]
    # a reference encoder of the same architecture (not deployable: PyTorch only) gets the same
    # PyTorch latency, not a second, noisier measurement of the same model
    same = profile(model, x, cfg, deployment=dep, cache=cache)
    assert "onnx" not in same and same["latency_cached"] and same["eager_ms"] == first["eager_ms"]
    # other threads are another measurement
    plain = profile(model, x, EdgeConfig(threads=2, runs=2, warmup=0, rounds=1), deployment=dep, cache=cache)
    assert "onnx" not in plain and not plain["latency_cached"] and plain["threads"] == 2


class _Antialiased(torch.nn.Module):
    """A classifier with an operator the ONNX exporter lacks (timm's ViTs resize their position
    embeddings this way at a size other than their own)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3 * 16 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bicubic", antialias=True)
        return self.head(x.flatten(1))


def test_a_model_onnx_cannot_export_keeps_its_pytorch_column_and_stdout_clean(tmp_path, capfd, caplog):
    from downstream.data.inputs import Inputs
    from downstream.edge.onnx import QuantConfig
    from downstream.edge.profile import EdgeConfig, profile
    from downstream.edge.score import classification_deployment
    from sonodistill.config import ConfigError

    inputs = Inputs()
    dep = classification_deployment(_batches(4, 32, 0), _batches(2, 32, 1), lambda g: inputs(g, train=False))
    cfg = EdgeConfig(threads=1, runs=2, warmup=0, rounds=1, onnx="always", quant=QuantConfig(calib_images=2))
    out = profile(_Antialiased().eval(), torch.zeros(1, 3, 32, 32), cfg, deployment=dep, workdir=tmp_path)
    assert "onnx" not in out and out["eager_ms"] > 0
    assert out["onnx_skipped"].startswith("UnsupportedOperatorError: Exporting the operator 'aten::_upsample_bicubic")
    assert "PyTorch latency only" in caplog.text
    assert capfd.readouterr().out == ""  # the exporter's graph dump does not reach a command's JSON stdout
    assert list(tmp_path.iterdir()) == []  # its scratch folder is gone
    for bad, msg in [(dict(runs=0), "edge.runs: expected an integer >= 1, got 0"),
                     (dict(threads=-3), "edge.threads: expected an integer >= 0, got -3")]:  # fmt: skip
        with pytest.raises(ConfigError, match=msg):
            EdgeConfig(**bad)
    with pytest.raises(ConfigError, match="edge.quant.calib_images: expected at least 1, got 0"):
        QuantConfig(calib_images=0)


def test_resnet_int8_graph_is_integer_end_to_end(tmp_path):
    """BatchNorm folded before quantising: a ResNet runs as one quantise, integer ops, one dequantise."""
    from downstream.edge.onnx import int8_graph

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=0).eval()
    fp32 = export(model, tmp_path / "r18.onnx", 32)
    calib = [np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(2)]
    g = int8_graph(quantize_static_qdq(fp32, tmp_path / "r18_int8.onnx", calib))
    assert g["fp32_ops"] == {} and g["dequantize"] == 1 and g["int8_convs"] == 20 and g["depthwise_int8_convs"] == 0


def test_segmentation_score_is_mean_per_image_dice():
    from downstream.edge.score import segmentation_deployment

    batches = _batches(4, 8, 0, masks=True)
    truth = batches[0]["mask"].numpy()[:, 0] > 0
    pred = np.zeros_like(truth)
    pred[:, :4] = True  # left half predicted positive
    logits = np.where(pred, 3.0, -3.0)[:, None].astype(np.float32)
    dep = segmentation_deployment(batches, batches, lambda g: g.float())
    by_hand = [2 * (p & t).sum() / (p.sum() + t.sum()) for p, t in zip(pred, truth)]
    scores = dep.score({"a": lambda x: logits, "none": lambda x: np.full_like(logits, -1.0)})
    assert scores["a"] == pytest.approx(float(np.mean(by_hand)))
    assert scores["none"] == pytest.approx(float(np.mean([float(not t.any()) for t in truth])))  # empty convention
    assert dep.metric == "dice" and len(list(dep.calibration(3))) == 3


def test_pareto_front_and_int8_note():
    from downstream.edge_report import int8_note, pareto_front

    pts = [(10.0, 0.5), (2.0, 0.4), (5.0, 0.6), (3.0, 0.3), (20.0, 0.6), (1.0, 0.1)]
    # lower latency and higher metric dominate: (3, .3) loses to (2, .4); (20, .6) ties (5, .6) but is slower
    assert pareto_front(pts) == [5, 1, 2]
    graph = {"int8_convs": 53, "depthwise_int8_convs": 11, "dequantize": 38, "fp32_ops": {"HardSigmoid": 28}}
    note = int8_note([graph], 0.78)
    assert "38 dequantise/quantise round trips" in note and "HardSigmoid x28" in note and "11 of 53" in note
    assert int8_note([graph], 1.4) == "" and int8_note([], 0.5) == ""


def test_quantisation_logs_through_the_project_not_a_bare_root_handler(tmp_path):
    """onnxruntime's quantizer calls logging.warning()/info() on the root logger, which would install a
    bare ``WARNING:root:`` stderr handler for the rest of a sweep: it must stay unconfigured."""
    import subprocess
    import sys

    code = (
        "import logging, numpy as np, timm, sys\n"
        "from pathlib import Path\n"
        "from downstream.edge.onnx import export, quantize_static_qdq, quantize_dynamic_int8\n"
        f"t = Path({str(tmp_path)!r})\n"
        "f = export(timm.create_model('resnet18', num_classes=3).eval(), t / 's.onnx', 32)\n"
        "calib = [np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(2)]\n"
        "quantize_static_qdq(f, t / 'q.onnx', calib)\n"
        "quantize_dynamic_int8(f, t / 'd.onnx')\n"
        "print(len(logging.getLogger().handlers))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "0" and ":root:" not in proc.stderr, proc.stderr[-2000:]


def test_parts_racing_on_one_latency_report_the_winners_measurement(tmp_path, monkeypatch):
    """Sweep parts share cache/latency/: the part that loses the race to create an architecture's
    file reports the winner's latency, so one architecture has one latency in the tables."""
    prof = importlib.import_module("downstream.edge.profile")  # the package exports a profile() too

    a, b = prof.LatencyCache(tmp_path), prof.LatencyCache(tmp_path)
    assert b.get("k") is None
    assert a.put("k", {"eager": {"median_ms": 1.0}}) == {"eager": {"median_ms": 1.0}}
    assert b.put("k", {"eager": {"median_ms": 2.0}}) == {"eager": {"median_ms": 1.0}}
    assert b.get("k") == {"eager": {"median_ms": 1.0}}

    model = torch.nn.Conv2d(3, 2, 3).eval()
    x = torch.zeros(1, 3, 8, 8)
    cfg = prof.EdgeConfig(threads=1, runs=2, warmup=0, rounds=1)
    key = prof.signature(prof._cpu_copy(model), tuple(x.shape), cfg, False)
    measured = prof.side_by_side

    def raced(*args, **kw):  # another part finishes the same architecture while this one measures
        (tmp_path / f"{key}.json").write_text(json.dumps({"eager": {"median_ms": 7.0, "p90_ms": 9.0}}))
        return measured(*args, **kw)

    monkeypatch.setattr(prof, "side_by_side", raced)
    out = prof.profile(model, x, cfg, cache=prof.LatencyCache(tmp_path))
    assert out["eager_ms"] == 7.0 and out["eager_p90_ms"] == 9.0


def test_the_edge_copy_runs_in_float32_without_accelerates_autocast(monkeypatch):
    """A model trained under mixed precision keeps accelerate's autocast wrapper on its forward:
    the edge column times and exports the model as deployed (float32), and the caller's model keeps
    its wrapper."""
    from types import MethodType

    from accelerate.utils import convert_outputs_to_fp32

    prof = importlib.import_module("downstream.edge.profile")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    x = torch.randn(1, 3, 8, 8)
    plain = model(x)
    # what accelerate.prepare does to a model under mixed_precision=bf16
    model._original_forward = model.forward
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    model.forward = MethodType(autocast(model.forward.__func__), model)
    model.forward = MethodType(convert_outputs_to_fp32(model.forward.__func__), model)
    assert not torch.equal(model(x), plain)  # the wrapper rounds through bf16
    copy = prof._cpu_copy(model)
    assert copy is not model and torch.equal(copy(x), plain)
    assert "_original_forward" in model.__dict__
