"""Edge deployment measurements, shared by the sweep's edge column, the KD recipes and ``bench/edge.py``.

- :mod:`downstream.edge.measure`: parameters, GMACs, fp32 MB, CPU batch-1 latency (interleaved rounds, fixed threads);
- :mod:`downstream.edge.onnx`: ONNX export, onnxruntime sessions, dynamic and static INT8 quantisation;
- :mod:`downstream.edge.profile`: the edge column of one sweep cell (:class:`EdgeConfig`, :func:`profile`);
- :mod:`downstream.edge.score`: a runtime's metric on a test split (Dice or accuracy).
"""

from downstream.edge.measure import (
    fixed_threads,
    fp32_mib,
    gmacs,
    latency,
    models_side_by_side,
    num_params,
    side_by_side,
)
from downstream.edge.onnx import OrtModel, QuantConfig, export, quantize_dynamic_int8, quantize_static
from downstream.edge.profile import Deployment, EdgeConfig, LatencyCache, profile

__all__ = [
    "Deployment",
    "EdgeConfig",
    "LatencyCache",
    "OrtModel",
    "QuantConfig",
    "export",
    "fixed_threads",
    "fp32_mib",
    "gmacs",
    "latency",
    "models_side_by_side",
    "num_params",
    "profile",
    "quantize_dynamic_int8",
    "quantize_static",
    "side_by_side",
]
