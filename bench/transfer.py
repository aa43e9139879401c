"""Does distillation transfer knowledge? A miniature, end to end, on synthetic ultrasound.

    .venv/bin/python bench/transfer.py [--out DIR] [--size 96] [--teacher-epochs 15] [--steps 300]

1. Render labelled frames with ``shards.synth.render`` (labels: the anatomy preset, 6 classes, and
   for breast/thyroid/liver the lesion class normal/benign/malignant).
2. Train a tiny DINOv3-architecture ViT (transformers ``DINOv3ViTModel``, registers included) with
   supervision on both labels, and ``save_pretrained`` it with its image processor: the teacher.
3. Distil it into a ResNet on an *unlabelled* synthetic corpus, sharded by ``shards.build``, with
   this pipeline (``pretrain.trainer.train``: augmentations, mixup, token MSE, checkpoints).
4. Linear-probe (logistic regression on pooled frozen features) the teacher, the distilled student
   and the same student at its random initialisation, on held-out labelled frames.

The distilled student must clearly beat its own random initialisation. Slow on CPU (tens of
minutes); not part of the test suite. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shards.synth import PRESETS, render
from shards.synth.shard_set import write_shard_set
from sonodistill.arg_checks import at_least

LESION_PRESETS = ("breast", "thyroid", "liver")
LESIONS = ("normal", "benign", "malignant")


def labelled(n: int, seed: int, size: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``n`` frames cycling through presets (and lesion classes where a preset has lesions)."""
    rng = np.random.default_rng(seed)
    presets = list(PRESETS)
    images, anatomy, lesion = [], [], []
    for i in range(n):
        preset = presets[i % len(presets)]
        kind = LESIONS[(i // len(presets)) % 3] if preset in LESION_PRESETS else "normal"
        frame = render(preset, rng, lesion=kind, size=(size, size))
        img = frame.image if frame.image.ndim == 2 else frame.image.mean(-1).astype(np.uint8)
        images.append(img)
        anatomy.append(presets.index(preset))
        lesion.append(LESIONS.index(frame.lesion) if preset in LESION_PRESETS else -1)
    return torch.from_numpy(np.stack(images))[:, None], np.array(anatomy), np.array(lesion)


def train_teacher(
    out: Path, images: torch.Tensor, anatomy: np.ndarray, lesion: np.ndarray, size: int, epochs: int, seed: int
) -> Path:
    """Supervised tiny DINOv3 ViT (CLS + mean patch token -> anatomy and lesion heads), saved for from_pretrained."""
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    cfg = DINOv3ViTConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        patch_size=16,
        num_register_tokens=4,
        image_size=size,
    )
    vit = DINOv3ViTModel(cfg)
    proc = DINOv3ViTImageProcessor(size={"height": size, "width": size})
    mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
    head = torch.nn.Linear(2 * cfg.hidden_size, len(PRESETS) + 3)
    params = list(vit.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05)
    batch = min(64, len(images))  # a small smoke corpus still trains
    steps = epochs * (len(images) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-4, total_steps=steps, pct_start=0.1)
    y_a, y_l = torch.as_tensor(anatomy), torch.as_tensor(lesion)
    for epoch in range(epochs):
        vit.train()
        perm = torch.randperm(len(images))
        total = 0.0
        for i in range(0, len(images) - batch + 1, batch):
            idx = perm[i : i + batch]
            x = ((images[idx].float() / 255).expand(-1, 3, -1, -1) - mean) / std
            flip = torch.rand(len(idx)) < 0.5
            x[flip] = x[flip].flip(-1)
            tokens = vit(pixel_values=x).last_hidden_state
            logits = head(torch.cat([tokens[:, 0], tokens[:, 1 + cfg.num_register_tokens :].mean(1)], -1))
            loss = F.cross_entropy(logits[:, : len(PRESETS)], y_a[idx])
            has = y_l[idx] >= 0
            if has.any():
                loss = loss + F.cross_entropy(logits[has, len(PRESETS) :], y_l[idx][has])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"teacher epoch {epoch + 1}/{epochs}: loss {total / (len(images) // batch):.3f}", flush=True)
    vit.eval().save_pretrained(out)
    proc.save_pretrained(out)
    return out


