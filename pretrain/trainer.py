"""The distillation training loop (accelerate: CPU, one GPU, many GPUs/nodes, DeepSpeed ZeRO-2).

Per optimiser step: ``accum`` micro-batches of ``train.batch_size`` images per process stream from
``shards.stream.ShardLoader`` (already split by rank, so not passed through ``accelerator.prepare``),
go to the device, are augmented in batch (``pretrain.augment``), normalised with the teacher's
statistics, mixed (eq. 7), and fed to the frozen teacher and the student; the token-wise MSE
(eq. 6) is back-propagated. AdamW (no decay on norms/biases), warm-up + cosine, gradient clipping.

The loop never forces a device sync on its own: losses and grad norms stay on the device and are
read every ``train.log_every`` steps in one gather, which also carries the preemption flag and the
non-finite-loss check, so all ranks take the same decision after the same step.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from pretrain.checkpoint import read_meta, resolve_resume, save_checkpoint
from pretrain.config import PretrainConfig
from pretrain.metrics import MetricsLog, plot_loss_curve, truncate_jsonl
from pretrain.preempt import EXIT_PREEMPTED, StopRequest
from pretrain.step import distill_loss, make_view
from pretrain.student import Student, build_student
from pretrain.teacher import Teacher
from pretrain.world import check_world_size, resolve_mixed_precision, teacher_dtype, use_cpu
from shards.config import save_config, to_dict
from shards.errors import UserError


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the message names the step and the last good checkpoint."""


@dataclasses.dataclass
class TrainResult:
    out_dir: Path
    step: int
    max_steps: int
    preempted: bool
    signal: str | None
    last_checkpoint: Path | None
    student: Student  # unwrapped (this rank's copy)

    @property
    def exit_code(self) -> int:
        return EXIT_PREEMPTED if self.preempted else 0


def _check_config(cfg: PretrainConfig) -> None:
    t = cfg.train
    for key, value in (("train.batch_size", t.batch_size), ("train.log_every", t.log_every),
                       ("train.save_every", t.save_every), ("student.head_hidden", cfg.student.head_hidden)):
        if value < 1:
            raise UserError(f"{key}: expected a positive integer, got {value}")
    if t.max_steps < 0 or t.global_batch < 0 or t.warmup_steps < 0:
        raise UserError("train.max_steps, train.global_batch and train.warmup_steps must be >= 0")
    if not cfg.data.shards:
        raise UserError("data.shards: required (a shard folder with manifest.json, or a brace pattern)")
    if not cfg.teacher.name_or_path:
        raise UserError("teacher.name_or_path: required (a Hub id or a local save_pretrained folder)")
    if not 0.0 <= cfg.mixup.prob <= 1.0:
        raise UserError(f"mixup.prob: expected a probability in [0, 1], got {cfg.mixup.prob}")


def _accumulation(cfg: PretrainConfig, world: int) -> tuple[int, int]:
    per_step = cfg.train.batch_size * world
    global_batch = cfg.train.global_batch or per_step
    if global_batch % per_step:
        raise UserError(
            f"train.global_batch: {global_batch} is not a multiple of train.batch_size x processes "
            f"= {cfg.train.batch_size} x {world} = {per_step}"
        )
    return global_batch, global_batch // per_step


def _schedule_lengths(cfg: PretrainConfig, num_samples: int | None, global_batch: int) -> tuple[int, int]:
    t = cfg.train
    steps_per_epoch = num_samples / global_batch if num_samples else None
    if t.max_steps:
        max_steps = t.max_steps
    elif steps_per_epoch:
        max_steps = max(1, math.ceil(t.epochs * steps_per_epoch))
    else:
        raise UserError("train.max_steps: must be set when the shards have no manifest (sample count unknown)")
    if t.warmup_steps:
        warmup = t.warmup_steps
    else:
        warmup = math.ceil(t.warmup_epochs * steps_per_epoch) if steps_per_epoch else 0
    return max_steps, min(warmup, max_steps)


