"""Deploying a student: ONNX export, onnxruntime sessions, INT8 quantisation (dynamic and static QDQ).

onnxruntime's dynamic quantisation turns convolutions into ConvInteger, which its CPU provider
runs slowly; for conv nets static quantisation (QDQ, activations calibrated on a few images) is
the fast INT8 path. Both are offered so the edge benchmark can report each.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch


def export(model: torch.nn.Module, path: str | Path, size: int, opset: int = 17) -> Path:
    """fp32 ONNX with a dynamic batch axis (TorchScript exporter: no onnxscript needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").float().eval()
    x = torch.randn(1, 3, size, size)
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # the dynamo exporter needs onnxscript (not a dependency); the TorchScript one is deprecated but exact
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    tmp.replace(path)
    return path


def _preprocessed(src: Path) -> Path:
    """onnxruntime's recommended pre-quantisation pass (shape inference + graph optimisation)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = src.with_name(src.stem + "_pre.onnx")
    quant_pre_process(str(src), str(dst))
    return dst


def quantize_dynamic_int8(src: str | Path, dst: str | Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = _preprocessed(Path(src))
    quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


def quantize_static_qdq(src: str | Path, dst: str | Path, calibration: Iterable[np.ndarray]) -> Path:
    """INT8 weights and activations (QDQ format); ``calibration`` yields float32 [1, 3, S, S] inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": np.ascontiguousarray(x, dtype=np.float32)} for x in calibration)

        def get_next(self):
            return next(self.it, None)

    pre = _preprocessed(Path(src))
    quantize_static(
        str(pre),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return Path(dst)


class OrtModel:
    """A CPU onnxruntime session called like a model on numpy input."""

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = Path(path)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": x})[0]

    @property
    def mb(self) -> float:
        return self.path.stat().st_size / 2**20
