"""The distillation training loop (accelerate: CPU, one GPU, many GPUs/nodes, DeepSpeed ZeRO-2).

Per optimiser step: ``accum`` micro-batches of ``train.batch_size`` images per process stream from
``shards.stream.ShardLoader`` (already split by rank, so not passed through ``accelerator.prepare``),
go to the device, are augmented in batch (``pretrain.augment``), normalised with the teacher's
statistics, mixed (eq. 7), and fed to the frozen teacher and the student; the token-wise MSE
(eq. 6) is back-propagated. AdamW (no decay on norms/biases), warm-up + cosine (the shared builder
of :mod:`sonodistill.optim`), gradient clipping.

:func:`train` is :func:`setup` (launch check, accelerator, loader, models, optimiser),
:func:`resume` (checkpoint, stream position, RNG), :func:`loop` (the steps, inside
``with StopRequest()``) and :func:`teardown` (plots, messages, end of the process group).

The loop never forces a device sync on its own: losses and grad norms stay on the device and are
read every ``train.log_every`` steps in one gather, which also carries the preemption flag and the
non-finite-loss check, so all ranks take the same decision after the same step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import changed_on_resume, read_meta, resolve_resume, save_checkpoint
from pretrain.config import PretrainConfig
from pretrain.metrics import MetricsLog, plot_loss_curve
from pretrain.step import distill_loss, make_view
from pretrain.student import Student, build_student
from shards.stream import decode_on_device, skipped_counts
from sonodistill.config import save_config, to_dict
from sonodistill.dinov3 import DINOv3
from sonodistill.errors import UserError
from sonodistill.jsonl import truncate_jsonl
from sonodistill.logs import progress
from sonodistill.optim import build_optimizer, build_scheduler, configured_hyperparameters, keep_configured
from sonodistill.outdir import claim
from sonodistill.precision import frozen_dtype, resolve_mixed_precision
from sonodistill.stop import EXIT_PREEMPTED, Stopped, StopRequest
from sonodistill.workers import loader_workers
from sonodistill.world import launch_state, use_cpu

log = logging.getLogger(__name__)


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


def check_values(cfg: PretrainConfig) -> None:
    """The config's values in range (``--show-config`` checks these too: a printed config runs)."""
    t = cfg.train
    for key, value in (
        ("train.batch_size", t.batch_size),
        ("train.log_every", t.log_every),
        ("train.save_every", t.save_every),
        ("student.head_hidden", cfg.student.head_hidden),
    ):
        if value < 1:
            raise UserError(f"{key}: expected a positive integer, got {value}")
    if t.max_steps < 0 or t.global_batch < 0 or t.warmup_steps < 0:
        raise UserError("train.max_steps, train.global_batch and train.warmup_steps must be >= 0")
    if not t.max_steps and not t.epochs > 0:
        raise UserError(f"train.epochs: expected a positive number of passes (or train.max_steps > 0), got {t.epochs}")
    for key, value in (("train.lr", t.lr), ("train.min_lr", t.min_lr), ("train.weight_decay", t.weight_decay)):
        if not (value >= 0 and math.isfinite(value)) or (key == "train.lr" and value == 0):
            raise UserError(
                f"{key}: expected a {'positive' if key == 'train.lr' else 'non-negative'} number, got {value}"
            )
    d = cfg.data
    if d.shuffle_buffer < 1 or cfg.seed < 0 or cfg.num_workers < 0:
        raise UserError(
            f"data.shuffle_buffer >= 1, seed >= 0 and num_workers >= 0 expected, got {d.shuffle_buffer}, "
            f"{cfg.seed} and {cfg.num_workers}"
        )
    if not 0.0 <= d.max_skipped_share <= 1.0:
        raise UserError(f"data.max_skipped_share: expected a share in [0, 1], got {d.max_skipped_share}")
    if not d.stall_timeout_s > 0:  # 0 would switch the guard against a hung store off
        raise UserError(f"data.stall_timeout_s: expected a positive number of seconds, got {d.stall_timeout_s}")
    if not 0.0 <= cfg.mixup.prob <= 1.0:
        raise UserError(f"mixup.prob: expected a probability in [0, 1], got {cfg.mixup.prob}")
    if t.schedule == "plateau":
        raise UserError("train.schedule: pretraining has no validation loss to plateau on; use cosine or none")