@torch.no_grad()
def pooled(fn, views: torch.Tensor) -> np.ndarray:
    return torch.cat([fn(views[i : i + 128]).mean((2, 3)).float() for i in range(0, len(views), 128)]).numpy()


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
    return float(clf.fit(train_x, train_y).score(test_x, test_y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="work folder, kept (default: a temporary one, removed at the end)")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--teacher-images", type=int, default=1800)
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--corpus", type=int, default=1500, help="unlabelled corpus size")
    ap.add_argument("--steps", type=int, default=300, help="distillation steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--probe-images", type=int, default=600, help="per probe split (train and test)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    at_least(
        args,
        {
            "size": 32,
            "teacher_images": 12,
            "teacher_epochs": 1,
            "corpus": 1,
            "steps": 1,
            "batch": 2,
            "probe_images": 12,
        },
    )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        run(args, Path(args.out))
    else:
        with tempfile.TemporaryDirectory(prefix="bench_transfer_") as tmp:
            run(args, Path(tmp))


def distil(args: argparse.Namespace, out: Path, shards: Path, teacher_dir: Path):
    """Distil the teacher into ``--student`` on the unlabelled shards with ``pretrain.trainer.train``."""
    from pretrain.config import PretrainConfig
    from pretrain.trainer import train
    from sonodistill.config import load_config

    repo = Path(__file__).resolve().parents[1]
    overrides = [
        f"out={out / 'distill'}",
        f"data.shards={shards}",
        f"teacher.name_or_path={teacher_dir}",
        f"student.name={args.student}",
        f"image_size={args.size}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch}",
        f"train.global_batch={args.batch}",
        "train.lr=1e-3",
        "train.warmup_steps=20",
        "train.log_every=20",
        f"train.save_every={args.steps}",
        f"seed={args.seed}",
        "resume=none",
    ]
    cfg = load_config(PretrainConfig, repo / "pretrain" / "configs" / "tiny.yaml", overrides)
    return cfg, train(cfg)


def probe_models(args: argparse.Namespace, teacher_dir: Path, cfg, result, probe_train, probe_test) -> dict:
    """Anatomy and lesion linear-probe accuracy of the teacher, the distilled and the random-init student."""
    from pretrain.student import build_student
    from sonodistill.dinov3 import DINOv3

    (x_ptr, a_ptr, l_ptr), (x_pte, a_pte, l_pte) = probe_train, probe_test
    teacher = DINOv3.from_pretrained(teacher_dir)
    torch.manual_seed(cfg.seed)  # the trainer's initialisation of the student (set_seed(seed))
    random_init = build_student(
        args.student, teacher.embed_dim, cfg.student.head_hidden, args.size, teacher.patch_size
    ).eval()
    distilled = result.student.eval()
    v_tr, v_te = teacher.normalize(x_ptr), teacher.normalize(x_pte)
    models = {
        "teacher (supervised tiny DINOv3)": teacher,
        f"distilled {args.student}": distilled.features,
        f"random-init {args.student}": random_init.features,
    }
    lesion_tr, lesion_te = l_ptr >= 0, l_pte >= 0
    rows = {}
    for name, fn in models.items():
        f_tr, f_te = pooled(fn, v_tr), pooled(fn, v_te)
        rows[name] = {
            "anatomy_acc": probe(f_tr, a_ptr, f_te, a_pte),
            "lesion_acc": probe(f_tr[lesion_tr], l_ptr[lesion_tr], f_te[lesion_te], l_pte[lesion_te]),
        }
    return rows


def run(args: argparse.Namespace, out: Path) -> None:
    """Teacher, distillation, probes (see the module doc); a table and one JSON line."""
    t0 = time.perf_counter()
    print(f"work folder: {out}", flush=True)
    x_t, a_t, l_t = labelled(args.teacher_images, args.seed + 1, args.size)
    probe_train = labelled(args.probe_images, args.seed + 2, args.size)
    probe_test = labelled(args.probe_images, args.seed + 3, args.size)
    teacher_dir = train_teacher(out / "teacher", x_t, a_t, l_t, args.size, args.teacher_epochs, args.seed)
    # seeds apart from the labelled frames' seeds
    shards = write_shard_set(out, args.corpus, args.size, seed=args.seed + 1000, samples_per_shard=128)
    cfg, result = distil(args, out, shards, teacher_dir)
    rows = probe_models(args, teacher_dir, cfg, result, probe_train, probe_test)
    chance = {"anatomy_acc": 1 / len(PRESETS), "lesion_acc": 1 / 3}
    print(
        f"linear probe on frozen pooled features, {args.probe_images} train / {args.probe_images} test frames, "
        f"{args.size} px; distillation: {args.steps} steps x {args.batch} unlabelled images"
    )
    print(f"{'model':<36}{'anatomy (6-way)':>17}{'lesion (3-way)':>16}")
    for name, r in rows.items():
        print(f"{name:<36}{r['anatomy_acc']:>17.3f}{r['lesion_acc']:>16.3f}")
    print(f"{'chance':<36}{chance['anatomy_acc']:>17.3f}{chance['lesion_acc']:>16.3f}")
    keys = list(rows)
    gain = rows[keys[1]]["anatomy_acc"] - rows[keys[2]]["anatomy_acc"]
    print(f"distilled - random (anatomy): {gain:+.3f}; total {time.perf_counter() - t0:.0f} s")
    print(
        json.dumps(
            {
                "size": args.size,
                "student": args.student,
                "steps": args.steps,
                "batch": args.batch,
                "teacher": rows[keys[0]],
                "distilled": rows[keys[1]],
                "random_init": rows[keys[2]],
                "chance": chance,
                "distilled_minus_random_anatomy": round(gain, 4),
                "seconds": round(time.perf_counter() - t0),
            }
        )
    )


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
