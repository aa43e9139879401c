"""Model size and speed: parameters, GMACs, fp32 MB, CPU batch-size-1 latency with fixed threads.

Conventions (stated in every table that uses them):
- GMACs = ``torch.utils.flop_counter`` FLOPs / 2. The counter counts matmul/conv/attention
  FLOPs (2 per multiply-add); the papers' "GFLOPs" are multiply-accumulates (paper 004's
  ResNet-18 1.824 G and VGG-16 15.466 G, paper 001's 5.88 G are MAC counts), so GMACs is the
  comparable figure. Normalisation and activations are not counted, which explains the few %
  by which ours sit below counters that do count them.
- MB = MiB of the fp32 state dict (parameters and buffers); paper 000's 5.9 MB MobileNetV3-Small
  (1.52 M parameters with a 3-class head: 5.85 MiB) is on this scale.
- Latency: median wall time of ``runs`` forward passes at batch size 1 after ``warmup`` passes,
  in inference mode; FPS = 1000 / median ms.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fp32_mib(model: torch.nn.Module) -> float:
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return n * 4 / 2**20


def gmacs(model: torch.nn.Module, example: torch.Tensor) -> float:
    """Multiply-accumulates (G) of one forward pass on ``example`` (works on the meta device)."""
    was = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example)
    model.train(was)
    return counter.get_total_flops() / 2e9


@contextlib.contextmanager
def fixed_threads(threads: int) -> Iterator[int]:
    """torch's intra-op threads set to ``threads`` (0: leave as is) for the block; yields the count."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def latency(fn: Callable[[], Any], runs: int = 50, warmup: int = 10) -> dict[str, float]:
    """Median / p90 milliseconds of ``fn()`` and FPS (1000 / median)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return _summary(times)


def _summary(times: list[float]) -> dict[str, float]:
    """Median and 90th percentile (linear interpolation, numpy's default) of call times in ms."""
    med = statistics.median(times)
    return {"median_ms": med, "p90_ms": float(np.percentile(times, 90)), "fps": 1000.0 / med, "runs": len(times)}


@torch.inference_mode()
def side_by_side(
    fns: dict[str, Callable[[], Any]], runs: int = 50, warmup: int = 10, rounds: int = 5
) -> dict[str, dict[str, float]]:
    """:func:`latency` of several callables measured in interleaved rounds.

    On a shared machine the load drifts; timing model A for a while and then model B would
    fold that drift into the ratio. ``runs`` calls of each (at least one), spread over at most
    ``rounds`` rounds that alternate between the callables, expose every one of them to the same
    conditions.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    runs = max(runs, 1)
    rounds = min(max(rounds, 1), runs)
    for r in range(rounds):
        for name, fn in fns.items():
            for _ in range(runs // rounds + (r < runs % rounds)):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000)
    return {name: _summary(t) for name, t in times.items()}


def models_side_by_side(
    models: dict[str, torch.nn.Module],
    example: torch.Tensor | dict[str, torch.Tensor],
    runs: int = 50,
    warmup: int = 10,
    rounds: int = 5,
) -> dict[str, dict[str, float]]:
    """CPU batch-size-1 latency of eval-mode models (one shared example, or one per model)."""
    fns = {}
    for name, m in models.items():
        m.eval()
        x = example[name] if isinstance(example, dict) else example
        fns[name] = lambda m=m, x=x: m(x)
    return side_by_side(fns, runs, warmup, rounds)