def _check_config(cfg: PretrainConfig) -> None:
    check_values(cfg)
    if not cfg.data.shards:
        raise UserError("data.shards: required (a shard folder with manifest.json, or a brace pattern)")
    if not cfg.teacher.name_or_path:
        raise UserError("teacher.name_or_path: required (a Hub id or a local save_pretrained folder)")


def _accumulation(cfg: PretrainConfig, world: int) -> tuple[int, int]:
    """(global batch, accumulation steps); more processes than the global batch needs at
    ``train.batch_size`` each get a smaller per-process batch (``cfg.train.batch_size`` is lowered,
    with a warning), so one config runs on 8 or 16 GPUs at the same global batch."""
    per_step = cfg.train.batch_size * world
    global_batch = cfg.train.global_batch or per_step
    if per_step > global_batch and global_batch % world == 0:
        log.warning(
            f"train.batch_size: {cfg.train.batch_size} per process x {world} processes is more than "
            f"train.global_batch={global_batch}; each process takes {global_batch // world}"
        )
        cfg.train.batch_size = global_batch // world
        per_step = global_batch
    if global_batch % per_step:
        raise UserError(
            f"train.global_batch: {global_batch} is not a multiple of train.batch_size x processes "
            f"= {cfg.train.batch_size} x {world} = {per_step}"
        )
    return global_batch, global_batch // per_step


def _max_steps(cfg: PretrainConfig, num_samples: int | None, global_batch: int) -> int:
    t = cfg.train
    if t.max_steps:
        return t.max_steps
    if num_samples:
        return max(1, math.ceil(t.epochs * num_samples / global_batch))
    raise UserError("train.max_steps: must be set when the shards have no manifest (sample count unknown)")


COMPILED_PREFIX = "_orig_mod."  # torch.compile's OptimizedModule wrapper in state_dict keys


def _fill_deepspeed_config(accelerator, cfg: PretrainConfig) -> None:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    # DeepSpeed's own bf16 mode casts the weights but not BatchNorm's running statistics (the first
    # BN fails) and keeps float32 weights only in the optimiser's shards (the saved student would
    # be bf16-rounded); its torch_autocast mode keeps float32 weights and autocasts the forward,
    # as the DDP path does.
    if accelerator.mixed_precision == "fp16":
        raise UserError(
            "mixed_precision=fp16 under DeepSpeed: not supported (its fp16 mode casts the student's "
            "weights, not BatchNorm's statistics); use bf16 (Ampere GPUs and later) or the DDP configs"
        )
    if accelerator.mixed_precision == "bf16" and "torch_autocast" not in ds:
        ds["bf16"], ds["fp16"] = {"enabled": False}, {"enabled": False}
        # no module marked safe for bf16: gradients are reduced in float32, as DDP reduces them
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    # We stream our own batches, so accelerate cannot infer these "auto" values from a dataloader.
    if plugin.is_auto("train_micro_batch_size_per_gpu"):
        ds["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
    if plugin.is_auto("gradient_clipping"):
        ds["gradient_clipping"] = cfg.train.grad_clip
    if plugin.is_auto("train_batch_size"):
        ds.pop("train_batch_size")


def _open_loader(cfg: PretrainConfig, rank: int, world: int, pin: bool, seed: int, workers: int | None = None):
    """The run's shard loader; ``workers``: that many loader processes (default: ``num_workers`` capped
    at the cores), as a resumed run's checkpoint had, since the data order follows them."""
    from shards.stream import ShardLoader

    d = cfg.data
    try:
        loader = ShardLoader(
            d.shards,
            batch_size=cfg.train.batch_size,
            mode=d.mode,
            seed=seed,
            shuffle_buffer=d.shuffle_buffer,
            num_workers=loader_workers(cfg.num_workers) if workers is None else workers,
            rank=rank,
            world_size=world,
            with_meta=d.record_keys,
            pin_memory=pin,
            source_weights=d.source_weights,
            decode="device" if d.gpu_decode else "worker",
            max_skipped_share=d.max_skipped_share,
            stall_timeout_s=d.stall_timeout_s,
        )
    except (UserError, FileNotFoundError, ValueError) as exc:
        why = " ".join(str(exc).split())
        if why.startswith("source_weights"):  # the shards opened: the weights are at fault
            raise UserError(f"data.{why}") from None
        raise UserError(f"data.shards: cannot open '{d.shards}' ({why})") from None
    found = loader.encoding or "unknown (no manifest)"
    if d.encoding != "any" and found != d.encoding:
        raise UserError(
            f"data.encoding: this config expects {d.encoding} shards, '{d.shards}' holds {found} "
            f"(build them with `python -m shards.build --encoding {d.encoding}`, or set data.encoding={found}"
            " / data.encoding=any; docs/data.md#shard-encodings compares the encodings)"
        )
    _check_shard_size(cfg, loader.image_size)
    return loader


def _check_shard_size(cfg: PretrainConfig, size: int | None) -> None:
    """Refuse to upsample every image: shards built smaller than the views the networks see. ``size``:
    the manifest's, a local shard list's first image's, or (a remote list) the first batch's."""
    if size and int(size) < cfg.image_size and not cfg.data.allow_upsample:
        raise UserError(
            f"image_size: {cfg.image_size} px is larger than the {size} px of the shards in '{cfg.data.shards}': "
            f"every image would be upsampled; build them with --size {cfg.image_size}, set image_size={size}, "
            "or data.allow_upsample=true to train so on purpose"
        )


def _shard_names(spec: str) -> list[str]:
    """A shard list's identity without a manifest: the names of the shards it lists, as given (a shard
    missing at the moment, re-signed URLs, another order or a copy elsewhere are the same list)."""
    import braceexpand

    return sorted(u.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] for u in braceexpand.braceexpand(str(spec)))


