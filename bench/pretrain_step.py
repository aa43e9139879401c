"""Whole distillation step vs the model-only step on ready tensors, side by side in one run; or,
with ``--profile``, where one step's time goes, phase by phase, with a ``torch.profiler`` trace.

    .venv/bin/python bench/pretrain_step.py [--shards DIR] [--teacher DIR] [--student resnet50]
        [--size 128] [--batch 16] [--steps 4] [--rounds 7] [--workers 2] [--preset us]
    .venv/bin/python bench/pretrain_step.py --profile --config tiny  [--out DIR] [--steps 6]
    .venv/bin/python bench/pretrain_step.py --profile --config paper [--out DIR] [--batch 4]

``--profile``: the trainer's step split into its phases — load (waiting for the loader), host to
device, augment (+ teacher normalisation), teacher forward, student forward/backward (with the
loss), optimiser (clipping, AdamW, zero_grad) — each timed on its own (the device is synchronised
at phase boundaries), with each phase's share of the step; a Chrome trace of the profiled steps
(``torch.profiler``, phases as named ranges) is written to ``--out``. ``--config tiny`` is
``pretrain/configs/tiny.yaml`` (tiny DINOv3, ResNet-50, 64 px); ``--config paper`` is the paper
recipe (ViT-B/16 teacher of the real size, random weights from ``python -m pretrain.teacher
init-tiny --preset vitb16``; ResNet-50, head 4096, 256 px, ``us`` augmentations) at a CPU batch.

Whole step: ``ShardLoader`` (decode in worker processes) -> device -> batched augmentation ->
teacher normalisation -> mixup -> frozen teacher -> student + head -> token MSE -> backward ->
grad clipping -> AdamW, exactly the trainer's building blocks (``pretrain.step``).
Model-only: the same teacher, student, loss and optimiser on views prepared in advance (no
loader, no augmentation). Same models, batch, threads. Blocks of both alternate for ``--rounds``
rounds (median of the per-round ratios) so a busy machine affects both alike. Without ``--shards`` /
``--teacher`` a synthetic corpus is sharded at ``--size`` and a tiny DINOv3 is written first.
The last line is JSON; target ratio >= 0.85.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain.augment import PretrainAugmentConfig, build_augment
from pretrain.loss import MixupConfig
from pretrain.step import distill_loss, make_view
from pretrain.student import build_student
from shards.stream import ShardLoader
from shards.synth.shard_set import write_shard_set
from sonodistill.arg_checks import at_least
from sonodistill.dinov3 import DINOv3, init_tiny

# --config presets of the profile: (student, head hidden, size, teacher preset, batch, preset)
CONFIGS = {
    "tiny": dict(student="resnet50", head=512, size=64, teacher="tiny", batch=8, preset="us"),
    "paper": dict(student="resnet50", head=4096, size=256, teacher="vitb16", batch=4, preset="us"),
}
PHASES = ("load", "host_to_device", "augment", "teacher_forward", "student_forward_backward", "optimizer")


def parse_args() -> argparse.Namespace:
    """The command line (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", help="shard folder (default: build a synthetic one)")
    ap.add_argument("--teacher", help="teacher id/folder (default: a tiny random DINOv3)")
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="optimiser steps per timed block")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2, help="loader decode workers")
    ap.add_argument("--preset", default="us")
    ap.add_argument("--corpus-size", type=int, default=400)
    ap.add_argument("--profile", action="store_true", help="phase table and torch.profiler trace instead")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny", help="--profile: tiny or paper")
    ap.add_argument("--out", default="runs/bench_profile", help="--profile: folder for trace.json and phases.json")
    args = ap.parse_args()
    at_least(args, {"size": 32, "batch": 1, "steps": 1, "rounds": 1, "workers": 0, "corpus_size": 1})
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        if args.profile:
            profile(args, Path(tmp))
        else:
            run(args, Path(tmp))


@dataclass
class Parts:
    """What one distillation step is made of: the trainer's building blocks on one device."""

    device: torch.device
    shards: Path
    teacher_path: str
    teacher: DINOv3
    student: torch.nn.Module
    channels_last: bool
    augment: torch.nn.Module
    opt: torch.optim.Optimizer
    mixup: MixupConfig
    autocast: torch.autocast


