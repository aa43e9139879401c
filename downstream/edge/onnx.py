"""Deploying a model on a CPU: ONNX export, onnxruntime sessions, INT8 quantisation.

Static INT8 is onnxruntime's ``quantize_static`` (activations calibrated on a few training
images); dynamic INT8 (``quantize_dynamic``) is kept for the edge benchmark only: it turns
convolutions into ``ConvInteger``, which the CPU provider runs slower than fp32.

What makes static INT8 fast on onnxruntime's CPU provider (measured in ``bench/edge.py --int8-study``,
conclusions in docs/benchmarks.md):

- U8S8 (uint8 activations, int8 weights) is the x86 fast path (``vpmaddubsw`` on AVX2, VNNI where
  present); per-channel weights cost nothing at run time and keep accuracy.
- QDQ and QOperator formats run the same kernels: at graph optimisation level >= extended,
  onnxruntime fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv``, residual
  ``Add`` into ``QLinearAdd``, ReLU into the output quantisation. QDQ is the default because it is
  the portable format (other runtimes read it too).
- The speed-up comes from whole chains staying in int8: a ResNet-50 (encoder or U-Net) becomes
  one ``QuantizeLinear``, then only integer operators, then one ``DequantizeLinear``. An operator
  without an int8 kernel (hard-swish/hard-sigmoid, the ``ReduceMean`` of squeeze-excitation
  blocks) runs in fp32 between a dequantise and a quantise; in MobileNetV3 that happens 38 times,
  and its fp32 graph fuses hard-swish into the convolutions instead, so INT8 is slower there.
- ``reduce_range`` (7-bit weights) avoids ``vpmaddubsw`` saturation on CPUs without VNNI at a
  small cost in accuracy; it does not change speed.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from sonodistill.config import ConfigError

log = logging.getLogger(__name__)
# onnxruntime falls back to per-tensor scales for a weight whose channel axis it cannot use: expected
PER_TENSOR_FALLBACK = "is out-of-range for weight"


@dataclass
class QuantConfig:
    """Static INT8 quantisation settings (onnxruntime ``quantize_static``)."""

    format: Literal["qdq", "qoperator"] = "qdq"  # onnxruntime quantised graph format
    per_channel: bool = True  # one weight scale per output channel
    reduce_range: bool = False  # 7-bit weights: no u8s8 saturation on CPUs without VNNI
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"  # how activation ranges are calibrated
    calib_images: int = 16  # training images that calibrate the activation ranges
    op_types: list[str] = field(default_factory=list)  # operators to quantise; [] = all onnxruntime can
    exclude: list[str] = field(default_factory=list)  # node names kept in fp32

    def __post_init__(self) -> None:
        if self.calib_images < 1:
            raise ConfigError(f"edge.quant.calib_images: expected at least 1, got {self.calib_images}")


@contextmanager
def _stdout_silenced() -> Iterator[None]:
    """File descriptor 1 sent to a scratch file: an operator the exporter cannot handle makes it print
    the whole graph from C++, and a command's stdout is its JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def export(model: torch.nn.Module, path: str | Path, example: torch.Tensor | int, opset: int = 17) -> Path:
    """fp32 ONNX with a dynamic batch axis (TorchScript exporter: no onnxscript needed).

    ``example`` is an input tensor (any batch size) or, for an image model, its side in pixels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").float().eval()
    x = torch.randn(1, 3, example, example) if isinstance(example, int) else example[:1].to("cpu").float()
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad(), warnings.catch_warnings(), _stdout_silenced():
        # the dynamo exporter needs onnxscript (not a dependency); the TorchScript one is deprecated but exact
        warnings.simplefilter("ignore")
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
    level = logging.getLogger().level
    try:
        # symbolic shape inference is slow and changes nothing for conv nets; the optimisation step folds
        # BatchNorm into the convolutions, without which INT8 runs 3x slower (BN left in fp32 between Q/DQ)
        with quantizer_logs():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    finally:
        logging.getLogger().setLevel(level)
    return dst


class _ToOurLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        level = logging.DEBUG if PER_TENSOR_FALLBACK in message else record.levelno
        log.log(level, f"onnxruntime: {message}")


@contextmanager
def quantizer_logs() -> Iterator[None]:
    """onnxruntime's quantizer logs through the root logger (``logging.warning(...)``), which installs a
    bare ``WARNING:root:`` stderr handler on first use: its records go through this module's logger
    instead, at WARNING or above (the per-tensor fallback at DEBUG)."""
    root, handler = logging.getLogger(), _ToOurLog(logging.WARNING)
    root.addHandler(handler)  # a root with a handler: logging.warning() no longer calls basicConfig
    try:
        yield
    finally:
        root.removeHandler(handler)


def quantize_dynamic_int8(src: str | Path, dst: str | Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = _preprocessed(Path(src))
    with quantizer_logs():
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


def quantize_static(
    src: str | Path, dst: str | Path, calibration: Iterable[np.ndarray], cfg: QuantConfig | None = None
) -> Path:
    """INT8 weights and activations; ``calibration`` yields float32 model inputs (batch 1 or more)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
    )
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    cfg = cfg or QuantConfig()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": np.ascontiguousarray(x, dtype=np.float32)} for x in calibration)

        def get_next(self):
            return next(self.it, None)

    pre = _preprocessed(Path(src))
    with quantizer_logs(), _stdout_silenced():  # percentile/entropy calibration print to stdout
        ort_quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[cfg.calibration],
            op_types_to_quantize=list(cfg.op_types) or None,
            nodes_to_exclude=list(cfg.exclude) or None,
        )
    pre.unlink(missing_ok=True)
    return Path(dst)


def quantize_static_qdq(src: str | Path, dst: str | Path, calibration: Iterable[np.ndarray]) -> Path:
    """Static QDQ INT8 with the default settings (per-channel U8S8, MinMax calibration)."""
    return quantize_static(src, dst, calibration, QuantConfig())


# operators that keep a tensor integer (or only move it): the rest of an INT8 graph runs in fp32
INTEGER_OPS = {
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
    "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "NhwcMaxPool", "MaxPool",
    "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Resize", "Concat", "Shape", "Gather", "Slice",
    "Identity", "Pad", "Split",
}  # fmt: skip


def int8_graph(path: str | Path) -> dict:
    """What onnxruntime runs after fusing a quantised model (graph optimisation level 'extended', the
    portable one): integer convolutions (depthwise among them), and every operator left in fp32
    between a DequantizeLinear and a QuantizeLinear, the usual reason INT8 is not faster."""
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    convs = [n for n in graph.node if n.op_type == "QLinearConv"]
    depthwise = sum(1 for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute))
    return {
        "int8_convs": len(convs),
        "depthwise_int8_convs": depthwise,
        "dequantize": ops.get("DequantizeLinear", 0),
        "fp32_ops": {k: v for k, v in sorted(ops.items()) if k not in INTEGER_OPS},
    }


class OrtModel:
    """A CPU onnxruntime session called like a model on numpy input, with fixed intra-op threads.

    ``spinning=False`` (default): idle worker threads sleep instead of spin-waiting for the next
    call. Timed side by side with PyTorch, spinning onnxruntime threads keep the cores busy while
    PyTorch runs and slowed it by ~50 % on a 2-core machine; onnxruntime itself loses ~0.3 ms."""

    def __init__(self, path: str | Path, threads: int = 0, level: str = "all", spinning: bool = False):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = Path(path)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]

    @property
    def mb(self) -> float:
        return self.path.stat().st_size / 2**20