def _manifest_summary(shards: str, manifest: dict | None) -> dict[str, Any]:
    """What the run's metadata records about its shard set (local or remote); without a manifest
    (a brace pattern or a list of shards), the shards' names, so a resume can tell another list."""
    from sonodistill.provenance import json_sha256, public_source_name

    if manifest is None:
        names = _shard_names(shards)
        return {"num_shards": len(names), "shard_list_sha256": json_sha256(names)}
    from shards.exclusions import public_record

    keep = ("num_samples", "sources", "rejected", "settings", "encoding")
    named = {"path": str(shards), "name": public_source_name(shards), "manifest_sha256": json_sha256(manifest)}
    # a manifest without the field was built before --exclude existed: no set kept out
    excluded = {"exclusions": [public_record(x) for x in manifest.get("exclusions", [])]}
    return {k: manifest[k] for k in keep if k in manifest} | named | excluded


def _size_checked(batches: Iterator[dict], cfg: PretrainConfig) -> Iterator[dict]:
    """The batches, the first one's image size checked (:func:`_check_shard_size`): a remote shard
    list without a manifest tells its size only there."""
    first = next(batches)
    if "image" in first:
        _check_shard_size(cfg, int(first["image"].shape[-1]))
    yield first
    yield from batches


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


def _gather_interval(
    accelerator, losses: torch.Tensor, gnorms: torch.Tensor, stop_requested: bool
) -> tuple[list[float], list[float], bool]:
    """The loop's one sync point: per-step losses and grad norms averaged over ranks, and whether
    any rank was asked to stop (one gather, one device-to-host copy)."""
    flag = torch.tensor([1.0 if stop_requested else 0.0], device=losses.device)
    packed = torch.cat([losses, gnorms, flag]).unsqueeze(0)
    gathered = accelerator.gather(packed).view(accelerator.num_processes, -1).cpu()
    n = losses.numel()
    return gathered[:, :n].mean(0).tolist(), gathered[:, n : 2 * n].mean(0).tolist(), bool(gathered[:, -1].max() > 0)


@dataclasses.dataclass
class Session:
    """Everything :func:`setup` builds and the later phases use."""

    cfg: PretrainConfig
    accelerator: Any
    loader: Any
    teacher: DINOv3
    model: torch.nn.Module  # the prepared student (DDP / DeepSpeed wrapper)
    optimizer: Any
    scheduler: Any
    augment: torch.nn.Module
    world: int
    rank: int
    global_batch: int
    accum: int
    max_steps: int
    warmup: int
    mixed: str
    channels_last: bool

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out)


