"""One training loop for every KD recipe: teachers, from-scratch baselines and distilled students.

Separate from :func:`downstream.train.fit` (AdamW, per-step cosine, one loss) because the papers
need Adam, ReduceLROnPlateau on validation loss, epoch-wise cosine with warm-up and a floor,
selection on loss or accuracy, loss components and per-sample extras such as gate weights. The
launch check (WORLD_SIZE vs what accelerate sees) and the Accelerator come from there.

What differs between recipes lives in a :class:`Step` (how a batch becomes inputs, what the
loss is, what the model predicts); the loop itself is shared: accelerate for devices, processes
and mixed precision; the paper's optimiser and schedule (:class:`OptimConfig`); model selection
on the validation set (best accuracy, lowest loss, or the last epoch); tqdm with images/s on the
main process; TensorBoard scalars; a per-epoch history (losses, accuracy, learning rate and any
per-sample extras a step reports, e.g. CSA-MoE gate weights).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from downstream.kd.losses import LossParts
from downstream.train import make_accelerator  # noqa: F401  (re-exported: one launch check for every stage)
from shards.errors import UserError


@dataclass
class OptimConfig:
    """Optimiser, schedule and selection of one training stage (defaults: paper 000's student)."""

    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    epochs: int = 15
    batch_size: int = 32
    schedule: Literal["none", "cosine", "plateau"] = "none"
    warmup_epochs: int = 0  # cosine: linear warm-up from 0 over this many epochs of steps
    min_lr: float = 0.0  # cosine floor / plateau floor
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    select: Literal["last", "val_acc", "val_loss"] = "val_acc"  # which epoch's weights are kept


class Step(Protocol):
    """Recipe-specific batch handling; tensors in ``batch`` are already on the device."""

    def train_loss(self, model: torch.nn.Module, batch: dict) -> tuple[LossParts, torch.Tensor, dict[str, torch.Tensor]]:
        """(loss parts, logits for accuracy, extras of shape [B, K] averaged per epoch)."""

    def predict(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits, extras) in eval mode."""


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed, deterministic=False)


def _optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """timm's builder, as in pretraining: norms and biases (1-d parameters) get no weight decay."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int):
    if cfg.schedule == "cosine":  # pretraining's schedule: linear warm-up from 0, cosine to min_lr, per step
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        total = cfg.epochs * steps_per_epoch
        return get_cosine_with_min_lr_schedule_with_warmup(
            opt, num_warmup_steps=min(cfg.warmup_epochs * steps_per_epoch, total), num_training_steps=total,
            min_lr=cfg.min_lr)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr)
    return None


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def loader(dataset, batch_size: int, *, shuffle: bool, workers: int = 0, seed: int = 0) -> DataLoader:
    """DataLoader with the project's defaults: pinned memory on GPUs, full batches when training."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=g,
        pin_memory=torch.cuda.is_available(), drop_last=shuffle and len(dataset) > batch_size,
        persistent_workers=workers > 0,
    )


@torch.no_grad()
def predict(model: torch.nn.Module, step: Step, data: DataLoader, acc: Accelerator) -> dict[str, np.ndarray]:
    """Softmax probabilities, labels and per-sample CE (when labelled), sample indices and the
    step's extras over ``data``, gathered from every process (each sample exactly once)."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in data:
        batch = _to_device(batch, acc.device)
        with acc.autocast():
            logits, extras = step.predict(model, batch)
        logits = logits.float()
        row = {"probs": logits.softmax(1), "index": batch["index"], **{k: v.float() for k, v in extras.items()}}
        if "label" in batch:
            row["labels"] = batch["label"]
            row["ce"] = torch.nn.functional.cross_entropy(logits, batch["label"], reduction="none")
        for k, v in acc.gather_for_metrics(row).items():
            parts.setdefault(k, []).append(v.cpu())
    out = {k: torch.cat(v).numpy() for k, v in parts.items()}
    if "ce" in out:
        out["loss"] = np.asarray(float(out.pop("ce").mean()))
    return out