def _fill_deepspeed_config(accelerator, cfg: PretrainConfig) -> None:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    # We stream our own batches, so accelerate cannot infer these "auto" values from a dataloader.
    if plugin.is_auto("train_micro_batch_size_per_gpu"):
        ds["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
    if plugin.is_auto("gradient_clipping"):
        ds["gradient_clipping"] = cfg.train.grad_clip
    if plugin.is_auto("train_batch_size"):
        ds.pop("train_batch_size")


def build_optimizer(student: torch.nn.Module, cfg: PretrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW with weight decay on weights only: timm puts norms and biases (1-d) in a no-decay group."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(student, "adamw", lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                               betas=tuple(cfg.train.betas), **({"fused": True} if fused else {}))


def _open_loader(cfg: PretrainConfig, rank: int, world: int, pin: bool, seed: int):
    from shards.stream import ShardLoader

    d = cfg.data
    try:
        return ShardLoader(
            d.shards, batch_size=cfg.train.batch_size, mode=d.mode, seed=seed,
            shuffle_buffer=d.shuffle_buffer, num_workers=d.num_workers, rank=rank, world_size=world,
            with_meta=d.record_keys, pin_memory=pin,
        )
    except (UserError, FileNotFoundError, ValueError) as exc:
        raise UserError(f"data.shards: cannot open '{d.shards}' ({' '.join(str(exc).split())})") from None


def _manifest_summary(shards: str) -> dict[str, Any]:
    path = Path(shards)
    path = path / "manifest.json" if path.is_dir() else path
    if path.name != "manifest.json" or not path.is_file():
        return {}
    try:
        man = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    keep = ("num_samples", "sources", "rejected", "settings")
    return {k: man[k] for k in keep if k in man} | {"path": str(path)}


def _rng_neutral(batches: Iterator[dict]) -> Iterator[dict]:
    """Yield from ``batches``, keeping the DataLoader start-up draw out of torch's global RNG.

    Starting a DataLoader draws its base seed from the global CPU generator; a resumed run starts
    its loader at step k where the uninterrupted run did not, so that draw would shift every later
    augmentation. Isolating it keeps resumed runs bit-identical.
    """
    with torch.random.fork_rng(devices=[]):
        first = next(batches)
    yield first
    yield from batches


def _gather_interval(accelerator, losses: torch.Tensor, gnorms: torch.Tensor,
                     stop_requested: bool) -> tuple[list[float], list[float], bool]:
    """The loop's one sync point: per-step losses and grad norms averaged over ranks, and whether
    any rank was asked to stop (one gather, one device-to-host copy)."""
    flag = torch.tensor([1.0 if stop_requested else 0.0], device=losses.device)
    packed = torch.cat([losses, gnorms, flag]).unsqueeze(0)
    gathered = accelerator.gather(packed).view(accelerator.num_processes, -1).cpu()
    n = losses.numel()
    return gathered[:, :n].mean(0).tolist(), gathered[:, n:2 * n].mean(0).tolist(), bool(gathered[:, -1].max() > 0)


def train(cfg: PretrainConfig) -> TrainResult:
    """Run (or resume) a distillation run as configured; every process of a launch calls this."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from pretrain.augment import build_augment

    _check_config(cfg)
    cpu = use_cpu()
    state = PartialState(cpu=cpu)
    check_world_size(state.num_processes, str(state.distributed_type))
    world, rank = state.num_processes, state.process_index
    global_batch, accum = _accumulation(cfg, world)
    mixed = resolve_mixed_precision(cfg.train.mixed_precision, state.device)
    accelerator = Accelerator(
        cpu=cpu, mixed_precision=mixed, gradient_accumulation_steps=accum,
        step_scheduler_with_optimizer=False,  # we step the schedule once per optimiser step ourselves
    )
    device = accelerator.device
    on_gpu = device.type == "cuda"
    out_dir = Path(cfg.out_dir)
    is_main = accelerator.is_main_process

    ckpt = resolve_resume(cfg.resume, out_dir)
    meta_in = read_meta(ckpt) if ckpt else None

    loader = _open_loader(cfg, rank, world, pin=on_gpu, seed=cfg.train.seed)
    max_steps, warmup = _schedule_lengths(cfg, loader.num_samples, global_batch)

    teacher = Teacher.from_pretrained(
        cfg.teacher.name_or_path, layers=cfg.teacher.layers, norm=cfg.teacher.norm,
        aggregate=cfg.teacher.aggregate, dtype=teacher_dtype(device),
    ).to(device)
    set_seed(cfg.train.seed)  # identical student initialisation on every rank
    student = build_student(cfg.student.name, teacher.embed_dim, cfg.student.head_hidden,
                            cfg.augment.size, teacher.patch_size, cfg.student.out_dim)
    channels_last = cfg.student.channels_last and on_gpu
    if cfg.student.sync_bn and world > 1 and on_gpu:  # torch's SyncBatchNorm is CUDA-only
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    if cfg.student.compile:
        student.compile()  # in place: state_dict keys stay unprefixed
    augment = build_augment(cfg.augment).to(device)
    optimizer = build_optimizer(student, cfg, fused=on_gpu)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup, num_training_steps=max_steps, min_lr=cfg.train.min_lr,
    )
    _fill_deepspeed_config(accelerator, cfg)
    model, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    if accelerator.gradient_accumulation_steps != accum:
        raise UserError(
            f"deepspeed config: gradient_accumulation_steps={accelerator.gradient_accumulation_steps} but "
            f"train.global_batch needs {accum}; set it to \"auto\""
        )

    start_step = 0
    if meta_in is not None:
        start_step = int(meta_in["step"])
        saved_world = int(meta_in.get("world_size", world))
        loader_file = ckpt / f"loader_rank{rank}.json"
        if saved_world == world and loader_file.is_file():
            loader.load_state_dict(json.loads(loader_file.read_text()))
        else:
            # Positions are per rank: with another world size the exact position cannot be rebuilt.
            loader = _open_loader(cfg, rank, world, pin=on_gpu, seed=cfg.train.seed + start_step)
            if is_main:
                print(f"warning: checkpoint written by {saved_world} processes, resuming on {world}: "
                      "data order restarts with a reshuffled stream", file=sys.stderr)
    if ckpt is not None:
        try:
            accelerator.load_state(str(ckpt))
        except (RuntimeError, KeyError, ValueError) as exc:
            raise UserError(f"resume: checkpoint {ckpt} does not fit this config "
                            f"({' '.join(str(exc).split())[:300]})") from None
    else:
        set_seed(cfg.train.seed, device_specific=True)  # different augmentations on every rank

    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    keys_fh = None
    if cfg.data.record_keys:
        keys_path = out_dir / "keys" / f"rank{rank}.jsonl"
        keys_path.parent.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(keys_path, start_step)
        keys_fh = keys_path.open("a", encoding="utf-8")
    metrics = MetricsLog(out_dir, start_step) if is_main else None

    base_meta = {
        "config": to_dict(cfg), "world_size": world, "global_batch": global_batch, "accumulation": accum,
        "max_steps": max_steps, "warmup_steps": warmup, "num_samples": loader.num_samples,
        "mixed_precision": mixed, "distributed_type": str(accelerator.distributed_type),
        "teacher": {"name_or_path": teacher.name_or_path, "embed_dim": teacher.embed_dim,
                    "layers": teacher.layers, "patch_size": teacher.patch_size,
                    "mean": list(teacher.mean), "std": list(teacher.std)},
        "student": {"name": cfg.student.name, "stride": student.stride, "num_features": student.backbone.num_features},
        "data": _manifest_summary(cfg.data.shards),
    }

    def write_weights(folder: Path) -> None:
        sd = accelerator.get_state_dict(model)
        if is_main:
            save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(folder / "student.safetensors"))

    def checkpoint(step: int) -> Path:
        meta = base_meta | {"step": step, "samples_seen": step * global_batch, "time": time.time()}
        return save_checkpoint(accelerator, out_dir, step, meta, loader.state_dict(), write_weights,
                               cfg.train.keep_last)

    log_every = cfg.train.log_every
    step_loss = torch.zeros(log_every, device=device)
    step_gnorm = torch.zeros(log_every, device=device)
    last_ckpt: Path | None = ckpt
    step_lr: list[float] = []
    pending = 0
    step = start_step
    preempted = False
    pbar = tqdm(total=max_steps, initial=start_step, disable=not is_main, unit="step", dynamic_ncols=True,
                desc="distill")
    max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
    model.train()
    # Install before the loader forks its workers (they inherit the handler, see pretrain.preempt).
    stop = StopRequest().__enter__()
    try:
        data_iter = _rng_neutral(iter(loader))
        t_interval = time.perf_counter()
        while step < max_steps:
            loss_acc = torch.zeros((), device=device)
            for _ in range(accum):
                batch = next(data_iter)
                images = batch["image"].to(device, non_blocking=True)
                if keys_fh is not None:
                    keys_fh.write(json.dumps({"step": step + 1, "keys": list(batch["key"])}) + "\n")
                with accelerator.accumulate(model):
                    view = make_view(images, augment, teacher)
                    loss = distill_loss(teacher, model, view, cfg.mixup, channels_last)
                    accelerator.backward(loss)
                loss_acc += loss.detach()
            gnorm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_lr.append(scheduler.get_last_lr()[0])  # host value: no sync
            step_loss[pending] = loss_acc / accum
            if isinstance(gnorm, torch.Tensor):
                step_gnorm[pending] = gnorm.detach()
            elif gnorm is not None:
                step_gnorm[pending] = float(gnorm)
            pending += 1
            step += 1
            pbar.update(1)
            save_now = step % cfg.train.save_every == 0 or step == max_steps
            if pending == log_every or save_now:
                losses, gnorms, stop_now = _gather_interval(accelerator, step_loss[:pending],
                                                            step_gnorm[:pending], stop.requested)
                elapsed = time.perf_counter() - t_interval
                img_s = pending * global_batch / max(elapsed, 1e-9)
                first = step - pending + 1
                bad = [first + i for i, v in enumerate(losses) if not math.isfinite(v)]
                if metrics is not None:
                    skipped = sum((loader.skipped or {}).values())  # corrupt samples so far (host counter)
                    for i, (lv, gv, lr) in enumerate(zip(losses, gnorms, step_lr)):
                        extra = {"images_per_s": img_s, "skipped_samples": skipped} if i == pending - 1 else {}
                        if math.isfinite(lv):
                            metrics.log(first + i, loss=lv, grad_norm=gv, lr=lr, **extra)
                    metrics.flush()
                    pbar.set_postfix(loss=f"{losses[-1]:.4g}", img_s=f"{img_s:.1f}", lr=f"{step_lr[-1]:.2e}")
                step_lr = []
                if bad:
                    where = f"; the last good checkpoint is {last_ckpt}" if last_ckpt else "; no checkpoint was written"
                    raise TrainingDiverged(
                        f"train: loss became {losses[bad[0] - first]} at step {bad[0]}{where} "
                        "(resume=auto restarts from it; lower train.lr or check the data)"
                    )
                pending = 0
                t_interval = time.perf_counter()
                if stop_now and not save_now:
                    save_now = preempted = True
                elif stop_now:
                    preempted = step < max_steps
            if save_now:
                last_ckpt = checkpoint(step)
                t_interval = time.perf_counter()  # saving time is not training throughput
            if preempted:
                break
    finally:
        stop.__exit__()
        pbar.close()
        if keys_fh is not None:
            keys_fh.close()
        if metrics is not None:
            metrics.close()
            plot_loss_curve(out_dir / "metrics.jsonl", out_dir / "loss_curve.png",
                            title=f"{cfg.student.name} <- {Path(cfg.teacher.name_or_path).name}")
    if is_main:
        skipped = getattr(loader, "skipped", {}) or {}
        if any(skipped.values()):
            print(f"skipped corrupt samples: {dict(skipped)}", file=sys.stderr)
        if preempted:
            by = stop.received or "a signal to another rank"
            print(f"stopped by {by} after step {step}: checkpoint {last_ckpt}; "
                  f"rerun with resume=auto to continue (exit code {EXIT_PREEMPTED})", file=sys.stderr)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(out_dir, step, max_steps, preempted, stop.received, last_ckpt,
                       accelerator.unwrap_model(model))