def setup(cfg: PretrainConfig) -> Session:
    """Launch check, accelerator, stream, teacher, student, augmentation, optimiser and schedule."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from pretrain.augment import build_augment
    from sonodistill.optim import warmup_steps

    state = launch_state()
    world, rank = state.num_processes, state.process_index
    global_batch, accum = _accumulation(cfg, world)
    mixed = resolve_mixed_precision(cfg.mixed_precision, state.device, "mixed_precision")
    accelerator = Accelerator(
        cpu=use_cpu(),
        mixed_precision=mixed,
        gradient_accumulation_steps=accum,
        step_scheduler_with_optimizer=False,  # we step the schedule once per optimiser step ourselves
    )
    _fill_deepspeed_config(accelerator, cfg)  # before anything is built: an fp16 refusal costs nothing
    device = accelerator.device
    on_gpu = device.type == "cuda"
    loader = _open_loader(cfg, rank, world, pin=on_gpu, seed=cfg.seed)
    max_steps = _max_steps(cfg, loader.num_samples, global_batch)
    steps_per_epoch = loader.num_samples / global_batch if loader.num_samples else None
    teacher = DINOv3.from_pretrained(
        cfg.teacher.name_or_path,
        layers=cfg.teacher.layers,
        norm=cfg.teacher.norm,
        aggregate=cfg.teacher.aggregate,
        dtype=frozen_dtype(device),
    ).to(device)
    set_seed(cfg.seed)  # identical student initialisation on every rank
    student = build_student(
        cfg.student.name,
        teacher.embed_dim,
        cfg.student.head_hidden,
        cfg.image_size,
        teacher.patch_size,
        cfg.student.out_dim,
    )
    channels_last = cfg.student.channels_last and on_gpu
    if cfg.student.sync_bn and world > 1 and on_gpu:  # torch's SyncBatchNorm is CUDA-only
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    if cfg.student.compile:
        student.compile()  # in place: state_dict keys stay unprefixed
    augment = build_augment(cfg.augment, cfg.image_size).to(device)
    optimizer = build_optimizer(student, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps_per_epoch, max_steps)
    prepared = accelerator.prepare(student, optimizer, *([scheduler] if scheduler is not None else []))
    model, optimizer = prepared[0], prepared[1]
    scheduler = prepared[2] if scheduler is not None else None
    if accelerator.gradient_accumulation_steps != accum:
        raise UserError(
            f"deepspeed config: gradient_accumulation_steps={accelerator.gradient_accumulation_steps} but "
            f'train.global_batch needs {accum}; set it to "auto"'
        )
    return Session(
        cfg,
        accelerator,
        loader,
        teacher,
        model,
        optimizer,
        scheduler,
        augment,
        world,
        rank,
        global_batch,
        accum,
        max_steps,
        warmup_steps(cfg.train, steps_per_epoch, max_steps, warn=True),
        mixed,
        channels_last,
    )


def resume(s: Session) -> tuple[int, Path | None]:
    """Restore the newest (or given) checkpoint: weights, optimiser, schedule, RNG and stream
    position. Returns (first step to run, checkpoint) -- (0, None) for a fresh run."""
    from accelerate.utils import set_seed

    cfg = s.cfg
    ckpt = resolve_resume(cfg.resume, s.out_dir)
    if ckpt is None:
        set_seed(cfg.seed, device_specific=True)  # different augmentations on every rank
        return 0, None
    meta = read_meta(ckpt)
    differs = changed_on_resume(meta, cfg, s.teacher.provenance())
    if differs:
        raise UserError(
            f"resume: checkpoint {ckpt} was trained with other settings ({'; '.join(differs)}); set them back "
            "to continue it, or give a new out for a new run"
        )
    differs = _other_data_or_batch(meta, s)
    if differs:
        raise UserError(
            f"resume: checkpoint {ckpt} was trained on {'; '.join(differs)}; set them back to continue it, "
            "or give a new out for a new run"
        )
    start = int(meta["step"])
    _restore_loader(s, ckpt, start, int(meta.get("world_size", s.world)))
    _check_random_states(s, ckpt)
    configured = configured_hyperparameters(s.optimizer)
    try:
        s.accelerator.load_state(str(ckpt))
    except Exception as exc:  # a mismatch (RuntimeError, KeyError) or a damaged file (any loader's error)
        raise UserError(
            f"resume: checkpoint {ckpt} does not fit this config or is damaged "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); if it is damaged, move it out of "
            f"{ckpt.parent} and resume=auto continues from the one before"
        ) from None
    changed = keep_configured(s.optimizer, s.scheduler, configured)
    if changed:
        log.warning(f"resume: the config's values replace the checkpoint's: {', '.join(changed)}")
    log.info(f"resumed from {ckpt} at step {start}")
    return start, ckpt


def _other_data_or_batch(meta: dict[str, Any], s: Session) -> list[str]:
    """``what old -> new`` when the run would continue on another shard set (compared by its
    manifest's hash, or a list's shard names: a copied folder is the same set) or at another global
    batch (with ``train.global_batch=0`` it follows the batch size and the number of processes)."""
    from sonodistill.provenance import json_sha256

    out = []
    was = meta.get("data", {}).get("manifest_sha256")
    now = json_sha256(s.loader.manifest) if s.loader.manifest is not None else None
    if was and now and was != now:
        name = meta.get("data", {}).get("name", "?")
        out.append(f"another shard set ({name}, manifest sha256 {was[:12]} -> {now[:12]})")
    listed = meta.get("data", {}).get("shard_list_sha256")
    names = _shard_names(s.cfg.data.shards) if listed and s.loader.manifest is None else []
    if names and listed != json_sha256(names):
        n = meta.get("data", {}).get("num_shards", "?")
        out.append(f"another shard list ({n} -> {len(names)} shards, or other names)")
    batch = meta.get("global_batch")
    if batch is not None and int(batch) != s.global_batch:
        out.append(f"another global batch ({batch} -> {s.global_batch} = batch_size x processes x accumulation)")
    return out


def _loader_state(path: Path) -> dict | None:
    """The loader position a checkpoint saved for this rank (None: missing or unreadable)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _ranks_where(s: Session, flag: bool) -> list[int]:
    """Collective: the ranks where ``flag`` holds (a rank's own warning would be dropped: only rank
    0 logs, and a decision one rank takes alone would split the ranks' data streams)."""
    flags = s.accelerator.gather(torch.tensor([int(flag)], device=s.device))
    return [r for r, v in enumerate(flags.tolist()) if v]