def fit(model: torch.nn.Module, step: Step, train: DataLoader, val: DataLoader | None, cfg: OptimConfig,
        acc: Accelerator, *, name: str, log_dir: str | Path | None = None) -> FitResult:
    """Train ``model`` in place; on return it holds the selected epoch's weights (unwrapped)."""
    if len(train) == 0:
        raise UserError(f"{name}: the training split is smaller than one batch ({cfg.batch_size})")
    if cfg.select != "last" and val is None:
        raise UserError(f"{name}: select={cfg.select} needs a validation split")
    opt = _optimizer(model, cfg)
    if acc.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # before DDP wraps it
    model, opt, train_dl = acc.prepare(model, opt, train)
    sched = _scheduler(opt, cfg, len(train_dl))  # steps of this process's shard of the data
    val_dl = acc.prepare(val) if val is not None else None
    writer = None
    if log_dir is not None and acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    result = FitResult()
    best_score, best_state = -math.inf, None
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        # running sums stay on the device (no host sync per step); reduced over processes per epoch
        sums: dict[str, torch.Tensor] = {}
        extra_sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=acc.device)
        seen = 0
        t0 = time.perf_counter()
        bar = tqdm(train_dl, desc=f"{name} {epoch}/{cfg.epochs}", disable=not acc.is_main_process, leave=False)
        for i, batch in enumerate(bar):
            batch = _to_device(batch, acc.device)
            with acc.autocast():
                parts, logits, ex = step.train_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            acc.backward(parts.total)
            opt.step()
            if cfg.schedule == "cosine":
                sched.step()
            n = int(batch["label"].shape[0])
            for k, v in parts.tensors().items():
                sums[k] = sums.get(k, 0) + v.detach().float() * n
            correct += (logits.detach().argmax(1) == batch["label"]).sum()
            seen += n
            for k, v in ex.items():
                extra_sums[k] = extra_sums.get(k, 0) + v.detach().float().sum(0)
            if i % 10 == 0 or i == len(train_dl) - 1:
                bar.set_postfix(loss=f"{parts.total.item():.3f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        keys, ex_keys = sorted(sums), sorted(extra_sums)
        flat = [sums[k].reshape(1) for k in keys] + [extra_sums[k].reshape(-1) for k in ex_keys]
        flat += [correct.reshape(1).float(), torch.tensor([float(seen)], device=acc.device)]
        stats = acc.reduce(torch.cat(flat), reduction="sum").cpu().tolist()
        total_seen = stats[-1]
        row: dict[str, Any] = {"epoch": epoch, "lr": opt.param_groups[0]["lr"]}
        row.update({f"train_{k}": stats[i] / total_seen for i, k in enumerate(keys)})
        row["train_acc"] = stats[-2] / total_seen
        pos = len(keys)
        for k in ex_keys:
            width = extra_sums[k].numel()
            row[f"train_{k}"] = [x / total_seen for x in stats[pos:pos + width]]
            pos += width
        row["images_per_s"] = total_seen / (time.perf_counter() - t0)
        if val_dl is not None:
            pv = predict(model, step, val_dl, acc)
            row["val_loss"] = float(pv["loss"])
            row["val_acc"] = float((pv["probs"].argmax(1) == pv["labels"]).mean())
            for k in pv:
                if k not in ("probs", "labels", "index", "loss"):
                    row[f"val_{k}"] = pv[k].mean(0).tolist()
        if cfg.schedule == "plateau":
            sched.step(row.get("val_loss", row["train_loss"]))
        result.history.append(row)
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    writer.add_scalar(f"{name}/{k}", v, epoch)
                elif isinstance(v, list):
                    for i, x in enumerate(v):
                        writer.add_scalar(f"{name}/{k}/{i}", x, epoch)
        score = {"last": float(epoch), "val_acc": row.get("val_acc", 0.0), "val_loss": -row.get("val_loss", 0.0)}[cfg.select]
        if score > best_score:  # ties keep the earlier epoch
            best_score, result.best_epoch = score, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in acc.unwrap_model(model).state_dict().items()}
        if acc.is_main_process:
            msg = " ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
            tqdm.write(f"{name} epoch {epoch}: {msg}")
    if writer is not None:
        writer.close()
    unwrapped = acc.unwrap_model(model)
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    acc.free_memory()
    return result


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Teacher mode: eval, no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def cache_logits(model: torch.nn.Module, data: Iterable[dict], step: Step, device: torch.device,
                 size: int, autocast=None) -> torch.Tensor:
    """Logits of a frozen ``model`` for every sample, indexed by the dataset's ``index``.

    Used when training runs without augmentation: each sample always looks the same, so the
    teacher runs once instead of once per epoch. Every process computes the full table.
    """
    table: torch.Tensor | None = None
    model.eval()
    for batch in data:
        batch = _to_device(batch, device)
        if autocast is not None:
            with autocast():
                logits, _ = step.predict(model, batch)
        else:
            logits, _ = step.predict(model, batch)
        if table is None:
            table = torch.full((size, logits.shape[1]), float("nan"), device=device)
        table[batch["index"]] = logits.float()
    if table is None or torch.isnan(table).any():
        raise RuntimeError("cache_logits: some samples were not visited")
    return table
