"""The one supervised training loop: downstream probes and fine-tuning, KD teachers and students.

What a run trains is a :class:`~downstream.tasks.Task` (model + loss + metrics); everything else
is shared: accelerate for devices, processes and mixed precision; the optimiser and schedule of
:mod:`sonodistill.optim` (norms and biases never decayed; cosine stepped per optimiser step,
plateau per epoch on the validation loss); validation after every epoch and model selection on
the task's metric (or ``select``); per-epoch history of every loss part and per-sample extra
(e.g. CSA-MoE gate weights) reduced over processes; progress with images/s on the main process;
TensorBoard scalars. On return the model holds the selected epoch's weights.

Losses stay on the device and are read every ``LOG_EVERY`` steps, so the loop does not sync the
GPU at every step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from downstream.loaders import keep_last
from downstream.tasks.base import Task
from sonodistill.errors import UserError
from sonodistill.logs import progress
from sonodistill.optim import OptimConfig, build_optimizer, build_scheduler, per_step
from sonodistill.stop import Stopped, stop_requested

log = logging.getLogger(__name__)

LOG_EVERY = 10  # steps between progress / TensorBoard updates


@dataclass
class FitConfig(OptimConfig):
    """Optimiser, schedule, length and model selection of one training stage."""

    epochs: int = 50  # passes over the training split
    batch_size: int = 16  # per process
    select: str = "auto"  # auto (the task's metric) | last | val_<metric> (val_loss is minimised)


MIN_IMAGE_SIZE = 32  # the smallest side every backbone here (ResNets, ViT-16 patches) takes
RENAMED_SELECT = {"val_acc": "val_accuracy"}  # select values renamed (issue 15): still read, with a warning
_warned_select: set[str] = set()


def check_stages(cfg: Any, prefix: str = "") -> None:
    """Values no run trains with -- an ``image_size`` below :data:`MIN_IMAGE_SIZE`, a stage's
    ``epochs``, ``batch_size`` or ``lr`` below 1 / 1 / above 0 -- as one line naming the dotted key,
    before any work (keys and types are checked when the config is read)."""
    size = getattr(cfg, "image_size", None)
    if isinstance(size, int) and size < MIN_IMAGE_SIZE:
        raise UserError(f"{prefix}image_size: expected at least {MIN_IMAGE_SIZE} pixels, got {size}")
    seed = getattr(cfg, "seed", None)
    if isinstance(seed, int) and not 0 <= seed < 2**32:  # what numpy's and torch's seeding take
        raise UserError(f"{prefix}seed: expected an integer from 0 to 2**32-1, got {seed}")
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if isinstance(value, FitConfig):
            for name in ("epochs", "batch_size"):
                if getattr(value, name) < 1:
                    raise UserError(f"{key}.{name}: expected at least 1, got {getattr(value, name)}")
            if not value.lr > 0:
                raise UserError(f"{key}.lr: expected a learning rate above 0, got {value.lr}")
            _check_select(value, key)
        if dataclasses.is_dataclass(value):
            check_stages(value, key + ".")


def _check_select(stage: FitConfig, key: str) -> None:
    """A renamed ``select`` value warned about (once per key; :func:`fit` reads it as the new one); a
    value that names no validation metric at all refused (which ``val_`` metrics a task has is checked
    in its first epoch)."""
    if stage.select in RENAMED_SELECT:
        if key not in _warned_select:
            _warned_select.add(key)
            old, new = stage.select, RENAMED_SELECT[stage.select]
            log.warning(f"{key}.select: '{old}' is deprecated, use '{new}' (the old value still works for now)")
        return
    if stage.select not in ("auto", "last") and not stage.select.startswith("val_"):
        raise UserError(
            f"{key}.select: expected auto, last or a validation metric val_<name> "
            f"(val_loss, val_accuracy, val_dice, ...), got '{stage.select}'"
        )


def check_selects(cfg: Any, names: tuple[str, ...], kind: str, prefix: str = "") -> None:
    """Every stage's ``select`` a validation metric of its task (``names``: the task's
    ``val_names``), refused before any data is read rather than in the stage's first epoch."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if isinstance(value, FitConfig):
            select = RENAMED_SELECT.get(value.select, value.select)
            if select.startswith("val_") and select[4:] not in names:
                valid = ", ".join(["auto", "last", *(f"val_{n}" for n in names)])
                raise UserError(f"{key}.select: {select} is not a validation metric of a {kind} task; valid: {valid}")
        elif dataclasses.is_dataclass(value):
            check_selects(value, names, kind, key + ".")


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0  # 1-based
    best_score: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None  # CPU copy of the selected weights
    seconds: float = 0.0
    images_per_s: float = 0.0


