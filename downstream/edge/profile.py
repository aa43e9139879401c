"""The edge column of a sweep cell: size, compute and CPU latency of the model the cell evaluates.

Every cell records parameters, GMACs at its input size and CPU batch-size-1 latency of eager
PyTorch fp32. Deployable models (KD students, distilled encoders; ``edge.onnx``) are also
exported to ONNX and timed in onnxruntime fp32 and static INT8, and both runtimes are scored on
the cell's test split, so the table shows what INT8 costs in the cell's own metric.

Latencies are medians of ``runs`` calls measured in interleaved rounds (eager, onnxruntime fp32,
INT8 take turns, so load drift on a shared machine hits all three alike), with torch and
onnxruntime both fixed to ``threads`` intra-op threads (recorded). Latency depends on the
architecture, the input shape and the threads, not on the weights, so with ``cache`` a
measurement is reused by every later cell of the same architecture and size (the key is a hash
of the module tree, the input shape, the threads and the quantisation settings); the INT8
*metric* is always measured on the cell's own weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from downstream.edge.measure import fixed_threads, gmacs, num_params, side_by_side
from downstream.edge.onnx import OrtModel, QuantConfig, export, int8_graph, quantize_static
from sonodistill.atomic import json_text, write_once
from sonodistill.config import ConfigError, to_dict
from sonodistill.errors import UserError

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class EdgeConfig:
    """What the edge column measures (``run.edge.*`` in a sweep)."""

    enabled: bool = True  # measure the edge column (params, GMACs, CPU latency, ONNX / INT8)
    threads: int = 2  # torch and onnxruntime intra-op threads while timing (recorded in every cell)
    runs: int = 20  # timed batch-size-1 calls per runtime (median reported)
    warmup: int = 3  # untimed calls before timing
    rounds: int = 4  # interleaved rounds the runs are spread over
    onnx: Literal["auto", "always", "never"] = "auto"  # auto: KD students and distilled (folder/hf-hub) encoders
    quant: QuantConfig = field(default_factory=QuantConfig)
    cache: bool = True  # reuse a latency measured for the same architecture, input shape and threads

    def __post_init__(self) -> None:
        for key, least in (("threads", 0), ("runs", 1), ("warmup", 0), ("rounds", 1)):
            if (value := getattr(self, key)) < least:
                raise ConfigError(f"edge.{key}: expected an integer >= {least}, got {value}")


@dataclass
class Deployment:
    """How to score a runtime on the cell's test split and where its calibration inputs come from."""

    metric: str  # the cell's headline metric: "dice" or "accuracy"
    score: Callable[[dict[str, Predictor]], dict[str, float]]  # numpy predictors -> their metric on the test split
    calibration: Callable[[int], Iterable[np.ndarray]]  # n -> normalised training inputs