def _restore_loader(s: Session, ckpt: Path, start: int, saved_world: int) -> None:
    """Every rank continues at its saved position, or -- when any rank cannot (another world size,
    a missing or damaged file) -- every rank starts the same reshuffled stream."""
    cfg, pin = s.cfg, s.device.type == "cuda"
    state = _loader_state(ckpt / f"loader_rank{s.rank}.json") if saved_world == s.world else None
    missing = _ranks_where(s, state is None)
    if not missing:
        seed, workers = state.get("seed", cfg.seed), state.get("num_workers")
        if isinstance(workers, int) and workers != s.loader.num_workers:
            # the sample order is dealt over the loader's workers: keep the checkpoint's number, even
            # above this machine's cores (a requeue onto a smaller allocation), so it continues exactly
            log.warning(
                f"resume: {workers} loader workers as when the checkpoint was written (not "
                f"{s.loader.num_workers}), so the data order continues exactly"
            )
        else:
            workers = None
        if workers is not None or (isinstance(seed, int) and seed != cfg.seed):
            # a stream reshuffled on an earlier resume keeps its own seed
            s.loader = _open_loader(cfg, s.rank, s.world, pin=pin, seed=seed, workers=workers)
        s.loader.load_state_dict(state)
        return
    # Positions are per rank: with another world size the exact position cannot be rebuilt.
    s.loader = _open_loader(cfg, s.rank, s.world, pin=pin, seed=cfg.seed + start)
    why = (
        f"checkpoint written by {saved_world} processes, resuming on {s.world}"
        if saved_world != s.world
        else f"{', '.join(f'loader_rank{r}.json' for r in missing)} of the checkpoint missing or unreadable"
    )
    log.warning(f"resume: {why}: data order restarts on every rank with a reshuffled stream")


def _random_state_readable(path: Path) -> bool:
    try:
        torch.load(path, weights_only=False)  # noqa: S614 (this run's own checkpoint)
    except Exception:  # missing, cut short, garbled: any of several errors
        return False
    return True


