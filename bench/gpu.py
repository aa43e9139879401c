"""Everything GPU in one prepared run: the paper config's step, the loader feeding it, augmentations on
the GPU, DeepSpeed ZeRO-2, a downstream cell and the paper recipe's wall time (<= 6 minutes on one GPU).

    python bench/gpu.py --out DIR                   # on a GPU machine: a table, DIR/gpu.json, DIR/gpu.txt
    python bench/gpu.py --smoke --out DIR           # every part at tiny sizes on the CPU (CI keeps it working)
    python bench/gpu.py --parts step,loader         # some parts only (e.g. a rerun after a failure)

Without a GPU and without ``--smoke`` it prints ``{"device": "cpu", "skipped": true}`` and exits 0.
The parts, in the order they run (each is a key of the last JSON line):

- ``step``: the paper config (``pretrain/configs/dinov3_vitb16_resnet50.yaml``: a DINOv3 ViT-B/16 of the
  real size with random weights as teacher, ResNet-50 + the 4096 head, bf16, channels_last) at 224 px,
  batch 64, 128 and 256: images/s of the whole step (raw shards -> device -> augmentation -> teacher ->
  student -> loss -> AdamW) and of the model alone (ready views), alternating blocks; the teacher's
  share of the model-only step; peak GPU memory.
- ``wall_time``: the recipe itself (256 px; 64 images per GPU on 8 GPUs, 8 per GPU on 64 GPUs for the
  global batch of 512): whole-step images/s at those per-GPU batches, and the hours of 1,000 epochs
  of ~162K frames on 8 and 64 GPUs, assuming linear scaling (all-reduce and checkpoints not counted).
- ``loader``: ``ShardLoader`` on raw and JPEG shards (pinned, copied to the GPU): images/s with one
  worker, the workers needed to feed the recipe's measured rate, and whether that many keep up.
- ``augment``: the ``us-physics`` preset on the GPU vs on the CPU (all cores), images/s, and its
  share of a step.
- ``downstream``: one fine-tuning cell at 224 px on synthetic BUSI (seconds per cell, per epoch).
- ``deepspeed``: 20 optimiser steps through ``accelerate launch`` with
  ``launch/accelerate/deepspeed_zero2.yaml`` (the repository's ZeRO-2 config) on one GPU, as a
  subprocess with a timeout: whether it runs, images/s, peak memory.
- ``compile``: the step with ``student.compile=true`` (torch.compile) vs without, and the compile time.

Every part is guarded: a failure is recorded in its JSON entry (``ok: false`` and the one-line
error) and the next part runs. Project modules are imported inside the parts, so a package the
machine lacks fails only the parts that need it. A global budget (``--budget``, default 340 s)
bounds the run: a part that would not fit is recorded as skipped. Everything is built through the
project's own code (``pretrain.trainer.setup`` and its step functions, ``shards.stream.ShardLoader``,
``shards.synth``, ``downstream.runner``) on synthetic data; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from sonodistill.errors import UserError

START = time.perf_counter()  # the budget counts from here (torch is imported by then: a few seconds)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the project's packages and bench helpers without an install (a bare GPU host)
PAPER_YAML = REPO / "pretrain" / "configs" / "dinov3_vitb16_resnet50.yaml"
TINY_YAML = REPO / "pretrain" / "configs" / "tiny.yaml"
PARTS = ("step", "wall_time", "loader", "augment", "downstream", "deepspeed", "compile")
RECIPE_IMAGES = 162_000  # paper 002's corpus (docs/papers.md); 1,000 epochs of it
RECIPE_GPUS = (8, 64)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each part runs at: the GPU run, or the CPU smoke run (tiny everything)."""

    teacher: str  # sonodistill.dinov3.init_tiny preset
    student: str | None  # None: the paper config's (ResNet-50, head 4096)
    head: int | None
    size: int  # the step table's view size
    batches: tuple[int, ...]  # the step table's batches
    recipe_batch_cap: int  # per-GPU batches of the wall-time part are capped here (smoke only)
    recipe_size: int | None  # None: the paper config's
    shard_size: int
    corpus: int  # synthetic corpus images sharded for the loader and the step
    block_s: float  # seconds per measured block
    rounds: int  # alternating whole / model-only rounds per step measurement (medians)
    busi: int  # synthetic BUSI images for the downstream cell
    busi_size: int
    busi_epochs: int
    busi_encoder: str
    ds_steps: int
    compile_batch: int
    compile_need_s: float  # the compile part starts only with this much budget left
    deepspeed_need_s: float


