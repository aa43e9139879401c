"""The gradient-training loop shared by segmentation and classification (accelerate).

One loop for every task and initialisation: AdamW (no weight decay on norms and biases, as in
pretraining), linear warm-up then cosine decay per step,
mixed precision from accelerate (bf16 on CUDA), evaluation on the validation split after every
epoch and model selection on its score (the best state is kept in host memory). A linear probe
passes ``frozen=model.encoder``: its parameters get no gradient and it stays in eval mode, so
BatchNorm statistics do not move either. Progress: tqdm with images/s on the main process and
TensorBoard scalars under ``OUT/tb``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from downstream.config import TrainConfig
from shards.errors import UserError


def make_accelerator(precision: str = "auto"):
    """An Accelerator for this process (bf16 on CUDA under ``auto``), checked against WORLD_SIZE
    (the launch checks live in :mod:`pretrain.world`, shared with pretraining)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DataLoaderConfiguration

    from pretrain.world import check_world_size, resolve_mixed_precision, use_cpu

    cpu = use_cpu()
    state = PartialState(cpu=cpu)
    check_world_size(state.num_processes, str(state.distributed_type))
    return Accelerator(
        cpu=cpu, mixed_precision=resolve_mixed_precision(precision, state.device),
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
    )


LOG_EVERY = 10  # steps between progress/TensorBoard updates


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor] | None
    best_epoch: int
    best_score: float
    history: list[dict] = field(default_factory=list)
    images_per_s: float = 0.0


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    *,
    loss_step: Callable[[nn.Module, dict], tuple[torch.Tensor, int]],
    evaluate: Callable[[nn.Module, object], dict],
    score_key: str,
    lr: float,
    cfg: TrainConfig,
    accelerator,
    out: str | Path,
    frozen: nn.Module | None = None,
    desc: str = "train",
) -> FitResult:
    """Train ``model``; ``loss_step(model, batch) -> (loss, n_images)``; ``evaluate(model, loader)``
    returns metrics whose ``score_key`` (higher is better) selects the best epoch."""
    if frozen is not None:
        frozen.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("nothing to train: every parameter is frozen")
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=cfg.weight_decay)  # 1-d params: no decay
    if accelerator.device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    steps_per_epoch = len(train_loader)
    total = cfg.epochs * steps_per_epoch
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    # the schedule pretraining uses: linear warm-up from 0, cosine to min_lr, per optimiser step
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=min(cfg.warmup_epochs * steps_per_epoch, total), num_training_steps=total, min_lr=0.0)

    writer = None
    if accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(out) / "tb"))
    result = FitResult(None, -1, -math.inf)
    bar = tqdm(total=total, desc=desc, disable=not accelerator.is_main_process, leave=False, dynamic_ncols=True)
    seen, t_train, step = 0, 0.0, 0
    for epoch in range(cfg.epochs):
        model.train()
        if frozen is not None:
            frozen.eval()  # BatchNorm statistics of a frozen encoder must not move
        t0, running, n_loss = time.perf_counter(), torch.zeros((), device=accelerator.device), 0
        for batch in train_loader:
            with accelerator.autocast():
                loss, n = loss_step(model, batch)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running += loss.detach()
            n_loss += 1
            seen += n * accelerator.num_processes
            bar.update(1)
            if step % LOG_EVERY == 0 or n_loss == steps_per_epoch:  # .item() syncs the GPU: not every step
                value = loss.item()
                elapsed = t_train + time.perf_counter() - t0
                bar.set_postfix(epoch=epoch, loss=f"{value:.4f}", img_s=f"{seen / max(elapsed, 1e-9):.1f}")
                if writer is not None:
                    writer.add_scalar("train/loss", value, step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        t_train += time.perf_counter() - t0
        metrics = evaluate(model, val_loader)
        record = {"epoch": epoch, "train_loss": running.item() / max(n_loss, 1), **{f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}
        result.history.append(record)
        if writer is not None:
            for k, v in record.items():
                if k != "epoch" and v is not None:
                    writer.add_scalar(k.replace("_", "/", 1), v, epoch)
        score = metrics[score_key]
        if score > result.best_score:
            result.best_score, result.best_epoch = float(score), epoch
            result.best_state = {k: v.detach().to("cpu", copy=True) for k, v in accelerator.unwrap_model(model).state_dict().items()}
    bar.close()
    if writer is not None:
        writer.close()
    result.images_per_s = seen / max(t_train, 1e-9)
    return result