def build_parts(
    args: argparse.Namespace, tmp: Path, student: str, head: int | None, size: int, teacher: str, preset: str
) -> Parts:
    """Shards (``--shards`` or synthetic), teacher (``--teacher`` or a random ``teacher`` preset), student
    (``head`` hidden units; ``None``: 4096 on a GPU, 512 on the CPU), augmentation, AdamW, mixup, autocast."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shards = Path(args.shards) if args.shards else write_shard_set(tmp, args.corpus_size, size, samples_per_shard=64)
    teacher_path = args.teacher or str(init_tiny(tmp / "teacher", seed=0, preset=teacher, image_size=size))
    t = DINOv3.from_pretrained(teacher_path, dtype=torch.bfloat16 if device.type == "cuda" else None).to(device)
    torch.manual_seed(0)
    head = head if head is not None else 4096 if device.type == "cuda" else 512
    s = build_student(student, t.embed_dim, head, size, t.patch_size).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        s = s.to(memory_format=torch.channels_last)
    s.train()
    return Parts(
        device=device,
        shards=shards,
        teacher_path=teacher_path,
        teacher=t,
        student=s,
        channels_last=channels_last,
        augment=build_augment(PretrainAugmentConfig(preset=preset), size).to(device),
        opt=torch.optim.AdamW(s.parameters(), lr=1e-4, weight_decay=0.05),
        mixup=MixupConfig(prob=1.0),
        autocast=torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
    )


def optimiser_step(p: Parts) -> None:
    """Clip the gradients, AdamW step, zero them: the trainer's optimiser phase."""
    torch.nn.utils.clip_grad_norm_(p.student.parameters(), 3.0)
    p.opt.step()
    p.opt.zero_grad(set_to_none=True)


def alternate_blocks(args: argparse.Namespace, p: Parts, batches) -> tuple[list[float], list[float]]:
    """Images/s of whole-step blocks and model-only blocks, alternating for ``--rounds`` rounds (after a warm-up)."""

    def optimise(view: torch.Tensor) -> torch.Tensor:
        with p.autocast:
            loss = distill_loss(p.teacher, p.student, view, p.mixup, p.channels_last)
        loss.backward()
        optimiser_step(p)
        return loss.detach()

    # Ready tensors for the model-only step: augmented views of real batches, prepared up front.
    ready = [make_view(next(batches)["image"].to(p.device), p.augment, p.teacher) for _ in range(4)]

    def whole_block() -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            images = next(batches)["image"].to(p.device, non_blocking=True)
            last = optimise(make_view(images, p.augment, p.teacher))
        last.item()  # one sync per block, as the trainer syncs once per log interval
        return args.steps * args.batch / (time.perf_counter() - t0)

    def model_block() -> float:
        t0 = time.perf_counter()
        for i in range(args.steps):
            last = optimise(ready[i % len(ready)])
        last.item()
        return args.steps * args.batch / (time.perf_counter() - t0)

    model_block(), whole_block()  # warm-up: allocator, workers started, first decode
    whole, model = [], []
    for _ in range(args.rounds):
        whole.append(whole_block())
        model.append(model_block())
    return whole, model


def run(args: argparse.Namespace, tmp: Path) -> None:
    """Whole step against model-only step, side by side; a table and one JSON line."""
    p = build_parts(args, tmp, args.student, None, args.size, "tiny", args.preset)
    loader = ShardLoader(
        str(p.shards),
        batch_size=args.batch,
        mode="loop",
        seed=0,
        shuffle_buffer=256,
        num_workers=args.workers,
        pin_memory=p.device.type == "cuda",
    )
    whole, model = alternate_blocks(args, p, iter(loader))
    w, m = statistics.median(whole), statistics.median(model)
    # Adjacent blocks share the machine's load: the median of per-round ratios is the robust figure.
    ratio = statistics.median(a / b for a, b in zip(whole, model))
    print(
        f"{args.student} <- {Path(p.teacher_path).name} (embed {p.teacher.embed_dim}), {args.size}px, "
        f"batch {args.batch}, {p.device.type}, torch threads {torch.get_num_threads()}, "
        f"loader workers {args.workers}, preset {args.preset}"
    )
    print(f"{'step':<34}{'images/s (median)':>18}   per round")
    print(f"{'whole (loader+aug+models+optim)':<34}{w:>18.1f}   {', '.join(f'{v:.1f}' for v in whole)}")
    print(f"{'model-only (ready tensors)':<34}{m:>18.1f}   {', '.join(f'{v:.1f}' for v in model)}")
    print(
        f"ratio whole/model-only (median of per-round ratios): {ratio:.3f} (target >= 0.85); "
        f"skipped samples: {loader.skipped}"
    )
    print(
        json.dumps(
            {
                "bench": "pretrain_step",
                "device": p.device.type,
                "student": args.student,
                "size": args.size,
                "batch": args.batch,
                "workers": args.workers,
                "threads": torch.get_num_threads(),
                "preset": args.preset,
                "whole_img_s": round(w, 2),
                "model_only_img_s": round(m, 2),
                "ratio": round(ratio, 3),
                "target": 0.85,
            }
        )
    )