GPU = Sizes(
    teacher="vitb16",
    student=None,
    head=None,
    size=224,
    batches=(64, 128, 256),
    recipe_batch_cap=10**6,
    recipe_size=None,
    shard_size=256,
    corpus=384,
    block_s=1.5,
    rounds=3,
    busi=240,
    busi_size=224,
    busi_epochs=3,
    busi_encoder="rand",
    ds_steps=20,
    compile_batch=128,
    compile_need_s=130.0,  # a cold inductor build of ResNet-50 forward + backward, then the timing blocks
    deepspeed_need_s=45.0,
)
SMOKE = Sizes(
    teacher="tiny",
    student="test_resnet",
    head=64,
    size=64,
    batches=(2, 4),
    recipe_batch_cap=4,
    recipe_size=64,
    shard_size=64,
    corpus=24,
    block_s=0.3,
    rounds=2,
    busi=30,
    busi_size=64,
    busi_epochs=1,
    busi_encoder="rand:test_resnet",
    ds_steps=4,
    compile_batch=2,
    compile_need_s=20.0,
    deepspeed_need_s=20.0,
)


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


class Bench:
    """What the parts share: sizes, device, the budget, the synthetic data (built once, on first use)
    and the results so far."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.sizes = SMOKE if args.smoke else GPU
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
        self.t0 = START
        self.results: dict[str, dict] = {}
        self._teacher: Path | None = None
        self._shards: dict[str, Path] = {}
        self.steps: dict[tuple[int, int], dict] = {}  # step measurements by (batch, size), reused across parts
        self.deepspeed_broken: str | None = None  # why DeepSpeed cannot be imported (main: hide_broken_deepspeed)

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.t0)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def teacher(self) -> Path:
        """A DINOv3 of the preset's size with random weights, saved and loaded like the Hub checkpoint."""
        if self._teacher is None:
            from sonodistill.dinov3 import init_tiny

            self._teacher = init_tiny(self.tmp / "teacher", seed=0, preset=self.sizes.teacher)
        return self._teacher

    def shards(self, encoding: str) -> Path:
        """Synthetic corpus shards (``shards.synth`` -> ``shards.build``) in ``encoding``."""
        if not self._shards:
            from bench.loader import synthetic_png, transcode

            workers = max(1, min(16, os.cpu_count() or 1))
            png = synthetic_png(self.tmp / "data", self.sizes.corpus, self.sizes.shard_size, workers=workers)
            self._shards = {"png": png}
            for enc in ("raw", "jpeg"):
                self._shards[enc] = transcode(png, self.tmp / "data" / enc, enc)
        return self._shards[encoding]

    def recipe(self):
        """The paper config as the repository ships it."""
        from pretrain.config import PretrainConfig
        from sonodistill.config import load_config

        return load_config(PretrainConfig, PAPER_YAML)

    def config(self, batch: int, size: int, compile: bool = False):
        """The paper config pointed at the synthetic raw shards and the random teacher, one micro-batch
        of ``batch`` per step at ``size`` px. Every pretraining key this bench sets is set here."""
        cfg = self.recipe()
        cfg.out, cfg.resume = str(self.tmp / "run"), "none"
        cfg.data.shards = str(self.shards("raw"))
        cfg.teacher.name_or_path = str(self.teacher())
        if self.sizes.student is not None:
            cfg.student.name, cfg.student.head_hidden = self.sizes.student, self.sizes.head
        cfg.student.compile = compile
        cfg.image_size = size
        cfg.train.batch_size = cfg.train.global_batch = batch
        return cfg


# --- timing helpers ---------------------------------------------------------------------------------


