"""Classification linear probes on frozen features, computed once and cached.

Features of every image of a dataset are extracted once per (encoder weights, dataset,
preprocessing) and stored under ``cache_dir`` (``<key>.pt``, created once: of processes racing to
write a key, sweep parts on other nodes, the first wins and every one reads its file), then reused by
every label fraction and seed: a linear probe sees the encoder in eval mode and no
augmentation, so its features are a pure function of that key. The head is a linear layer on
standardised features (mean/std of the training subset, folded into the layer afterwards),
trained with AdamW (no weight decay on the bias); the epoch with the best validation accuracy is kept.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from downstream.config import ProbeConfig
from downstream.data.record import Record
from downstream.data.torchset import ImageSet
from downstream.data.transforms import to_input
from downstream.encoders import Encoder
from downstream.loaders import make_loader
from sonodistill.atomic import write_once
from sonodistill.logs import progress
from sonodistill.optim import OptimConfig, build_optimizer

FEATURE_VERSION = 3  # bump when extraction changes, so old cache files are not reused (2: precision in the key;
# 3: EXIF orientation applied, label-map masks)


@torch.no_grad()
def extract_features(
    enc: Encoder,
    records: Sequence[Record],
    size: int,
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    accelerator=None,
    desc: str = "features",
) -> torch.Tensor:
    """Pooled features ``[N, F]`` (float32, CPU) of ``records`` with eval preprocessing."""
    model = enc.backbone.eval()
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    model.to(device)
    loader = make_loader(ImageSet(records, size), batch_size, train=False, workers=num_workers)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    main = accelerator is None or accelerator.is_main_process
    feats, order = [], []
    for batch in progress(loader, desc=desc, unit="batch", main=main):
        x = to_input(batch["image"].to(device, non_blocking=True), enc.mean, enc.std)
        ctx = accelerator.autocast() if accelerator is not None else torch.autocast(device.type, enabled=False)
        with ctx:
            f = model(x).float()
        idx = batch["index"].to(device)
        if accelerator is not None:
            f, idx = accelerator.gather_for_metrics((f, idx))
        feats.append(f.cpu()), order.append(idx.cpu())
    out = torch.cat(feats)
    return out[torch.argsort(torch.cat(order))]


def cache_key(enc: Encoder, catalog_fingerprint: str, size: int, precision: str = "no") -> str:
    """Features are a pure function of the key: the mixed precision they were extracted under is
    part of it (bf16 features on a GPU differ from float32 ones by up to ~0.5 %)."""
    parts: list = [FEATURE_VERSION, enc.fingerprint(), catalog_fingerprint, size, list(enc.mean), list(enc.std)]
    if precision != "no":  # float32 keys stay as they were
        parts.append(precision)
    blob = json.dumps(parts).encode()
    return hashlib.sha1(blob).hexdigest()[:20]


class FeatureCache:
    """``key -> {id: row}`` features on disk (and in memory for this process)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._mem: dict[str, tuple[list[str], torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def get(
        self,
        enc: Encoder,
        records: Sequence[Record],
        catalog_fingerprint: str,
        size: int,
        *,
        batch_size: int = 64,
        num_workers: int = 2,
        accelerator=None,
    ) -> dict[str, torch.Tensor]:
        precision = str(accelerator.mixed_precision) if accelerator is not None else "no"
        key = cache_key(enc, catalog_fingerprint, size, precision)
        if key not in self._mem:
            path = self.folder / f"{key}.pt"
            if path.is_file():
                self._mem[key] = self._load(path)
                self.hits += 1
            else:
                feats = extract_features(
                    enc, records, size, batch_size=batch_size, num_workers=num_workers, accelerator=accelerator
                )
                ids = [r.id for r in records]
                if accelerator is None or accelerator.is_main_process:
                    buf = io.BytesIO()
                    torch.save({"ids": ids, "features": feats, "encoder": enc.spec}, buf)
                    if not write_once(path, buf.getvalue()):  # another process (a sweep part) was first:
                        ids, feats = self._load(path)  # every user of the key reads the same features
                self._mem[key] = (ids, feats)
                self.misses += 1
        else:
            self.hits += 1
        ids, feats = self._mem[key]
        return {i: feats[k] for k, i in enumerate(ids)}

    @staticmethod
    def _load(path: Path) -> tuple[list[str], torch.Tensor]:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob["ids"], blob["features"]


@dataclass
class ProbeResult:
    head: nn.Linear  # acts on raw (unstandardised) features
    best_epoch: int
    best_val_accuracy: float
    history: list[dict]


def train_linear_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
    cfg: ProbeConfig,
    seed: int = 0,
) -> ProbeResult:
    """AdamW on a linear layer over standardised features; keep the best validation epoch."""
    g = torch.Generator().manual_seed(seed)
    mu = x_train.mean(0)
    sd = x_train.std(0, unbiased=False).clamp_min(1e-6)
    xt, xv = (x_train - mu) / sd, (x_val - mu) / sd
    head = nn.Linear(xt.shape[1], num_classes)
    with torch.no_grad():  # seeded init independent of the global RNG
        bound = 1 / np.sqrt(xt.shape[1])
        head.weight.copy_(torch.rand(head.weight.shape, generator=g) * 2 * bound - bound)
        head.bias.zero_()
    opt = build_optimizer(head, OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay))  # no decay on the bias
    best = (-1.0, -1, None)
    history = []
    n = xt.shape[0]
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for s in range(0, n, cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            loss = nn.functional.cross_entropy(head(xt[b]), y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        with torch.no_grad():
            acc = (head(xv).argmax(1) == y_val).float().mean().item()
        history.append({"epoch": epoch, "train_loss": total / n, "val_accuracy": acc})
        if acc > best[0]:
            best = (acc, epoch, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    # fold the standardisation into the layer: W (x - mu) / sd + b = (W / sd) x + (b - W mu / sd)
    raw = nn.Linear(xt.shape[1], num_classes)
    with torch.no_grad():
        raw.weight.copy_(head.weight / sd)
        raw.bias.copy_(head.bias - (head.weight * (mu / sd)).sum(1))
    return ProbeResult(raw, best[1], best[0], history)
