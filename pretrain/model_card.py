"""The exported encoder's model card (``README.md``): what it is, how to load it, how it was
trained and on what, in names and content hashes only (no local path: :mod:`sonodistill.provenance`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import saved_config
from sonodistill.provenance import model_provenance, public_model_name, public_source_name
from sonodistill.smp_encoders import SMP_NATIVE

GRAYSCALE_NOTE = (
    "B-mode ultrasound is grayscale: replicate the single channel to 3 channels "
    "(e.g. PIL .convert('RGB')), then normalise with mean/std"
)
NOT_CLINICAL = (
    "**Not for clinical use.** This is a research model. It has not been validated for "
    "diagnosis, treatment or any clinical decision, and must not be used for them."
)
TAGS = ["timm", "image-feature-extraction", "ultrasound", "medical-imaging", "knowledge-distillation", "dinov3"]

CARD = """
# {title}

A {arch} encoder ({params:.1f}M parameters, classifier removed) for B-mode ultrasound images,
distilled from a frozen ViT teacher ({teacher}) with
sonodistill, following "Domain-Constrained Distillation of DINOv3 into a
Lightweight Foundation Model toward Point-of-Care Ultrasound": the student's stride-32 feature map,
passed through a token-wise MLP head (dropped in this export) and upsampled to the teacher's patch
grid, regresses the teacher's normalised patch tokens with a token-wise MSE.

{not_clinical}

## Use

{grayscale}. Input size used in training: {size}x{size}; mean {mean}, std {std}.

```python
import timm
import torch
model = timm.create_model("local-dir:PATH_TO_THIS_FOLDER", pretrained=True)  # or "hf-hub:<repo id>"
x = torch.randn(1, 3, {size}, {size})  # stands in for a grey image replicated to 3 channels, normalised as above
features = model.forward_features(x)  # [B, {num_features}, H/32, W/32]; model(x) pools them
```

As a U-Net encoder (segmentation-models-pytorch{smp_note}):

```python
import segmentation_models_pytorch as smp
from safetensors.torch import load_file
weights = "PATH_TO_THIS_FOLDER/model.safetensors"  # or hf_hub_download("<repo id>", "model.safetensors")
{smp_code}
```

## Training

| item | value |
| --- | --- |
| teacher | {teacher}, patch tokens of blocks {layers} ({norm}), {aggregate} -> {embed_dim}-d, patch {patch} |
| student | `{arch}` + 2-layer MLP head (hidden {head_hidden}) |
| loss | token-wise MSE (squared L2 per token, mean over tokens and images) |
| mixup | prob {mixup_prob}, lambda ~ U(0,1), mode `{mixup_mode}` |
| augmentations | preset `{preset}` at {size} px |
| optimiser | {optimizer} lr {lr}, weight decay {weight_decay} (not on norms/biases), \
betas {betas}, warm-up {warmup} steps + cosine to {min_lr}, grad clip {grad_clip} |
| steps | {step} of {max_steps} optimiser steps, global batch {global_batch} \
({world_size} process(es) x {batch_size} x {accumulation} accumulation) |
| images seen | {samples_seen} (~{epochs} epochs) |
| precision | {precision} ({distributed}) |

## Data

Unlabelled B-mode images from the shard set {shards}: {n} images,
standardised to {shard_size} px; rejected while building: {rejected}.

| source | images |
| --- | --- |
{source_rows}

### Evaluation sets kept out

{exclusions}

## Intended use and limitations

Intended as a pretrained encoder for research on ultrasound segmentation and classification
(linear probing, fine-tuning, limited-label studies), and for point-of-care research prototypes.
It was trained on 2D B-mode frames only; behaviour on Doppler, elastography, 3D or video data,
other modalities, or scanners and anatomies absent from the corpus is unknown. The teacher's
licence terms may apply to this derived model.

{not_clinical}
"""


def teacher_provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """The teacher's public identity from a checkpoint's meta (older checkpoints: derived now)."""
    t = meta["teacher"]
    if "model_type" in t:
        return {k: t.get(k) for k in ("model_type", "hub_id", "revision", "weights_sha256")}
    model_type = "dinov3_vit"
    cfg = Path(t["name_or_path"]) / "config.json"
    if cfg.is_file():
        model_type = json.loads(cfg.read_text()).get("model_type", model_type)
    return model_provenance(t["name_or_path"], model_type)


def data_provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """The shard set's public identity: its folder's name, manifest hash and counts (no path)."""
    data = meta.get("data") or {}
    name = data.get("name") or (public_source_name(data["path"]) if data.get("path") else None)
    keep = ("num_samples", "sources", "rejected", "manifest_sha256", "exclusions")
    return {"name": name, **{k: data.get(k) for k in keep}}


def _parts(x: dict[str, Any]) -> str:
    """A set's splits.json parts, each with its own content hash (a task's test split is checked
    against it alone); ``folder`` for a folder of images."""
    hashes = x.get("part_hashes") or {}
    return ", ".join(f"{p} `{hashes[p]}`" if p in hashes else p for p in x.get("parts") or []) or "folder"


def exclusions_text(sets: list[dict[str, Any]] | None) -> str:
    """The card's account of the evaluation sets the corpus was built against (``--exclude``)."""
    if sets is None:
        return "Not recorded (a checkpoint from before exclusion sets were recorded): treat as none."
    if not sets:
        return (
            "None: the corpus was built without `--exclude`. If it holds public datasets you evaluate on "
            "(BUSI, DDTI, ...), their test images may be in it; `downstream.run` and `downstream.sweep` mark "
            "this encoder's results as not checked against a test split."
        )
    rows = "\n".join(
        f"| {x['name']} | {x['images']} | `{x['content_hash']}` | {_parts(x)} | {x.get('frames_removed', 0)} |"
        for x in sets
    )
    return (
        "Frames that copy an image of these sets (renamed, re-encoded, resized, mirrored or re-cropped) were "
        "left out of the corpus (`shards.build --exclude`); the content hash is the SHA-1 over the sorted SHA-1s "
        "of the set's image files, which `downstream.run` and `downstream.sweep` compare with a task's test "
        "split.\n\n| set | images | content hash | parts (each with its own hash) | frames removed |\n"
        "| --- | --- | --- | --- | --- |\n" + rows
    )