def timed(b: Bench, fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes, the device synchronised before and after."""
    b.sync()
    t0 = time.perf_counter()
    fn()
    b.sync()
    return time.perf_counter() - t0


def peak_gib(b: Bench) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if b.device.type == "cuda" else None


def release(b: Bench) -> None:
    gc.collect()
    if b.device.type == "cuda":
        # a sticky CUDA error raises here again: the part's own error is the result
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


# --- the step: whole vs model-only, teacher share, peak memory -------------------------------------


def measure_step(b: Bench, cfg, teacher: bool = True) -> dict:
    """The trainer's step on loader batches vs on ready views (see :func:`time_session`), with the
    session built by the trainer's own ``setup`` and released afterwards."""
    from pretrain.trainer import setup

    release(b)
    t0 = time.perf_counter()
    session = setup(cfg)
    stream = iter(session.loader)
    try:
        return {**time_session(b, session, stream, teacher), "setup_s": round(time.perf_counter() - t0, 1)}
    finally:
        stream.close()  # ends the loader's workers
        session.accelerator.free_memory()
        session = stream = None
        release(b)


def time_session(b: Bench, s, stream, teacher: bool) -> dict:
    """Images/s of the whole step (``pretrain.trainer``: batch_images, make_view, backward_view,
    optimizer_step) and of the model alone on two ready views, in alternating blocks (medians);
    the teacher's share of the model-only step; peak GPU memory."""
    from pretrain.step import make_view
    from pretrain.trainer import backward_view, batch_images, optimizer_step

    cfg = s.cfg
    s.model.train()
    max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
    batch = cfg.train.batch_size
    ready = [make_view(batch_images(next(stream), s.device), s.augment, s.teacher) for _ in range(2)]

    def whole(n: int) -> None:
        for _ in range(n):
            loss = backward_view(s, make_view(batch_images(next(stream), s.device), s.augment, s.teacher))
            optimizer_step(s, max_norm)
        loss.item()  # one sync per block, as the trainer syncs once per log interval

    def model(n: int) -> None:
        for i in range(n):
            loss = backward_view(s, ready[i % 2])
            optimizer_step(s, max_norm)
        loss.item()

    first = timed(b, lambda: model(1)) + timed(b, lambda: whole(1))  # compiles, autotunes, starts workers
    per_step = min(timed(b, lambda: model(2)), timed(b, lambda: whole(2))) / 2
    n = max(2, int(b.sizes.block_s / max(per_step, 1e-6)))
    w, m = [], []
    for _ in range(b.sizes.rounds):
        w.append(batch * n / timed(b, lambda: whole(n)))
        m.append(batch * n / timed(b, lambda: model(n)))
    out = {
        "batch": batch,
        "size": cfg.image_size,
        "whole_img_s": round(statistics.median(w), 1),
        "model_img_s": round(statistics.median(m), 1),
        "ratio": round(statistics.median([a / c for a, c in zip(w, m)]), 3),
        "steps_per_block": n,
        "first_steps_s": round(first, 1),
        "peak_gib": peak_gib(b),
    }
    if teacher:
        with torch.inference_mode():
            t = timed(b, lambda: [s.teacher(ready[i % 2]) for i in range(n)])
        out["teacher_share"] = round((t / n) / (batch / out["model_img_s"]), 3)
    return out


def step_rate(b: Bench, batch: int, size: int, teacher: bool = True) -> dict:
    """:func:`measure_step` of the paper config at ``batch`` and ``size``, measured once per run."""
    key = (batch, size)
    if key not in b.steps:
        b.steps[key] = measure_step(b, b.config(batch, size), teacher)
    return b.steps[key]


def part_step(b: Bench) -> dict:
    rows: dict[str, dict] = {}
    for batch in b.sizes.batches:
        try:
            rows[str(batch)] = step_rate(b, batch, b.sizes.size)
        except Exception as exc:  # a batch that does not fit (OOM, a cuBLAS/cuDNN workspace) is a result
            rows[str(batch)] = {"batch": batch, "error": one_line(exc)}
            release(b)
    return {"size": b.sizes.size, "batches": rows}


def part_wall_time(b: Bench) -> dict:
    """Hours of the recipe on 8 and 64 GPUs from the whole-step rate at each one's per-GPU batch."""
    cfg = b.recipe()
    size = b.sizes.recipe_size or cfg.image_size
    images = cfg.train.epochs * RECIPE_IMAGES
    rows = {}
    for gpus in RECIPE_GPUS:
        per_gpu = max(1, min(cfg.train.batch_size, cfg.train.global_batch // gpus, b.sizes.recipe_batch_cap))
        r = step_rate(b, per_gpu, size, teacher=False)
        rows[str(gpus)] = {
            "per_gpu_batch": per_gpu,
            "img_s_per_gpu": r["whole_img_s"],
            "hours": round(images / (gpus * r["whole_img_s"]) / 3600, 3),
            "peak_gib": r["peak_gib"],
        }
    return {
        "size": size,
        "images": images,
        "global_batch": cfg.train.global_batch,
        "gpus": rows,
        "assumes": "linear scaling from one GPU; all-reduce, checkpoints and start-up not counted",
    }


# --- the loader at the measured rate ----------------------------------------------------------------


def loader_rate(b: Bench, shards: Path, batch: int, workers: int, seconds: float) -> float:
    """Images/s of ``ShardLoader`` (the paper config's mode and shuffle) copied to the device."""
    from shards.stream import ShardLoader

    cfg = b.recipe()
    loader = ShardLoader(
        str(shards),
        batch_size=batch,
        mode=cfg.data.mode,
        shuffle_buffer=cfg.data.shuffle_buffer,
        num_workers=workers,
        pin_memory=b.device.type == "cuda",
    )
    it = iter(loader)
    try:
        for _ in range(3 * workers):  # workers started, first shards mapped
            next(it)["image"].to(b.device, non_blocking=True)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += next(it)["image"].to(b.device, non_blocking=True).shape[0]
        b.sync()
        return n / (time.perf_counter() - t0)
    finally:
        it.close()


def target_rate(b: Bench) -> tuple[float, str]:
    """The rate one GPU consumes: the recipe's whole step at 64 per GPU, else the step table's."""
    wall = b.results.get("wall_time", {})
    if wall.get("ok"):
        r = wall["gpus"][str(RECIPE_GPUS[0])]
        return r["img_s_per_gpu"], f"wall_time: recipe step, {wall['size']} px, batch {r['per_gpu_batch']}"
    step = b.results.get("step", {})
    for batch, r in (step.get("batches") or {}).items():
        if "whole_img_s" in r:
            return r["whole_img_s"], f"step: {step['size']} px, batch {batch}"
    raise RuntimeError("no measured step rate to feed (the step and wall_time parts failed)")


def part_loader(b: Bench) -> dict:
    target, source = target_rate(b)
    batch = min(64, b.sizes.batches[-1])
    cores = os.cpu_count() or 1
    seconds = 3 * b.sizes.block_s
    rows = {}
    for enc in ("raw", "jpeg"):
        shards = b.shards(enc)
        one = loader_rate(b, shards, batch, 1, seconds)
        need = max(1, math.ceil(target / one))
        run = min(need, max(1, cores - 1))
        got = one if run == 1 else loader_rate(b, shards, batch, run, seconds)
        rows[enc] = {
            "one_worker_img_s": round(one, 1),
            "cores_per_gpu": round(target / one, 3),
            "workers_needed": need,
            "workers_run": run,
            "img_s": round(got, 1),
            "keeps_up": got >= target,
        }
    return {"target_img_s": target, "target": source, "batch": batch, "cpu_cores": cores, "encodings": rows}


# --- augmentations: GPU vs CPU ---------------------------------------------------------------------


def augment_rate(b: Bench, aug, images: torch.Tensor, seconds: float) -> float:
    aug(images)  # warm-up: kernels, workspace buffers
    n, t = 0, 0.0
    while t < seconds:
        t += timed(b, lambda: aug(images))
        n += images.shape[0]
    return n / t


def part_augment(b: Bench) -> dict:
    from pretrain.augment import PretrainAugmentConfig, build_augment
    from shards.stream import ShardLoader

    size = b.sizes.recipe_size or b.recipe().image_size
    batch = 256 if b.device.type == "cuda" else 16
    images = next(iter(ShardLoader(str(b.shards("raw")), batch_size=batch, mode="loop", num_workers=0)))["image"]
    torch.manual_seed(0)
    aug = build_augment(PretrainAugmentConfig(preset="us-physics"), size)
    cpu_threads = torch.get_num_threads()
    cpu_batch = min(batch, 64)  # per-image rates: the CPU's at 64 (past its cache-sized best), the GPU's at 256
    cpu = augment_rate(b, aug, images[:cpu_batch], 2 * b.sizes.block_s) if b.device.type == "cuda" else None
    dev = augment_rate(b, aug.to(b.device), images.to(b.device), 2 * b.sizes.block_s)
    if cpu is None:  # the smoke run: the "device" is the CPU
        cpu, cpu_batch = dev, batch
    out = {
        "preset": "us-physics",
        "size": size,
        "batch": batch,
        "cpu_batch": cpu_batch,
        "device_img_s": round(dev, 1),
        "cpu_img_s": round(cpu, 1),
        "cpu_threads": cpu_threads,
        "device_over_cpu": round(dev / cpu, 2),
    }
    try:
        step, _ = target_rate(b)
        out["share_of_step"] = round(step / dev, 3)  # augmentation time per image / step time per image
    except RuntimeError as exc:  # the step part failed: its own error is recorded there; say why here too
        out["share_of_step"] = None
        out["share_of_step_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return out


# --- one downstream cell ---------------------------------------------------------------------------


def part_downstream(b: Bench) -> dict:
    from downstream.config import RunConfig
    from downstream.runner import run
    from shards.synth import write_busi

    z = b.sizes
    data = b.tmp / "busi"
    write_busi(data, n=z.busi, seed=0, workers=max(1, min(16, os.cpu_count() or 1)))
    cfg = RunConfig(
        task="busi-seg", data=str(data), encoder=z.busi_encoder, mode="finetune", out=str(b.tmp / "busi_run")
    )
    cfg.image_size = z.busi_size
    cfg.train.epochs = z.busi_epochs
    cfg.num_workers = min(8, max(1, (os.cpu_count() or 2) - 1))
    cfg.edge.enabled = False  # the edge column is a CPU cost (bench/sweep_overhead.py), not this cell's training
    t0 = time.perf_counter()
    m = run(cfg)
    cell = time.perf_counter() - t0
    seen = m["n_train"] * z.busi_epochs
    return {
        "task": "busi-seg finetune",
        "encoder": z.busi_encoder,
        "size": z.busi_size,
        "images": z.busi,
        "n_train": m["n_train"],
        "epochs": z.busi_epochs,
        "cell_s": round(cell, 1),
        "s_per_epoch": round(cell / z.busi_epochs, 2),
        "train_img_s": m["train_images_per_s"],
        # linear in training images x epochs: the full BUSI (780 images, same split) at 50 epochs
        "busi780_50ep_s_est": round(cell / seen * (780 * m["n_train"] / z.busi) * 50, 0),
        "test_dice": round(m["test"]["dice"], 4),
    }


# --- DeepSpeed ZeRO-2 through accelerate launch ------------------------------------------------------


def run_bounded(cmd: list[str], env: dict, timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own process group; past ``timeout`` the whole group is ended (the launcher
    and the training process it started). Returns (exit code, stderr + stdout tail)."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        raise TimeoutError(f"accelerate launch did not finish in {timeout:.0f} s; last output: {out[-300:]}") from None
    return proc.returncode, out


def hide_broken_deepspeed(probe: bool = True) -> str | None:
    """Why an installed DeepSpeed cannot be imported (None: it can, or it is not installed); a broken
    one is hidden from this process, since accelerate imports it inside transformers'
    ``save_pretrained`` whenever it is installed and would fail every part that saves a teacher.
    Without ``probe`` (no deepspeed part to run) it is hidden untried: no other part uses it."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return None
    if not probe:
        sys.modules["deepspeed"] = None
        return None
    try:
        done = subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        reason = "import deepspeed took over 60 s"
    else:
        if done.returncode == 0:
            return None
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        reason = f"import deepspeed failed: {tail[0][:300]}"
    sys.modules["deepspeed"] = None  # find_spec() now answers None: accelerate takes it as not installed
    return reason


def part_deepspeed(b: Bench) -> dict:
    if b.deepspeed_broken:
        raise RuntimeError(b.deepspeed_broken)
    smoke = b.args.smoke
    accel = REPO / "launch" / "accelerate" / ("deepspeed_zero2_cpu.yaml" if smoke else "deepspeed_zero2.yaml")
    out_dir = b.tmp / "deepspeed"
    overrides = {
        "data.shards": b.shards("raw"),
        "teacher.name_or_path": b.teacher(),
        "out": out_dir,
        "resume": "none",
        "train.max_steps": b.sizes.ds_steps,
        "train.log_every": max(1, b.sizes.ds_steps // 2),
    }
    if smoke:  # tiny.yaml's CPU run, smaller still
        overrides |= {
            "student.name": b.sizes.student,
            "student.head_hidden": b.sizes.head,
            "num_workers": 1,
            "train.batch_size": 2,
            "train.global_batch": 4,
        }
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if smoke:
        env["DS_ACCELERATOR"] = "cpu"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accel), "--num_processes", "1"]
    cmd += [str(REPO / "pretrain" / "run.py"), "--config", str(TINY_YAML if smoke else PAPER_YAML)]
    cmd += [f"{k}={v}" for k, v in overrides.items()]
    t0 = time.perf_counter()
    code, text = run_bounded(cmd, env, timeout=max(10.0, b.left() - 5))
    wall = time.perf_counter() - t0
    if code != 0:
        last = [line for line in text.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"exit {code}: {last[0][:300]}")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed_rows = [r for r in rows if "images_per_s" in r]
    return {
        "runs": True,
        "config": str(accel.relative_to(REPO)),
        "steps": rows[-1]["step"],
        "img_s": round(timed_rows[-1]["images_per_s"], 1),
        "peak_gib": round(timed_rows[-1]["gpu_memory_gib"], 2) if "gpu_memory_gib" in timed_rows[-1] else None,
        "final_loss": round(rows[-1]["loss"], 5),
        "launch_to_exit_s": round(wall, 1),
    }


# --- torch.compile ---------------------------------------------------------------------------------


def part_compile(b: Bench) -> dict:
    batch = b.sizes.compile_batch
    cfg = b.config(batch, b.sizes.size, compile=True)
    if b.args.smoke:
        # Inductor's C++ build takes over a minute cold on 2 CPU cores; aot_eager traces the same graphs
        # (dynamo + AOT autograd) through the trainer's own ``student.compile()`` without generating code.
        from unittest import mock

        original = torch.nn.Module.compile
        with mock.patch.object(torch.nn.Module, "compile", lambda self: original(self, backend="aot_eager")):
            on = measure_step(b, cfg, teacher=False)
    else:
        on = measure_step(b, cfg, teacher=False)
    off = step_rate(b, batch, b.sizes.size, teacher=False)
    return {
        "batch": batch,
        "size": b.sizes.size,
        "backend": "aot_eager (smoke)" if b.args.smoke else "inductor",
        "compile_s": on["first_steps_s"],
        "on": {k: on[k] for k in ("whole_img_s", "model_img_s", "peak_gib")},
        "off": {k: off[k] for k in ("whole_img_s", "model_img_s", "peak_gib")},
        "speedup_model": round(on["model_img_s"] / off["model_img_s"], 3),
    }


# --- running the parts, the report -----------------------------------------------------------------

PART_FNS: dict[str, Callable[[Bench], dict]] = {
    "step": part_step,
    "wall_time": part_wall_time,
    "loader": part_loader,
    "augment": part_augment,
    "downstream": part_downstream,
    "deepspeed": part_deepspeed,
    "compile": part_compile,
}


def run_part(b: Bench, name: str) -> dict:
    need = {"compile": b.sizes.compile_need_s, "deepspeed": b.sizes.deepspeed_need_s}.get(name, 10.0)
    if b.left() < need:
        return {"ok": False, "skipped": f"budget: {b.left():.0f} s left, the part needs about {need:.0f} s"}
    t0 = time.perf_counter()
    try:
        out = {"ok": True, **PART_FNS[name](b)}
    except Exception as exc:  # a failed part is a result: recorded, and the next part runs
        traceback.print_exc(file=sys.stderr)
        out = {"ok": False, "error": one_line(exc)}
        release(b)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(
        f"[gpu bench] {name}: {'ok' if out['ok'] else out.get('error', out.get('skipped'))} "
        f"({out['seconds']} s, {b.left():.0f} s left)",
        file=sys.stderr,
        flush=True,
    )
    return out


def report(b: Bench, summary: dict) -> list[str]:
    """The table: one block of rows per part."""
    r = b.results
    lines = [
        f"device {summary['device_name']} · torch {summary['torch']} · smoke {summary['smoke']} · "
        f"{summary['elapsed_s']} s of a {summary['budget_s']:.0f} s budget"
    ]

    def row(first: str, *cells: object) -> None:
        lines.append(f"{first:<34}" + "".join(f"{'-' if c is None else c!s:>14}" for c in cells))

    for name in PARTS:
        p = r.get(name)
        if p is None:
            continue
        if not p["ok"]:
            lines.append(f"{name}: NOT MEASURED: {p.get('error', p.get('skipped'))}")
            continue
        lines.append(f"{name} ({p['seconds']} s)")
        if name == "step":
            row("  batch @ px", "whole img/s", "model img/s", "ratio", "teacher", "peak GiB")
            for batch, q in p["batches"].items():
                if "error" in q:
                    row(f"  {batch} @ {p['size']}", q["error"][:60])
                else:
                    row(
                        f"  {batch} @ {p['size']}",
                        q["whole_img_s"],
                        q["model_img_s"],
                        q["ratio"],
                        q.get("teacher_share"),
                        q["peak_gib"],
                    )
        elif name == "wall_time":
            row("  GPUs (batch per GPU)", "img/s/GPU", "hours", "peak GiB")
            for gpus, q in p["gpus"].items():
                row(f"  {gpus} ({q['per_gpu_batch']} @ {p['size']} px)", q["img_s_per_gpu"], q["hours"], q["peak_gib"])
        elif name == "loader":
            row(f"  to feed {p['target_img_s']:.0f} img/s", "1 worker", "workers", "img/s", "keeps up")
            for enc, q in p["encodings"].items():
                row(f"  {enc}", q["one_worker_img_s"], q["workers_needed"], q["img_s"], q["keeps_up"])
        elif name == "augment":
            row("  us-physics", "device img/s", "CPU img/s", "ratio", "step share")
            row(
                f"  batch {p['batch']} (CPU {p['cpu_batch']}) @ {p['size']} px",
                p["device_img_s"],
                p["cpu_img_s"],
                p["device_over_cpu"],
                p.get("share_of_step"),
            )
        else:
            keys = [k for k, v in p.items() if k not in ("ok", "seconds") and not isinstance(v, dict)]
            lines.append("  " + ", ".join(f"{k} {p[k]}" for k in keys))
            for k, v in p.items():
                if isinstance(v, dict):
                    lines.append(f"  {k}: " + ", ".join(f"{kk} {vv}" for kk, vv in v.items()))
    return lines


def write_out(out: str | None, summary: dict, lines: list[str]) -> None:
    if not out:
        return
    from sonodistill.atomic import write_json, write_text

    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / "gpu.json", summary)
    write_text(Path(out) / "gpu.txt", "\n".join([*lines, json.dumps(summary)]) + "\n")


def summarise(b: Bench) -> dict:
    return {
        "bench": "gpu",
        "device": b.device.type,
        "device_name": torch.cuda.get_device_name() if b.device.type == "cuda" else "cpu",
        "smoke": b.args.smoke,
        "torch": torch.__version__,
        "budget_s": b.args.budget,
        "dev_shm_gib": round(shutil.disk_usage("/dev/shm").total / 2**30, 1) if os.path.isdir("/dev/shm") else None,
        "elapsed_s": round(time.perf_counter() - b.t0, 1),
        **b.results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="every part at tiny sizes on the CPU")
    ap.add_argument("--out", help="folder for gpu.json and gpu.txt (the table and the JSON)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, in this order: {','.join(PARTS)}")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (340 on a GPU, 240 smoke)")
    args = ap.parse_args()
    if args.budget is not None and not args.budget > 0:
        raise UserError(f"--budget {args.budget:g}: expected a positive number of seconds")
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"--parts: unknown part {unknown[0]}; expected some of {', '.join(PARTS)}")
    if not args.smoke and not torch.cuda.is_available():
        summary = {"device": "cpu", "skipped": True}
        print(json.dumps(summary))
        write_out(args.out, summary, [])
        return
    if args.smoke:  # the CPU even where there is a GPU: the smoke run checks the code paths, not a device
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.budget is None:
        args.budget = 240.0 if args.smoke else 340.0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: random teacher, synthetic data
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        b = Bench(args, Path(tmp))
        b.deepspeed_broken = hide_broken_deepspeed(probe="deepspeed" in parts)  # before a teacher is saved
        for name in PARTS:
            if name in parts:
                b.results[name] = run_part(b, name)
                summary = summarise(b)
                write_out(args.out, summary, report(b, summary))  # what is measured survives a run cut short
        summary = summarise(b)
        lines = report(b, summary)
    print("\n".join(lines))
    write_out(args.out, summary, lines)
    print(json.dumps(summary))
    missing = [f"{k} ({v.get('error') or v.get('skipped')})" for k, v in b.results.items() if not v["ok"]]
    if missing:  # the figures that exist are written above; the exit code says they are not all there
        sys.exit(f"error: {len(missing)} part(s) not measured: {'; '.join(missing)}")


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