class LatencyCache:
    """Latencies by architecture signature, one JSON file per signature in ``folder`` (``None``: in
    memory only). Each file is created once (:func:`~sonodistill.atomic.write_once`): processes sharing
    the folder (sweep parts) never overwrite each other's measurements."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else None
        self.data: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.folder / f"{key}.json" if self.folder is not None else None
        if key not in self.data and path is not None and path.is_file():
            try:
                self.data[key] = json.loads(path.read_text())
            except ValueError:
                return None  # not a measurement: measure again
        return self.data.get(key)

    def put(self, key: str, value: dict[str, Any]) -> dict[str, Any]:
        """Keep ``value`` unless another process sharing the folder kept its own first: the value
        kept (the winner's), so every part reports one latency per architecture."""
        self.data[key] = value
        if self.folder is not None and not write_once(self.folder / f"{key}.json", json_text(value)):
            self.data.pop(key)
            value = self.get(key) or value
        return value


def signature(model: torch.nn.Module, shape: tuple[int, ...], cfg: EdgeConfig, onnx: bool) -> str:
    """Hash of what latency depends on: the module tree, the input shape, threads, the timing
    protocol (calls, warm-up, rounds), runtimes."""
    parts = [repr(model), str(tuple(shape)), str(cfg.threads), str(cfg.runs), str(cfg.warmup), str(cfg.rounds)]
    parts.append(str(onnx))
    if onnx:
        parts.append(json.dumps(to_dict(cfg.quant), sort_keys=True))
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model as deployed: float32 on the CPU, without accelerate's mixed-precision forward
    (a copy: the caller's model keeps its own)."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    wrapped = "_original_forward" in model.__dict__  # accelerate's autocast wrapper around forward
    m = model if on_cpu and not wrapped else copy.deepcopy(model).to("cpu")
    if wrapped:
        from accelerate.utils import extract_model_from_parallel

        m = extract_model_from_parallel(m, keep_fp32_wrapper=False)
    return m.float().eval().to(memory_format=torch.contiguous_format)


def profile(
    model: torch.nn.Module,
    example: torch.Tensor,
    cfg: EdgeConfig,
    *,
    deployable: bool = False,
    deployment: Deployment | None = None,
    cache: LatencyCache | None = None,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """The edge column for ``model`` at the input shape of ``example`` (batch 1 is timed)."""
    t0 = time.perf_counter()
    model = _cpu_copy(model)
    x = example[:1].to("cpu").float()
    with_onnx = deployment is not None and (cfg.onnx == "always" or (cfg.onnx == "auto" and deployable))
    out: dict[str, Any] = {
        "params_m": round(num_params(model) / 1e6, 6),
        "input": list(x.shape),
        "threads": cfg.threads,
    }
    with fixed_threads(cfg.threads) as threads:
        out["threads"] = threads
        out["gmacs"] = round(gmacs(model, x), 6)
        use = cache is not None and cfg.cache
        # The PyTorch latency of an architecture is one measurement, whether or not a cell also
        # deploys it (a random-init and a distilled ResNet-50 U-Net are the same model to time).
        plain_key = signature(model, tuple(x.shape), cfg, False)
        plain = cache.get(plain_key) if use else None
        key = signature(model, tuple(x.shape), cfg, with_onnx)
        cached = (cache.get(key) if with_onnx else plain) if use else None
        lat = None
        if with_onnx:
            try:
                with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                    lat, out["onnx"] = _deploy(model, x, cfg, deployment, Path(tmp), threads, cached)
            except UserError:
                raise
            except Exception as exc:  # an operator the exporter or onnxruntime lacks: the run's results stay
                reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
                log.warning(f"edge: no ONNX / INT8 column for this model, PyTorch latency only ({reason})")
                out["onnx_skipped"] = reason
                with_onnx, key, cached = False, plain_key, plain
        if lat is None:
            lat = cached or side_by_side({"eager": lambda: model(x)}, cfg.runs, cfg.warmup, cfg.rounds)
        if cached is None and use:
            lat = {**lat, **cache.put(key, {k: v for k, v in lat.items() if k in ("eager", "ort_fp32", "ort_int8")})}
            if with_onnx:
                out["onnx"].update(_ort_latencies(lat))
        if plain is None and use and with_onnx:
            plain = cache.put(plain_key, {"eager": lat["eager"]})
    eager = (plain or lat)["eager"]
    out["eager_ms"] = round(eager["median_ms"], 3)
    out["eager_p90_ms"] = round(eager["p90_ms"], 3)
    out["latency_cached"] = cached is not None
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _ort_latencies(lat: dict[str, Any]) -> dict[str, float]:
    f, q = lat["ort_fp32"]["median_ms"], lat["ort_int8"]["median_ms"]
    return {
        "fp32_ms": round(f, 3),
        "int8_ms": round(q, 3),
        "int8_speedup": round(f / q, 3),  # vs onnxruntime fp32, not vs eager PyTorch
        "fp32_vs_eager": round(lat["eager"]["median_ms"] / f, 3),
    }


def _deploy(model, x, cfg: EdgeConfig, dep: Deployment, work: Path, threads: int, cached) -> tuple[dict, dict]:
    """Export, quantise, time (unless cached) and score onnxruntime fp32 and static INT8."""
    fp32_path = export(model, work / "model_fp32.onnx", x)
    calib = list(dep.calibration(cfg.quant.calib_images))
    if not calib:
        calib = [x.numpy()]
    int8_path = quantize_static(fp32_path, work / "model_int8.onnx", calib, cfg.quant)
    fp32, int8 = OrtModel(fp32_path, threads), OrtModel(int8_path, threads)
    xn = x.numpy()
    if cached is not None and "ort_int8" in cached:
        lat = cached
    else:
        lat = side_by_side(
            {"eager": lambda: model(x), "ort_fp32": lambda: fp32(xn), "ort_int8": lambda: int8(xn)},
            cfg.runs,
            cfg.warmup,
            cfg.rounds,
        )
    scores = dep.score({"fp32": fp32, "int8": int8})  # one pass over the test split for both runtimes
    m_fp32, m_int8 = scores["fp32"], scores["int8"]
    return lat, {
        **_ort_latencies(lat),
        "metric": dep.metric,
        "fp32_metric": m_fp32,
        "int8_metric": m_int8,
        "int8_metric_change": m_int8 - m_fp32,
        "fp32_mb": round(fp32.mb, 3),
        "int8_mb": round(int8.mb, 3),
        "int8_graph": int8_graph(int8_path),
        "quant": to_dict(cfg.quant),
    }