def smp_snippet(arch: str) -> tuple[str, str]:
    """(note, code) loading the encoder into an smp U-Net: strictly into smp's own ResNet encoder,
    else through smp's ``tu-`` wrapper, which hands the weights to timm's loader."""
    if arch in SMP_NATIVE:
        code = f'unet = smp.Unet("{arch}", encoder_weights=None, classes=1)\n'
        code += "unet.encoder.load_state_dict(load_file(weights))"
        return "; the state dict loads strictly", code
    code = f'unet = smp.Unet("tu-{arch}", encoder_weights=True, classes=1,\n'
    code += "                pretrained_cfg_overlay=dict(state_dict=load_file(weights)))"
    return "; timm loads the weights into its `tu-` encoder", code


def _code(name: str) -> str:
    """A Hub id or folder name as code in the card; a description as plain text."""
    return name if name.startswith("a local ") else f"`{name}`"


def _facts(meta: dict[str, Any], model: torch.nn.Module, title: str) -> dict[str, Any]:
    cfg = saved_config(meta)
    t, tr = meta["teacher"], cfg.train
    data = meta.get("data") or {}
    n = data.get("num_samples") or meta.get("num_samples")
    shard_set = data_provenance(meta)
    sha = shard_set.get("manifest_sha256")
    return {
        "title": title,
        "arch": cfg.student.name,
        "smp_note": smp_snippet(cfg.student.name)[0],
        "smp_code": smp_snippet(cfg.student.name)[1],
        "params": sum(p.numel() for p in model.parameters()) / 1e6,
        "teacher": _code(public_model_name(teacher_provenance(meta))),
        "not_clinical": NOT_CLINICAL,
        "grayscale": GRAYSCALE_NOTE,
        "size": cfg.image_size,
        "mean": t["mean"],
        "std": t["std"],
        "num_features": model.num_features,
        "layers": t["layers"],
        "norm": "final LayerNorm applied" if cfg.teacher.norm else "no final norm",
        "aggregate": cfg.teacher.aggregate,
        "embed_dim": t["embed_dim"],
        "patch": t["patch_size"],
        "head_hidden": cfg.student.head_hidden,
        "mixup_prob": cfg.mixup.prob,
        "mixup_mode": cfg.mixup.mode,
        "preset": cfg.augment.preset,
        "optimizer": tr.optimizer,
        "lr": tr.lr,
        "weight_decay": tr.weight_decay,
        "betas": list(tr.betas),
        "warmup": meta.get("warmup_steps"),
        "min_lr": tr.min_lr,
        "grad_clip": tr.grad_clip,
        "step": meta["step"],
        "max_steps": meta.get("max_steps"),
        "global_batch": meta["global_batch"],
        "world_size": meta["world_size"],
        "batch_size": tr.batch_size,
        "accumulation": meta["accumulation"],
        "samples_seen": meta["samples_seen"],
        "epochs": f"{meta['samples_seen'] / n:.1f}" if n else "unknown",
        "precision": meta.get("mixed_precision"),
        "distributed": meta.get("distributed_type"),
        "shards": _code(shard_set["name"] or "unknown") + (f" (manifest sha256 {sha[:16]})" if sha else ""),
        "n": n or "unknown",
        "shard_size": (data.get("settings") or {}).get("size", "unknown"),
        "rejected": ", ".join(f"{k}: {v}" for k, v in sorted((data.get("rejected") or {}).items())) or "none recorded",
        "source_rows": "\n".join(f"| {k} | {v} |" for k, v in sorted((data.get("sources") or {}).items()))
        or "| (no manifest) | |",
        "exclusions": exclusions_text(shard_set["exclusions"]),
    }


def model_card(meta: dict[str, Any], model: torch.nn.Module, title: str) -> str:
    """The card's text: YAML metadata for the Hub, then the body."""
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(
        library_name="timm", license="other", pipeline_tag="image-feature-extraction", tags=[*TAGS, "sonodistill"]
    )
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n{CARD.format(**_facts(meta, model, title))}"))
