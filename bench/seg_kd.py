"""Segmentation KD on synthetic DDTI: distilled vs from-scratch student across seeds, at a small label fraction.

Runs a limited-label sweep (ddti-seg, fine-tuning) with one encoder row and ``kd:seg_unet`` rows:
the default recipe, and with ``--unlabelled`` also the semi-supervised variant
(``student.unlabelled=true``: distils on the training images outside the label subset too). The
foundation encoder is stood in for by a ResNet-18 whose U-Net was first trained on every label of
the training split (the real one, the distilled ResNet-50, needs the pretraining stage); the KD
teacher fine-tunes it on the cell's label subset, as the recipe does. Reports test Dice of
teacher, scratch student and distilled student, mean ± sample std over seeds, and how closely each
student's masks match the teacher's. The last line is JSON.

    .venv/bin/python bench/seg_kd.py [--n 120] [--size 64] [--fraction 0.25] [--seeds 0,1,2] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from downstream.report import seed_stats
from sonodistill.arg_checks import at_least


def foundation_encoder(data: Path, out: Path, size: int, epochs: int) -> Path:
    """A ResNet-18 encoder taken from a U-Net trained on every training label (save_for_hf folder)."""
    import timm
    from safetensors.torch import load_file
    from timm.models import save_for_hf

    from downstream.config import RunConfig
    from downstream.runner import run

    rc = RunConfig(task="ddti-seg", data=str(data), encoder="rand:resnet18", mode="finetune", seed=0, image_size=size)
    rc.out, rc.split.file = str(out / "pretrain"), str(out / "splits.json")
    rc.train.epochs, rc.train.lr, rc.train.batch_size, rc.num_workers = epochs, 1e-3, 8, 0
    rc.edge.enabled = False
    dice = run(rc)["test"]["dice"]
    state = load_file(str(out / "pretrain" / "best.safetensors"))
    enc = timm.create_model("resnet18", num_classes=0)
    enc.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
    save_for_hf(enc, out / "encoder", safe_serialization=True)
    print(f"stand-in foundation encoder: U-Net on every training label, test Dice {dice:.4f}")
    return out / "encoder"


def mean_sd(v: list[float]) -> dict:
    """Mean and sample SD over seeds (SD None for one seed: there is none)."""
    stats = seed_stats(v)
    if stats is None:  # no seed gave a number
        return {"mean": None, "sd": None}
    mean, sd, n = stats
    return {"mean": round(mean, 4), "sd": round(sd, 4) if n > 1 else None}


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=120, help="synthetic DDTI images")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30, help="epochs of every training stage")
    p.add_argument("--pretrain-epochs", type=int, default=40)
    p.add_argument("--unlabelled", action="store_true", help="also the semi-supervised variant")
    p.add_argument("--out", default="", help="work folder, kept (default: a temporary one, removed at the end)")
    args = p.parse_args()
    at_least(args, {"n": 12, "size": 32, "epochs": 1, "pretrain_epochs": 1})

    from downstream.sweep import SweepConfig, run_sweep
    from shards.synth import write_ddti
    from sonodistill.jsonl import read_jsonl

    work = Path(args.out or tempfile.mkdtemp(prefix="bench_seg_kd_"))
    try:
        data = work / "ddti"
        if not data.exists():
            write_ddti(data, n=args.n, seed=0)
        t0 = time.perf_counter()
        enc = foundation_encoder(data, work, args.size, args.pretrain_epochs)
        train = "teacher.train.lr=1e-3&teacher.train.warmup_epochs=0&student.train.warmup_epochs=0"
        methods = [f"KD=kd:seg_unet?{train}"]
        if args.unlabelled:
            methods.append(f"KD+unlabelled=kd:seg_unet?{train}&student.unlabelled=true")
        cfg = SweepConfig(
            out=str(work / "sweep"),
            ddti=str(data),
            tasks=["ddti-seg"],
            encoders=[f"R18-Foundation={enc}"],
            methods=methods,
            modes=["finetune"],
            fractions=[args.fraction],
            seeds=[int(s) for s in args.seeds.split(",")],
        )
        cfg.run.image_size = args.size
        cfg.run.split.file = str(work / "splits.json")
        cfg.run.train.epochs, cfg.run.train.batch_size, cfg.run.num_workers = args.epochs, 8, 0
        cfg.run.train.lr, cfg.run.train.save_checkpoint = 1e-3, False
        cfg.run.edge.enabled = False
        run_sweep(cfg)
        rows = read_jsonl(work / "sweep" / "results.jsonl")
        result: dict = {}
        for name in [m.partition("=")[0] for m in methods]:
            cells = [r["metrics"] for r in rows if r["cell"]["encoder_name"] == name]
            result[name] = {
                "teacher_dice": mean_sd([m["teacher"]["dice"] for m in cells]),
                "scratch_dice": mean_sd([m["scratch"]["dice"] for m in cells]),
                "distilled_dice": mean_sd([m["test"]["dice"] for m in cells]),
                "scratch_teacher_agreement": mean_sd([m["scratch"]["teacher_dice"] for m in cells]),
                "distilled_teacher_agreement": mean_sd([m["test"]["teacher_dice"] for m in cells]),
                "distilled_beats_scratch": [m["test"]["dice"] > m["scratch"]["dice"] for m in cells],
            }
            r = result[name]
            print(
                f"{name}: teacher {r['teacher_dice']}, scratch {r['scratch_dice']}, distilled {r['distilled_dice']}; "
                f"agreement with the teacher: scratch {r['scratch_teacher_agreement']}, "
                f"distilled {r['distilled_teacher_agreement']}"
            )
        n_train = rows[0]["metrics"]["n_train"]
        figures = {
            "bench": "seg_kd",
            "images": args.n,
            "size": args.size,
            "fraction": args.fraction,
            "labelled_images": n_train,
            "seeds": cfg.seeds,
            "epochs": args.epochs,
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "wall_s": round(time.perf_counter() - t0, 1),
            "results": result,
        }
        print(json.dumps(figures))
        return figures
    finally:  # the work folder is the benchmark's own: nothing of it is left behind
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
