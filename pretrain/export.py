"""Export the distilled encoder as a Hub-ready timm model folder, and optionally publish it.

    python -m pretrain.export --checkpoint RUN_OR_CKPT --out DIR [--push-to-hub REPO_ID [--private]] [--dry-run]

The folder holds the student backbone only (no projection head) written by timm's ``save_for_hf``:
``model.safetensors`` + a timm ``config.json`` (architecture, ``num_classes: 0``, input size and the
teacher's mean/std), plus a model card ``README.md``. It loads with
``timm.create_model("local-dir:DIR", pretrained=True)`` (``hf-hub:REPO_ID`` once pushed) and its
state dict loads strictly into ``segmentation_models_pytorch.Unet(<arch>).encoder``.
``--push-to-hub`` uploads with huggingface_hub (token from ``HF_TOKEN`` or ``huggingface-cli
login``); ``--dry-run`` prints what would be uploaded and touches no network.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import find_checkpoint, read_meta, saved_config
from sonodistill.atomic import atomic_dir
from sonodistill.errors import UserError, cli_main

log = logging.getLogger(__name__)

GRAYSCALE_NOTE = (
    "B-mode ultrasound is grayscale: replicate the single channel to 3 channels "
    "(e.g. PIL .convert('RGB')), then normalise with mean/std"
)
NOT_CLINICAL = (
    "**Not for clinical use.** This is a research model. It has not been validated for "
    "diagnosis, treatment or any clinical decision, and must not be used for them."
)


def load_backbone(checkpoint: str | Path) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """The student's timm backbone (no head) from a checkpoint or run folder, plus its meta."""
    import timm
    from safetensors.torch import load_file

    ckpt = find_checkpoint(checkpoint)
    meta = read_meta(ckpt)
    weights = ckpt / "student.safetensors"
    if not weights.is_file():
        raise UserError(f"--checkpoint: {ckpt} has no student.safetensors")
    state = load_file(str(weights))
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    name = saved_config(meta).student.name
    model = timm.create_model(name, pretrained=False, num_classes=0)
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    if missing or unexpected:
        raise UserError(f"{weights}: does not match timm '{name}' (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), meta, ckpt


def _card(meta: dict[str, Any], model: torch.nn.Module, title: str) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    cfg = saved_config(meta)
    t, tr = meta["teacher"], cfg.train
    arch = cfg.student.name
    size = cfg.image_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    data = meta.get("data") or {}
    n = data.get("num_samples") or meta.get("num_samples")
    epochs = f"{meta['samples_seen'] / n:.1f}" if n else "unknown"
    sources = data.get("sources") or {}
    source_rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(sources.items())) or "| (no manifest) | |"
    rejected = ", ".join(f"{k}: {v}" for k, v in sorted((data.get("rejected") or {}).items())) or "none recorded"
    norm = "final LayerNorm applied" if cfg.teacher.norm else "no final norm"
    card_data = ModelCardData(
        library_name="timm",
        license="other",
        pipeline_tag="image-feature-extraction",
        tags=[
            "timm",
            "image-feature-extraction",
            "ultrasound",
            "medical-imaging",
            "knowledge-distillation",
            "dinov3",
            "sonodistill",
        ],
    )
    body = f"""
# {title}

A {arch} encoder ({params:.1f}M parameters, classifier removed) for B-mode ultrasound images,
distilled from the frozen ViT teacher `{t["name_or_path"]}` with
sonodistill, following "Domain-Constrained Distillation of DINOv3 into a
Lightweight Foundation Model toward Point-of-Care Ultrasound": the student's stride-32 feature map,
passed through a token-wise MLP head (dropped in this export) and upsampled to the teacher's patch
grid, regresses the teacher's normalised patch tokens with a token-wise MSE.

{NOT_CLINICAL}

## Use

{GRAYSCALE_NOTE}. Input size used in training: {size}x{size}; mean {t["mean"]}, std {t["std"]}.

```python
import timm
model = timm.create_model("local-dir:PATH_TO_THIS_FOLDER", pretrained=True)  # or "hf-hub:<repo id>"
features = model.forward_features(x)  # [B, {model.num_features}, H/32, W/32]; model(x) pools them
```

As a U-Net encoder (segmentation-models-pytorch; the state dict loads strictly):

```python
import segmentation_models_pytorch as smp
from safetensors.torch import load_file
unet = smp.Unet("{arch}", encoder_weights=None, classes=1)
unet.encoder.load_state_dict(load_file("model.safetensors"))
```

## Training

| item | value |
| --- | --- |
| teacher | `{t["name_or_path"]}`, patch tokens of blocks {t["layers"]} ({norm}), \
{cfg.teacher.aggregate} -> {t["embed_dim"]}-d, patch {t["patch_size"]} |
| student | `{arch}` + 2-layer MLP head (hidden {cfg.student.head_hidden}) |
| loss | token-wise MSE (squared L2 per token, mean over tokens and images) |
| mixup | prob {cfg.mixup.prob}, lambda ~ U(0,1), mode `{cfg.mixup.mode}` |
| augmentations | preset `{cfg.augment.preset}` at {size} px |
| optimiser | {tr.optimizer} lr {tr.lr}, weight decay {tr.weight_decay} (not on norms/biases), \
betas {list(tr.betas)}, warm-up {meta.get("warmup_steps")} steps + cosine to {tr.min_lr}, grad clip {tr.grad_clip} |
| steps | {meta["step"]} of {meta.get("max_steps")} optimiser steps, global batch {meta["global_batch"]} \
({meta["world_size"]} process(es) x {tr.batch_size} x {meta["accumulation"]} accumulation) |
| images seen | {meta["samples_seen"]} (~{epochs} epochs) |
| precision | {meta.get("mixed_precision")} ({meta.get("distributed_type")}) |

## Data

Unlabelled B-mode images from the shard manifest (`{data.get("path", "unknown")}`): {n or "unknown"} images,
standardised to {(data.get("settings") or {}).get("size", "unknown")} px; rejected while building: {rejected}.

| source | images |
| --- | --- |
{source_rows}

## Intended use and limitations

Intended as a pretrained encoder for research on ultrasound segmentation and classification
(linear probing, fine-tuning, limited-label studies), and for point-of-care research prototypes.
It was trained on 2D B-mode frames only; behaviour on Doppler, elastography, 3D or video data,
other modalities, or scanners and anatomies absent from the corpus is unknown. The teacher's
licence terms may apply to this derived model.

{NOT_CLINICAL}
"""
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}"))