def _score(select: str, row: dict[str, Any], epoch: int, name: str) -> float:
    if select == "last":
        return float(epoch)
    if select not in row or not isinstance(row[select], (int, float)) or row[select] is None:
        valid = ", ".join(k for k, v in row.items() if k.startswith("val_") and isinstance(v, (int, float)))
        raise UserError(f"{name}: select={select} is not a validation metric of this task; valid: last, {valid}")
    return -float(row[select]) if select == "val_loss" else float(row[select])


def _reduce(acc, sums: dict[str, torch.Tensor], seen: int) -> dict[str, Any]:
    """Per-sample means of the epoch's sums, reduced over processes in one collective."""
    keys = sorted(sums)
    flat = [sums[k].reshape(-1) for k in keys] + [torch.tensor([float(seen)], device=acc.device)]
    stats = acc.reduce(torch.cat(flat), reduction="sum").cpu().tolist()
    total, out, pos = stats[-1], {}, 0
    for k in keys:
        width = sums[k].numel()
        values = [x / total for x in stats[pos : pos + width]]
        out[f"train_{k}"] = values[0] if sums[k].dim() == 0 else values
        pos += width
    return out


def fit(
    task: Task,
    train: DataLoader,
    val: DataLoader | None,
    cfg: FitConfig,
    acc,
    *,
    name: str = "train",
    log_dir: str | Path | None = None,
    channels_last: bool = True,
) -> FitResult:
    """Train ``task.model`` on ``train``; select an epoch on ``val``; return the history."""
    if len(train) == 0:
        raise UserError(f"{name}: the training split is smaller than one batch ({cfg.batch_size})")
    select = task.select if cfg.select == "auto" else RENAMED_SELECT.get(cfg.select, cfg.select)
    if select != "last" and val is None:
        raise UserError(f"{name}: select={select} needs a validation split")
    run = _prepare(task, train, val, cfg, acc, channels_last)
    writer = None
    if log_dir is not None and acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    result = FitResult()
    start = time.perf_counter()
    bar = progress(total=cfg.epochs * run.steps, desc=name, unit="step", main=acc.is_main_process, logger=log)
    try:
        for epoch in range(1, cfg.epochs + 1):
            row = _train_epoch(task, run, cfg, acc, epoch, bar, writer, name)
            if run.val_dl is not None:
                row.update(_val_metrics(task.evaluate(run.val_dl, acc)))
            if run.scheduler is not None and not per_step(run.scheduler):
                run.scheduler.step(row.get("val_loss", row["train_loss"]))
            result.history.append(row)
            _log_epoch(writer, name, row, epoch, cfg.epochs)
            score = _score(select, row, epoch, name)
            if score > result.best_score:  # ties keep the earlier epoch
                result.best_score, result.best_epoch = score, epoch
                state = acc.unwrap_model(run.model).state_dict()
                result.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        task.model = acc.unwrap_model(run.model)
    if result.best_state is not None:
        task.model.load_state_dict(result.best_state)
    result.seconds = time.perf_counter() - start
    result.images_per_s = run.images / max(run.train_s, 1e-9)
    acc.free_memory()
    return result


