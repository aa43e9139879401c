"""Whole distillation step vs the model-only step on ready tensors, side by side in one run.

    .venv/bin/python bench/pretrain_step.py [--shards DIR] [--teacher DIR] [--student resnet50]
        [--size 128] [--batch 16] [--steps 4] [--rounds 7] [--workers 2] [--preset us]

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
import tempfile
import time
from pathlib import Path

import torch

from pretrain.augment import AugmentConfig, build_augment
from pretrain.loss import MixupConfig
from pretrain.step import distill_loss, make_view
from pretrain.student import build_student
from shards.stream import ShardLoader
from sonodistill.dinov3 import DINOv3, init_tiny


def synthetic_shards(root: Path, size: int, n: int) -> Path:
    from shards.build import BuildSettings, build_shards
    from shards.synth import write_corpus

    write_corpus(root / "corpus", n=n, seed=0)
    sources = {p.name: str(p) for p in sorted((root / "corpus").iterdir()) if p.is_dir()}
    build_shards(sources, root / "shards", BuildSettings(size=size, samples_per_shard=64, workers=2), progress=False)
    return root / "shards"


def main() -> None:
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
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shards = Path(args.shards) if args.shards else synthetic_shards(tmp, args.size, args.corpus_size)
    teacher_path = args.teacher or str(init_tiny(tmp / "teacher", seed=0, image_size=args.size))
    dtype = torch.bfloat16 if device.type == "cuda" else None
    teacher = DINOv3.from_pretrained(teacher_path, dtype=dtype).to(device)
    torch.manual_seed(0)
    student = build_student(
        args.student, teacher.embed_dim, 4096 if device.type == "cuda" else 512, args.size, teacher.patch_size
    ).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    student.train()
    augment = build_augment(AugmentConfig(preset=args.preset, size=args.size)).to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.05)
    mixup = MixupConfig(prob=1.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def optimise(view: torch.Tensor) -> torch.Tensor:
        with autocast:
            loss = distill_loss(teacher, student, view, mixup, channels_last)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    loader = ShardLoader(
        str(shards),
        batch_size=args.batch,
        mode="loop",
        seed=0,
        shuffle_buffer=256,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)
    # Ready tensors for the model-only step: augmented views of real batches, prepared up front.
    ready = [make_view(next(batches)["image"].to(device), augment, teacher) for _ in range(4)]

    def whole_block() -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            images = next(batches)["image"].to(device, non_blocking=True)
            last = optimise(make_view(images, augment, teacher))
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
    w, m = statistics.median(whole), statistics.median(model)
    # Adjacent blocks share the machine's load: the median of per-round ratios is the robust figure.
    ratio = statistics.median(a / b for a, b in zip(whole, model))
    print(
        f"{args.student} <- {Path(teacher_path).name} (embed {teacher.embed_dim}), {args.size}px, "
        f"batch {args.batch}, {device.type}, torch threads {torch.get_num_threads()}, "
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
                "device": device.type,
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


if __name__ == "__main__":
    main()