class _Timed:
    """Wraps the teacher or the student: times its forward into a phase (device-synchronised)."""

    def __init__(self, module, phases: dict[str, float], name: str, sync) -> None:
        self._module, self._phases, self._name, self._sync = module, phases, name, sync

    def __call__(self, *args, **kwargs):
        sync = self._sync
        sync()
        t0 = time.perf_counter()
        with torch.profiler.record_function(self._name):
            out = self._module(*args, **kwargs)
        sync()
        self._phases[self._name] += time.perf_counter() - t0
        return out

    def __getattr__(self, item):
        return getattr(self._module, item)


def phased_step(p: Parts, batches, phases: dict[str, float]):
    """One trainer step whose every phase adds its (device-synchronised) seconds to ``phases``."""
    sync = torch.cuda.synchronize if p.device.type == "cuda" else (lambda: None)
    t_teacher = _Timed(p.teacher, phases, "teacher_forward", sync)
    t_student = _Timed(p.student, phases, "student_forward_backward", sync)

    def phase(name: str, fn):
        sync()
        t0 = time.perf_counter()
        with torch.profiler.record_function(name):
            out = fn()
        sync()
        phases[name] += time.perf_counter() - t0
        return out

    def step() -> None:
        cpu_images = phase("load", lambda: next(batches)["image"])
        images = phase("host_to_device", lambda: cpu_images.to(p.device, non_blocking=True))
        view = phase("augment", lambda: make_view(images, p.augment, p.teacher))
        with p.autocast:
            loss = distill_loss(t_teacher, t_student, view, p.mixup, p.channels_last)  # times both forwards
        phase("student_forward_backward", loss.backward)
        phase("optimizer", lambda: optimiser_step(p))

    return step


def time_phases(steps: int, step, phases: dict[str, float]) -> tuple[dict[str, float], float]:
    """Seconds per phase over ``steps`` timed steps after two warm-up steps (no profiler); and the wall time."""
    for _ in range(2):  # warm-up: workers, allocator, first decode
        step()
    for k in phases:
        phases[k] = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):  # the phase table: timed steps, no profiler overhead
        step()
    return dict(phases), time.perf_counter() - t0


def write_trace(step, device: torch.device, path: Path) -> None:
    """A ``torch.profiler`` Chrome trace of two more steps."""
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
    )
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(2):
            with torch.profiler.record_function("step"):
                step()
    prof.export_chrome_trace(str(path))


def profile(args: argparse.Namespace, tmp: Path) -> None:
    """The trainer's step, phase by phase (see the module doc); a table, a trace, one JSON line."""
    c = CONFIGS[args.config]
    batch = args.batch if "--batch" in sys.argv else c["batch"]
    p = build_parts(args, tmp, c["student"], c["head"], c["size"], c["teacher"], c["preset"])
    loader = ShardLoader(
        str(p.shards), batch_size=batch, mode="loop", seed=0, shuffle_buffer=256, num_workers=args.workers
    )
    phases = dict.fromkeys(PHASES, 0.0)
    step = phased_step(p, iter(loader), phases)
    phases, wall = time_phases(args.steps, step, phases)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_trace(step, p.device, out / "trace.json")
    total = sum(phases.values())
    rows = {k: {"ms_per_step": 1e3 * v / args.steps, "share": v / total} for k, v in phases.items()}
    print(
        f"{args.config}: {c['student']} <- {Path(p.teacher_path).name} ({c['teacher']}, embed {p.teacher.embed_dim}), "
        f"{c['size']} px, batch {batch}, {p.device.type}, torch threads {torch.get_num_threads()}, "
        f"loader workers {args.workers}, preset {c['preset']}, {args.steps} timed steps"
    )
    print(f"{'phase':<28}{'ms/step':>12}{'share':>9}")
    for k, r in rows.items():
        print(f"{k:<28}{r['ms_per_step']:>12.1f}{100 * r['share']:>8.1f}%")
    print(f"{'step (sum of phases)':<28}{1e3 * total / args.steps:>12.1f}   {batch * args.steps / wall:.2f} img/s")
    print(f"trace: {out / 'trace.json'} (chrome://tracing or https://ui.perfetto.dev)")
    result = {
        "bench": "pretrain_step_profile",
        "config": args.config,
        "device": p.device.type,
        "student": c["student"],
        "teacher": c["teacher"],
        "size": c["size"],
        "batch": batch,
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "steps": args.steps,
        "img_s": round(batch * args.steps / wall, 3),
        "phases": {
            k: {"ms_per_step": round(r["ms_per_step"], 2), "share": round(r["share"], 4)} for k, r in rows.items()
        },
    }
    (out / "phases.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