@dataclass
class _Run:
    """One fit after ``accelerate.prepare``, and its training clock (validation excluded)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_dl: DataLoader
    val_dl: DataLoader | None
    scheduler: Any
    steps: int  # optimiser steps per epoch on this process
    train_s: float = 0.0
    images: int = 0
    step: int = 0


def _prepare(task: Task, train: DataLoader, val: DataLoader | None, cfg: FitConfig, acc, channels_last: bool):
    on_gpu = acc.device.type == "cuda"
    if train.drop_last and len(train) < acc.num_processes:  # a small label fraction on several GPUs
        train = keep_last(train)
    optimizer = build_optimizer(task.model, cfg)
    model = task.model
    if on_gpu and channels_last:
        model = model.to(memory_format=torch.channels_last)  # before DDP wraps it
    if val is not None:
        model, optimizer, train_dl, val_dl = acc.prepare(model, optimizer, train, val)
    else:
        model, optimizer, train_dl = acc.prepare(model, optimizer, train)
        val_dl = None
    steps = len(train_dl)  # this process's share of the data
    if steps == 0:
        raise UserError(
            f"training split of {len(train.dataset)} images: no batch of {cfg.batch_size} for each of "
            f"{acc.num_processes} processes; lower train.batch_size"
        )
    scheduler = build_scheduler(optimizer, cfg, steps, cfg.epochs * steps)
    task.model = model
    return _Run(model, optimizer, train_dl, val_dl, scheduler, steps)


def _train_epoch(task: Task, run: _Run, cfg: FitConfig, acc, epoch: int, bar, writer, name: str):
    """One pass over the training loader; the epoch's row (lr, train means, images/s)."""
    task.train()
    sums: dict[str, torch.Tensor] = {}  # stay on the device; reduced once per epoch
    seen, t0 = 0, time.perf_counter()
    total = cfg.epochs * run.steps
    for batch in run.train_dl:
        with acc.autocast():
            out = task(batch)
        acc.backward(out["loss"])
        run.optimizer.step()
        if per_step(run.scheduler) and not acc.optimizer_step_was_skipped:  # fp16: an overflow skips the step
            run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        n = int(out["output"].shape[0])
        for k, v in out.items():
            if k == "per_sample":
                for pk, pv in v.items():
                    sums[pk] = sums.get(pk, 0) + pv.detach().float().sum(0)
            elif k != "output":
                sums[k] = sums.get(k, 0) + v.detach().float() * n
        seen += n
        run.step += 1
        bar.update(1)
        _stop_point(acc, run.step, name, epoch)
        if run.step % LOG_EVERY == 0 or run.step == total:  # .item() syncs the GPU: not every step
            value = out["loss"].item()
            img_s = (run.images + seen * acc.num_processes) / max(run.train_s + time.perf_counter() - t0, 1e-9)
            bar.set_postfix(epoch=epoch, loss=f"{value:.4g}", img_s=f"{img_s:.1f}")
            if writer is not None:
                writer.add_scalar(f"{name}/step_loss", value, run.step)
                writer.add_scalar(f"{name}/lr", run.optimizer.param_groups[0]["lr"], run.step)
    if acc.device.type == "cuda":  # the epoch's kernels are queued, not done: time them done
        torch.cuda.synchronize(acc.device)
    run.train_s += time.perf_counter() - t0
    run.images += seen * acc.num_processes
    row: dict[str, Any] = {"epoch": epoch, "lr": run.optimizer.param_groups[0]["lr"]}
    row.update(_reduce(acc, sums, seen))
    row["images_per_s"] = seen * acc.num_processes / max(time.perf_counter() - t0, 1e-9)
    return row


def _stop_point(acc, step: int, name: str, epoch: int) -> None:
    """End the fit after this step when a stop signal arrived (:mod:`sonodistill.stop`). Several
    processes decide together, every ``LOG_EVERY`` steps, so that none is left in a collective."""
    if acc.num_processes > 1:
        if step % LOG_EVERY:
            return
        flag = torch.tensor([1.0 if stop_requested() else 0.0], device=acc.device)
        if float(acc.reduce(flag, reduction="sum")) == 0:
            return
    elif not stop_requested():
        return
    raise Stopped(f"{stop_requested() or 'a stop signal'} received; {name} stopped in epoch {epoch}, not kept")


def _val_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``val_<name>`` of the numbers and per-class lists of a validation pass (not counts)."""
    return {
        f"val_{k}": v
        for k, v in metrics.items()
        if isinstance(v, (int, float, list)) and k != "confusion_matrix" and not k.startswith("n_")
    }


def _log_epoch(writer, name: str, row: dict[str, Any], epoch: int, epochs: int) -> None:
    if writer is not None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch":
                writer.add_scalar(f"{name}/{k}", v, epoch)
            elif isinstance(v, list):
                for i, x in enumerate(v):
                    writer.add_scalar(f"{name}/{k}/{i}", x, epoch)
    log.info(
        f"{name} epoch {epoch}/{epochs}: " + " ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
    )
