"""The optimiser and the learning-rate schedule, one builder for every stage.

- Optimiser: timm's ``create_optimizer_v2`` (AdamW or Adam). Weight decay is never applied to
  norms and biases (1-d parameters) nor to what a model lists in ``no_weight_decay()``
  (e.g. a ViT's position embedding), and frozen parameters are left out.
- Schedule, stepped by the caller: ``cosine`` = linear warm-up from 0 then cosine decay to
  ``min_lr``, once per optimiser step (transformers'
  ``get_cosine_with_min_lr_schedule_with_warmup``); ``plateau`` = ReduceLROnPlateau on the
  validation loss, once per epoch; ``none`` = constant.

Each stage's training config extends :class:`OptimConfig`, so the keys read the same everywhere
(``train.lr``, ``train.weight_decay``, ``student.train.schedule`` ...).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from sonodistill.errors import UserError

log = logging.getLogger(__name__)

Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "adam"] = "adamw"  # adamw (decoupled weight decay) | adam
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.0  # never on norms and biases
    betas: tuple[float, float] = field(default=(0.9, 0.999))  # Adam(W) moment coefficients
    schedule: Literal["cosine", "plateau", "none"] = "cosine"  # cosine (warm-up, per step) | plateau (val loss) | none
    warmup_epochs: float = 0.0  # cosine: linear warm-up from 0 over this many epochs of steps
    warmup_steps: int = 0  # cosine: > 0 wins over warmup_epochs
    min_lr: float = 0.0  # cosine: end of the decay; plateau: floor
    plateau_factor: float = 0.5  # plateau: lr multiplier when the validation loss stalls
    plateau_patience: int = 3  # plateau: epochs without improvement before reducing


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``model``'s trainable parameters (no decay on 1-d parameters), with
    torch's fused kernel on every device (on 2 CPU cores a ResNet-50's AdamW step takes 22 ms fused,
    83 ms in torch's CPU default, a loop per tensor: ``bench/optimizer.py``)."""
    from timm.optim import create_optimizer_v2

    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("nothing to train: every parameter is frozen")
    return create_optimizer_v2(
        model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas), fused=True
    )


def warmup_steps(cfg: OptimConfig, steps_per_epoch: float | None, total_steps: int, warn: bool = False) -> int:
    """``warmup_steps`` if set, else ``warmup_epochs`` of steps (0 when the epoch length is unknown),
    shorter than the run's ``total_steps`` (``warn``: say so when it is cut): step k of a warm-up of
    w steps runs at k/w of the peak, so the run's last step runs at the peak only after w = total - 1."""
    if cfg.warmup_steps:
        steps, key = cfg.warmup_steps, "train.warmup_steps"
    else:
        steps = math.ceil(cfg.warmup_epochs * steps_per_epoch) if steps_per_epoch else 0
        key = "train.warmup_epochs"
    cut = max(total_steps - 1, 0)
    if warn and steps > cut:
        log.warning(
            f"warm-up of {steps} steps is as long as the run ({total_steps} steps) or longer: cut to {cut}, so the "
            f"learning rate reaches its peak at the last step and never decays; lower {key}"
        )
    return min(steps, cut)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: float | None, total_steps: int
) -> Scheduler | None:
    """The schedule of ``cfg.schedule`` (None for ``none``). Step a ``cosine`` schedule after every
    optimiser step (:func:`per_step`), a ``plateau`` one after every epoch with the
    validation loss."""
    if cfg.schedule == "cosine":
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer,
            num_warmup_steps=warmup_steps(cfg, steps_per_epoch, total_steps),
            num_training_steps=total_steps,
            min_lr=cfg.min_lr,
        )
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
        )
    return None


def per_step(scheduler: Scheduler | None) -> bool:
    """True for schedules stepped after every optimiser step (not per epoch on a metric)."""
    return scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


_SAVED_IN_STATE = ("initial_lr", "lr", "weight_decay", "betas", "eps")  # what loading an optimiser state replaces


def configured_hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each parameter group's hyperparameters as the config set them (taken before a checkpoint's
    state is loaded over them; ``initial_lr`` is the schedule's base learning rate)."""
    return [{k: g[k] for k in _SAVED_IN_STATE if k in g} for g in optimizer.param_groups]


def keep_configured(optimizer: torch.optim.Optimizer, scheduler: Scheduler | None, configured: list[dict]) -> list[str]:
    """After loading a checkpoint's optimiser and schedule state: the config's learning rate, weight
    decay and betas win over the saved ones (torch restores them with the moments, so a resumed run
    told to lower ``train.lr`` would keep the old one), the schedule's position and the moments are
    kept. Returns ``"name old -> new"`` for each value that changed."""
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper
    lambdas = isinstance(inner, torch.optim.lr_scheduler.LambdaLR)
    changed: dict[str, str] = {}
    for group, want in zip(optimizer.param_groups, configured, strict=True):
        for key, value in want.items():
            if key == "lr" and inner is not None:
                continue  # the schedule's: from the base rate below (a plateau schedule keeps its cuts)
            name = "lr" if key == "initial_lr" else key
            if group.get(key) != value:
                changed.setdefault(name, f"{name} {group.get(key)} -> {value}")
            group[key] = value
    if lambdas:
        inner.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        for group, base, fn in zip(optimizer.param_groups, inner.base_lrs, inner.lr_lambdas, strict=True):
            group["lr"] = base * fn(inner.last_epoch)
        inner._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports
    return list(changed.values())
