"""AdamW step on CPU: torch's per-tensor default vs foreach vs the fused kernel, side by side.

    .venv/bin/python bench/optimizer.py [--model resnet50] [--steps 20] [--repeats 5]

``sonodistill.optim.build_optimizer`` asks for the fused kernel on every device; on CPU torch
would otherwise take its per-tensor loop. Each variant steps the same model's parameters from the
same state with the same gradients; the time is the median of ``--repeats`` runs of ``--steps``
steps, alternating variants. Also printed: the largest parameter difference after those steps
against the per-tensor result (the kernels add in another order, nothing else). The last line is
JSON with the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import timm
import torch

from sonodistill.arg_checks import at_least
from sonodistill.errors import UserError


def step_time(params: list[torch.Tensor], grads: list[torch.Tensor], steps: int, **kind) -> tuple[float, list]:
    """Seconds per step of AdamW(**kind) over copies of ``params``, and the parameters it ends with."""
    ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, g in zip(ps, grads):
        p.grad = g
    opt = torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.05, **kind)
    opt.step()  # state allocated outside the timing
    t = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t) / steps, [p.detach() for p in ps]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    at_least(a, {"steps": 1, "repeats": 1})
    torch.manual_seed(0)
    if not timm.is_model(a.model):
        raise UserError(f"--model {a.model}: not a timm model (see timm.list_models())")
    params = [p for p in timm.create_model(a.model).parameters()]
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    kinds = {"per-tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    ends: dict[str, list] = {}
    for _ in range(a.repeats):
        for name, kind in kinds.items():
            t, ends[name] = step_time(params, grads, a.steps, **kind)
            times[name].append(t)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    n = sum(p.numel() for p in params)
    print(f"{a.model}: {n / 1e6:.1f} M parameters, {torch.get_num_threads()} threads, AdamW ms per step")
    out = {"model": a.model, "params_m": round(n / 1e6, 2), "threads": torch.get_num_threads()}
    for name in kinds:
        diff = max(float((x - y).abs().max()) for x, y in zip(ends[name], ends["per-tensor"]))
        ratio = ms["per-tensor"] / ms[name]
        print(f"  {name:<11} {ms[name]:7.1f} ms   {ratio:4.2f}x the per-tensor step   max |diff| {diff:.1e}")
        out[f"{name}_ms"], out[f"{name}_speedup"], out[f"{name}_max_diff"] = round(ms[name], 2), round(ratio, 2), diff
    print(json.dumps(out))


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