def _check_random_states(s: Session, ckpt: Path) -> None:
    """Warn when a rank's random state cannot be restored: accelerate only logs that at INFO, and
    the run would go on, no longer bit-identical to an uninterrupted one."""
    bad = _ranks_where(s, not _random_state_readable(ckpt / f"random_states_{s.rank}.pkl"))
    if bad:
        log.warning(
            f"resume: {', '.join(f'random_states_{r}.pkl' for r in bad)} of the checkpoint missing or "
            "unreadable; those ranks' random state restarts from the seed, so the run goes on but not "
            "bit-identically to an uninterrupted one"
        )


@dataclasses.dataclass
class Outcome:
    step: int
    preempted: bool
    last_checkpoint: Path | None


def _base_meta(s: Session) -> dict[str, Any]:
    cfg, t = s.cfg, s.teacher
    return {
        "config": to_dict(cfg),
        "world_size": s.world,
        "global_batch": s.global_batch,
        "accumulation": s.accum,
        "max_steps": s.max_steps,
        "warmup_steps": s.warmup,
        "num_samples": s.loader.num_samples,
        "mixed_precision": s.mixed,
        "distributed_type": str(s.accelerator.distributed_type),
        "teacher": {
            "name_or_path": t.name_or_path,
            "embed_dim": t.embed_dim,
            "layers": t.layers,
            "patch_size": t.patch_size,
            "mean": list(t.mean),
            "std": list(t.std),
            **t.provenance(),  # what the model card names it by (never the local path)
        },
        "student": {
            "name": cfg.student.name,
            "stride": s.accelerator.unwrap_model(s.model).stride,
            "num_features": s.accelerator.unwrap_model(s.model).backbone.num_features,
        },
        "data": _manifest_summary(cfg.data.shards, s.loader.manifest),
    }


def batch_images(batch: dict, device: torch.device) -> torch.Tensor:
    """A loader batch's uint8 images on ``device`` (JPEG members decoded there with ``data.gpu_decode``:
    nvJPEG on a GPU, libjpeg-turbo on a CPU run)."""
    if "jpeg" in batch:
        return decode_on_device(batch, device)
    return batch["image"].to(device, non_blocking=True)


def backward_view(s: Session, view: torch.Tensor) -> torch.Tensor:
    """One micro-batch: mixup, teacher targets, student, token MSE and its backward pass (gradients
    accumulate until :func:`optimizer_step`). Returns the detached loss (no sync)."""
    with s.accelerator.accumulate(s.model):
        loss = distill_loss(s.teacher, s.model, view, s.cfg.mixup, s.channels_last)
        s.accelerator.backward(loss)
    return loss.detach()


def optimizer_step(s: Session, max_norm: float):
    """Clip, step the optimiser and the schedule, clear the gradients; the grad norm (not synced)."""
    gnorm = s.accelerator.clip_grad_norm_(s.model.parameters(), max_norm)
    s.optimizer.step()
    if s.scheduler is not None:
        s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return gnorm


def _checkpoint(s: Session, step: int, base_meta: dict) -> Path:
    """Save the training state, the loader's position and the student's weights at ``step``."""
    from safetensors.torch import save_file

    def write_weights(folder: Path) -> None:
        sd = s.accelerator.get_state_dict(s.model)
        if s.is_main:
            # accelerate's own dynamo wrapper (`accelerate launch --dynamo_backend`) prefixes every key
            plain = {k.removeprefix(COMPILED_PREFIX): v.detach().contiguous().cpu() for k, v in sd.items()}
            save_file(plain, str(folder / "student.safetensors"))

    meta = base_meta | {"step": step, "samples_seen": step * s.global_batch, "time": time.time()}
    loader_state = s.loader.state_dict()
    return save_checkpoint(s.accelerator, s.out_dir, step, meta, loader_state, write_weights, s.cfg.train.keep_last)


def _log_interval(
    s: Session, metrics: MetricsLog, first: int, losses: list, gnorms: list, lrs: list, img_s: float
) -> None:
    """One metrics row per finite step of the interval; the interval's rate and counters on its last row."""
    shards, samples = skipped_counts(s.loader.skipped or {})  # skipped so far (host counters)
    for i, (lv, gv, lr) in enumerate(zip(losses, gnorms, lrs)):
        last = i == len(losses) - 1
        extra = {"images_per_s": img_s, "skipped_samples": samples, "skipped_shards": shards} if last else {}
        if extra and s.device.type == "cuda":  # the allocator's peak so far: a host counter, no sync
            extra["gpu_memory_gib"] = torch.cuda.max_memory_allocated(s.device) / 2**30
        if math.isfinite(lv):
            metrics.log(first + i, loss=lv, grad_norm=gv, lr=lr, **extra)
    metrics.flush()