def export(checkpoint: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Write the Hub-ready folder ``out`` (atomically: replaced as a whole) and return it."""
    from timm.models import save_for_hf

    from sonodistill.atomic import write_text

    model, meta, ckpt = load_backbone(checkpoint)
    cfg = saved_config(meta)
    size = cfg.image_size
    t = meta["teacher"]
    data_config = {
        "input_size": (3, size, size),
        "mean": tuple(t["mean"]),
        "std": tuple(t["std"]),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }
    model_config = {
        "input_note": GRAYSCALE_NOTE,
        "sonodistill": {
            "checkpoint_step": meta["step"],
            "teacher": t["name_or_path"],
            "teacher_layers": t["layers"],
            "augment": cfg.augment.preset,
        },
    }
    # Drop the provenance timm attaches to its ImageNet weights (tag, licence, paper): not ours.
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "tag": "sonodistill",
        "license": "other",
        "origin_url": None,
        "paper_ids": None,
        "paper_name": None,
        "hf_hub_id": None,
        "url": None,
        "notes": None,
        "description": None,
    }
    out = Path(out)
    with atomic_dir(out) as tmp:
        save_for_hf(model, str(tmp), model_config=model_config, data_config=data_config, safe_serialization=True)
        write_text(tmp / "README.md", _card(meta, model, title or out.name))
        tmp.chmod(0o755)  # a publishable folder, not a private temp dir
        for f in tmp.iterdir():
            f.chmod(0o644)
    log.info(f"exported {meta['config']['student']['name']} (step {meta['step']} of {ckpt}) to {out}")
    return out


def push(folder: str | Path, repo_id: str, private: bool = False, dry_run: bool = False) -> list[str]:
    """Upload ``folder`` to the Hub model repo ``repo_id``; ``dry_run`` only lists the files."""
    folder = Path(folder)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    if dry_run:
        print(f"dry run: would create/update {'private' if private else 'public'} model repo '{repo_id}' and upload:")
        for f in files:
            print(f"  {f}  ({(folder / f).stat().st_size / 1e6:.2f} MB)")
        return files
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message="sonodistill: distilled ultrasound encoder",
        )
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise UserError(
            f"--push-to-hub {repo_id}: upload failed ({' '.join(str(exc).split())[:300]}); "
            "log in with `huggingface-cli login` or set HF_TOKEN"
        ) from None
    log.info(f"pushed {len(files)} files to https://huggingface.co/{repo_id}")
    return files


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (newest checkpoint)")
    parser.add_argument("--out", required=True, help="output folder (replaced as a whole)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list what would be uploaded")
    parser.add_argument("--title", help="model card title (default: the output folder name)")
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        raise UserError("--private: only meaningful with --push-to-hub")
    out = export(args.checkpoint, args.out, title=args.title or args.push_to_hub)
    if args.push_to_hub:
        push(out, args.push_to_hub, private=args.private, dry_run=args.dry_run)
    elif args.dry_run:
        push(out, "<no --push-to-hub repo>", dry_run=True)


if __name__ == "__main__":
    main()