def _raise_if_diverged(losses: list, first: int, last_ckpt: Path | None) -> None:
    """Stop at the first non-finite loss of the interval, naming the checkpoint to resume from."""
    bad = [first + i for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        where = f"; the last good checkpoint is {last_ckpt}" if last_ckpt else "; no checkpoint was written"
        raise TrainingDiverged(
            f"train: loss became {losses[bad[0] - first]} at step {bad[0]}{where} "
            "(resume=auto restarts from it; lower train.lr or check the data)"
        )


def loop(
    s: Session, start_step: int, last_ckpt: Path | None, stop: StopRequest, metrics: MetricsLog | None, keys_fh
) -> Outcome:
    """Optimiser steps from ``start_step`` to ``max_steps``, checkpointing every ``save_every`` and
    when a stop is requested (checked with the losses every ``log_every`` steps, on all ranks)."""
    cfg, acc, device = s.cfg, s.accelerator, s.device
    base_meta = _base_meta(s)
    log_every = cfg.train.log_every
    step_loss = torch.zeros(log_every, device=device)
    step_gnorm = torch.zeros(log_every, device=device)
    step_lr: list[float] = []
    pending, step, preempted = 0, start_step, False
    bar = progress(
        total=s.max_steps,
        initial=start_step,
        desc="distill",
        unit="step",
        main=s.is_main,
        log_every=log_every,
        logger=log,
    )
    max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
    s.model.train()
    try:
        sized = getattr(s.loader, "image_size", None) is not None
        data_iter = _rng_neutral(iter(s.loader) if sized else _size_checked(iter(s.loader), cfg))
        t_interval = time.perf_counter()
        while step < s.max_steps:
            loss_acc = torch.zeros((), device=device)
            for k in range(s.accum):
                try:
                    batch = next(data_iter)
                except Stopped:  # the store stalls: no batch reaches the next check, keep what is done
                    return _stopped_waiting(s, step, last_ckpt, base_meta, k == 0 and pending == 0, keys_fh)
                if keys_fh is not None:
                    keys_fh.write(json.dumps({"step": step + 1, "keys": list(batch["key"])}) + "\n")
                loss_acc += backward_view(s, make_view(batch_images(batch, device), s.augment, s.teacher))
            step_lr.append(s.optimizer.param_groups[0]["lr"])  # the rate this step uses (host value: no sync)
            gnorm = optimizer_step(s, max_norm)
            step_loss[pending] = loss_acc / s.accum
            if isinstance(gnorm, torch.Tensor):
                step_gnorm[pending] = gnorm.detach()
            elif gnorm is not None:
                step_gnorm[pending] = float(gnorm)
            pending += 1
            step += 1
            save_now = step % cfg.train.save_every == 0 or step == s.max_steps
            if pending == log_every or save_now:
                losses, gnorms, stop_now = _gather_interval(
                    acc, step_loss[:pending], step_gnorm[:pending], stop.requested
                )
                elapsed = time.perf_counter() - t_interval
                img_s = pending * s.global_batch / max(elapsed, 1e-9)
                first = step - pending + 1
                if metrics is not None:
                    _log_interval(s, metrics, first, losses, gnorms, step_lr, img_s)
                    bar.set_postfix(loss=f"{losses[-1]:.4g}", img_s=f"{img_s:.1f}", lr=f"{step_lr[-1]:.2e}")
                step_lr = []
                if keys_fh is not None:  # a hard kill keeps the keys of every step before it
                    keys_fh.flush()
                _raise_if_diverged(losses, first, last_ckpt)
                pending = 0
                t_interval = time.perf_counter()
                if stop_now and not save_now:
                    save_now = preempted = True
                elif stop_now:
                    preempted = step < s.max_steps
            bar.update(1)  # after the interval's postfix: the line shows this step's loss, not the last one's
            if save_now:
                if keys_fh is not None:  # on disk with the checkpoint, a preemption's included
                    os.fsync(keys_fh.fileno())
                last_ckpt = _checkpoint(s, step, base_meta)
                t_interval = time.perf_counter()  # saving time is not training throughput
            if preempted:
                break
    finally:
        bar.close()
    return Outcome(step, preempted, last_ckpt)


def _stopped_waiting(s: Session, step: int, last_ckpt: Path | None, base_meta: dict, exact: bool, keys_fh) -> Outcome:
    """A stop signal while the loader waited on a stalled store (one process: see
    :func:`shards.stream._no_hang`): a checkpoint of the last finished step when it is ``exact`` (no
    micro-batch of the next step taken, so the loader's position is that step's end; and no step
    waiting to be logged and checked for divergence); else the last checkpoint stays. Exit 75."""
    newer = step > (int(read_meta(last_ckpt)["step"]) if last_ckpt is not None else 0)
    if exact and s.accelerator.num_processes == 1 and newer:
        if keys_fh is not None:
            keys_fh.flush()
            os.fsync(keys_fh.fileno())
        last_ckpt = _checkpoint(s, step, base_meta)
    return Outcome(step, True, last_ckpt)


def teardown(s: Session, outcome: Outcome | None, stop: StopRequest) -> None:
    """Loss curve, skipped-sample and preemption messages; every rank waits, then the group ends."""
    if s.is_main:
        plot_loss_curve(
            s.out_dir / "metrics.jsonl",
            s.out_dir / "loss_curve.png",
            title=f"{s.cfg.student.name} <- {Path(s.cfg.teacher.name_or_path).name}",
        )
        skipped = getattr(s.loader, "skipped", {}) or {}
        if any(skipped.values()):
            shards, samples = skipped_counts(skipped)
            log.warning(
                f"skipped while reading the shards in this run (resumes included): {shards} shard read(s) and "
                f"{samples} sample(s) ({', '.join(f'{k} {n}' for k, n in sorted(skipped.items()) if n)})"
            )
        if outcome is not None and outcome.preempted:
            by = stop.received or "a signal to another rank"
            log.warning(
                f"stopped by {by} after step {outcome.step}: checkpoint {outcome.last_checkpoint}; "
                f"rerun with resume=auto to continue (exit code {EXIT_PREEMPTED})"
            )


def train(cfg: PretrainConfig) -> TrainResult:
    """Run (or resume) a distillation run as configured; every process of a launch calls this."""
    _check_config(cfg)
    s = setup(cfg)
    claim(s.out_dir, "pretraining (pretrain/run.py)", key="out", write=s.is_main, only_own=True)
    # every rank has judged the folder before any rank writes to it (keys/: rank 0 took it for a user's)
    s.accelerator.wait_for_everyone()
    start_step, ckpt = resume(s)
    if start_step >= s.max_steps:
        log.info(f"the run is finished ({start_step} of {s.max_steps} steps): nothing to train; a larger "
                 "train.max_steps continues it")  # fmt: skip
    if s.is_main and (start_step < s.max_steps or not (s.out_dir / "config.yaml").is_file()):
        s.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, s.out_dir / "config.yaml")  # a finished run's stays: it names what was trained
    keys_fh = None
    if cfg.data.record_keys:
        keys_path = s.out_dir / "keys" / f"rank{s.rank}.jsonl"
        keys_path.parent.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(keys_path, start_step)
        keys_fh = keys_path.open("a", encoding="utf-8")
    metrics = MetricsLog(s.out_dir, start_step) if s.is_main else None
    outcome: Outcome | None = None
    # Installed before the loader forks its workers, which inherit the handler (see sonodistill.stop).
    with StopRequest() as stop:
        try:
            outcome = loop(s, start_step, ckpt, stop, metrics, keys_fh)
        finally:
            if keys_fh is not None:
                keys_fh.close()
            if metrics is not None:
                metrics.close()
            teardown(s, outcome, stop)
        # inside: a launcher's SIGTERM after another rank's exit 75 must not kill this one mid-wait
        s.accelerator.wait_for_everyone()
        s.accelerator.end_training()
    return TrainResult(
        s.out_dir,
        outcome.step,
        s.max_steps,
        outcome.preempted,
        stop.received,
        outcome.last_checkpoint,
        s.accelerator.unwrap_model(s.model),
    )
