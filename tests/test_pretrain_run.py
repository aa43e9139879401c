"""The trainer in-process on CPU: outputs, checkpoints, resume=auto, schedule, and every bad input."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from dist.tiny_pretrain import REPO, tiny_config, tiny_overrides
from safetensors.torch import load_file
from test_remote import serve  # noqa: F401  (fixture: a real HTTP server)

from pretrain.checkpoint import list_checkpoints, read_meta
from pretrain.config import PretrainConfig
from pretrain.student import build_student
from pretrain.trainer import TrainingDiverged, _accumulation, _max_steps, train
from sonodistill.config import ConfigError, load_config
from sonodistill.errors import UserError
from sonodistill.jsonl import read_jsonl
from sonodistill.optim import build_optimizer, warmup_steps
from sonodistill.precision import frozen_dtype, resolve_mixed_precision
from sonodistill.world import check_world_size, use_cpu


@pytest.fixture(scope="module")
def first_run(shard_dir, tiny_teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(tiny_config(shard_dir, tiny_teacher_dir, out))
    return out, result


def test_run_writes_checkpoints_metrics_and_plots(first_run, shard_dir):
    out, result = first_run
    assert result.step == 6 and result.max_steps == 6 and not result.preempted and result.exit_code == 0
    assert [s for s, _ in list_checkpoints(out)] == [3, 6]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp left
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (out / "checkpoints" / "step_00000006").iterdir()}
    assert modes["student.safetensors"] == modes["model.safetensors"] == 0o666 & ~umask, modes  # not 0600
    meta = read_meta(out / "checkpoints" / "step_00000006")
    assert meta["step"] == 6 and meta["accumulation"] == 2 and meta["global_batch"] == 8
    assert meta["samples_seen"] == 48 and meta["teacher"]["embed_dim"] == 128
    assert meta["data"]["num_samples"] == json.loads((shard_dir / "manifest.json").read_text())["num_samples"]
    # resolved config written next to the outputs, and it reloads to the same config
    again = load_config(PretrainConfig, out / "config.yaml")
    assert again == tiny_config(shard_dir, meta["teacher"]["name_or_path"], out)
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in recs)
    assert all(r["grad_norm"] > 0 for r in recs)

    # the rate each step trained at: a 2-step warm-up from 0 (as DINOv2's and transformers'
    # schedules start), the peak at step 3, then cosine toward min_lr, reached after the last step
    def cosine(k: int) -> float:  # the schedule after k optimiser steps
        return 1e-3 * k / 2 if k < 2 else 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * (k - 2) / (6 - 2)))

    assert [r["lr"] for r in recs] == pytest.approx([cosine(k - 1) for k in range(1, 7)], rel=1e-6, abs=1e-12)
    assert "images_per_s" in recs[-1]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tb").glob("events.out.tfevents.*"))
    # student.safetensors is the plain state dict of backbone + head, equal to the returned model
    sd = load_file(str(out / "checkpoints" / "step_00000006" / "student.safetensors"))
    student = build_student("resnet10t", 128, 64, 64, 16)
    student.load_state_dict(sd, strict=True)
    live = result.student.state_dict()
    assert all(torch.equal(sd[k], live[k]) for k in sd)


def test_resume_auto_continues_and_prunes(first_run, shard_dir, tiny_teacher_dir, caplog):
    out, _ = first_run
    with caplog.at_level(logging.WARNING, logger="pretrain.trainer"):
        result = train(tiny_config(shard_dir, tiny_teacher_dir, out, train__max_steps=9))
    assert result.step == 9 and "replace the checkpoint's" not in caplog.text  # the same optimiser settings
    assert [s for s, _ in list_checkpoints(out)] == [6, 9]  # keep_last=2
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, 10))
    # Already finished: resuming does nothing and keeps the weights.
    again = train(tiny_config(shard_dir, tiny_teacher_dir, out, train__max_steps=9))
    assert again.step == 9 and [s for s, _ in list_checkpoints(out)] == [6, 9]


def test_resume_trains_at_the_configured_lr_and_weight_decay(first_run, shard_dir, tiny_teacher_dir, tmp_path, caplog):
    """torch restores an optimiser's learning rate and weight decay with its moments: a run resumed
    with a lower train.lr (as a diverged run's message advises) trains at the new one, from the
    schedule's position."""
    ckpt = first_run[0] / "checkpoints" / "step_00000006"
    out = tmp_path / "lower"
    new = dict(resume=ckpt, train__max_steps=9, train__lr=4e-4, train__weight_decay=0.1)
    with caplog.at_level(logging.WARNING, logger="pretrain.trainer"):
        assert train(tiny_config(shard_dir, tiny_teacher_dir, out, **new)).step == 9
    assert "the config's values replace the checkpoint's: lr 0.001 -> 0.0004, weight_decay 0.05 -> 0.1\n" in caplog.text

    def cosine(k: int) -> float:  # after k steps: 2 warm-up steps, then down to min_lr after step 9
        return 1e-6 + (4e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * (k - 2) / (9 - 2)))

    lrs = [r["lr"] for r in read_jsonl(out / "metrics.jsonl")]
    assert lrs == pytest.approx([cosine(k - 1) for k in (7, 8, 9)], rel=1e-6)  # the rate steps 7-9 trained at


def test_resume_auto_ignores_half_written_checkpoints(first_run, tmp_path):
    import shutil

    from pretrain.checkpoint import prune, resolve_resume

    out = tmp_path / "copy"
    shutil.copytree(first_run[0] / "checkpoints", out / "checkpoints")
    newest = resolve_resume("auto", out)
    (out / "checkpoints" / ".step_00000099.tmp").mkdir()  # a save killed before its rename
    (out / "checkpoints" / ".step_00000099.tmp" / "model.safetensors").write_bytes(b"torn")
    (out / "checkpoints" / "step_00000098").mkdir()  # a folder without meta.json is not a checkpoint
    assert resolve_resume("auto", out) == newest and newest.name == list_checkpoints(out)[-1][1].name
    assert resolve_resume("none", tmp_path / "empty") is None and resolve_resume("auto", tmp_path / "empty") is None
    assert resolve_resume(str(newest), out) == newest
    kept = list_checkpoints(out)
    prune(out, 0)  # after the next save: the torn one goes, every checkpoint stays
    assert not (out / "checkpoints" / ".step_00000099.tmp").exists() and list_checkpoints(out) == kept


def test_schedule_and_accumulation_arithmetic(caplog):
    cfg = PretrainConfig()
    cfg.train.epochs, cfg.train.warmup_epochs = 1000.0, 10.0
    # the paper: ~162k images, global batch 512
    assert _max_steps(cfg, 162_000, 512) == math.ceil(1000 * 162_000 / 512)
    assert warmup_steps(cfg.train, 162_000 / 512, 10**6) == math.ceil(10 * 162_000 / 512)
    cfg.train.max_steps, cfg.train.warmup_steps = 50, 100
    assert _max_steps(cfg, 162_000, 512) == 50
    assert warmup_steps(cfg.train, 162_000 / 512, 50) == 49  # the last step runs at the peak
    assert caplog.records == []  # said only where the run is set up
    with caplog.at_level(logging.WARNING, logger="sonodistill.optim"):
        assert warmup_steps(cfg.train, 162_000 / 512, 50, warn=True) == 49
        cfg.train.warmup_steps = 0  # the warm-up set in epochs: the message names that key
        assert warmup_steps(cfg.train, 162_000 / 512, 50, warn=True) == 49
    assert [r.getMessage() for r in caplog.records] == [
        "warm-up of 100 steps is as long as the run (50 steps) or longer: cut to 49, so the learning rate reaches "
        "its peak at the last step and never decays; lower train.warmup_steps",
        "warm-up of 3165 steps is as long as the run (50 steps) or longer: cut to 49, so the learning rate reaches "
        "its peak at the last step and never decays; lower train.warmup_epochs",
    ]
    cfg.train.warmup_steps = 100
    assert _accumulation(cfg, world=8) == (512, 1)
    assert _accumulation(cfg, world=1) == (512, 8)
    cfg.train.global_batch = 0
    assert _accumulation(cfg, world=4) == (256, 1)
    cfg.train.global_batch = 100
    with pytest.raises(UserError, match="train.global_batch: 100 is not a multiple of .* = 64 x 1 = 64"):
        _accumulation(cfg, world=1)
    # the paper config on 2 nodes x 8 GPUs: 64 x 16 would overshoot 512, so each process takes 32
    cfg.train.global_batch, caplog.records[:] = 512, []
    with caplog.at_level(logging.WARNING, logger="pretrain.trainer"):
        assert _accumulation(cfg, world=16) == (512, 1) and cfg.train.batch_size == 32
    assert caplog.records[-1].getMessage() == (
        "train.batch_size: 64 per process x 16 processes is more than train.global_batch=512; each process takes 32"
    )
    cfg.train.batch_size = 64
    with pytest.raises(UserError, match="train.global_batch: 512 is not a multiple of .* = 64 x 3 = 192"):
        _accumulation(cfg, world=3)
    cfg.train.max_steps = 0
    with pytest.raises(UserError, match="train.max_steps: must be set"):
        _max_steps(cfg, None, 512)


def test_adamw_decays_weights_but_not_norms_or_biases():
    cfg = PretrainConfig()
    student = build_student("resnet10t", 128, 64, 64, 16)
    opt = build_optimizer(student, cfg.train)
    assert isinstance(opt, torch.optim.AdamW)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, p in student.named_parameters():
        expected = no_decay if (p.ndim <= 1 or name.endswith(".bias")) else decay
        assert id(p) in expected, name
    assert all(g["lr"] == 1e-4 and g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    bn_weights = [m.weight for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn_weights and all(id(w) in no_decay for w in bn_weights)
    assert id(student.head.fc1.weight) in decay and id(student.head.fc1.bias) in no_decay


def test_world_size_check_and_device_choice():
    # accelerate launch decides the device itself; torchrun/srun/python on a GPU-less host -> CPU (gloo)
    assert use_cpu({"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "no"}) is False
    assert use_cpu({"ACCELERATE_USE_DEEPSPEED": "true"}) is False
    assert use_cpu({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}) is (not torch.cuda.is_available())
    cpu = torch.device("cpu")
    assert resolve_mixed_precision("auto", cpu) == "no" and frozen_dtype(cpu) is None
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        resolve_mixed_precision("fp16", cpu)
    # a V100/T4 (compute capability 7.x) only emulates bf16: auto runs float32 there, an explicit bf16 is refused
    gpu = torch.device("cuda")
    emulated = lambda including_emulation=True: including_emulation  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_bf16_supported", emulated)
        assert resolve_mixed_precision("auto", gpu) == "no" and frozen_dtype(gpu) is None  # float32
        with pytest.raises(UserError, match="this GPU has no bf16 support"):
            resolve_mixed_precision("bf16", gpu)
        mp.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        assert resolve_mixed_precision("auto", gpu) == "bf16" and frozen_dtype(gpu) == torch.bfloat16
    check_world_size(2, "MULTI_CPU", {"WORLD_SIZE": "2"})
    check_world_size(1, "NO", {})
    with pytest.raises(UserError, match="WORLD_SIZE=2 .* accelerate sees 1 \\(NO\\)"):
        check_world_size(1, "NO", {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})


def test_unknown_key_lists_valid_keys(shard_dir, tiny_teacher_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.max_step'; valid keys: .*train.max_steps"):
        load_config(PretrainConfig, None, ["train.max_step=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher:\n  layer: [-1]\n")
    with pytest.raises(ConfigError, match="unknown key 'teacher.layer'; valid keys: teacher.name_or_path"):
        load_config(PretrainConfig, bad)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"data__shards": "/no/such/shards"}, "data.shards: cannot open '/no/such/shards'"),
        ({"teacher__name_or_path": "/no/such/teacher"}, "teacher.name_or_path: cannot load '/no/such/teacher'"),
        ({"image_size": 48}, "image_size: 48 px is not a multiple of the student 'resnet10t' stride 32"),
        ({"student__out_dim": 100}, "student.out_dim: 100 does not match the teacher embedding dim 128"),
        ({"train__global_batch": 6}, "train.global_batch: 6 is not a multiple"),
        ({"resume": "/no/such/ckpt"}, "resume: '/no/such/ckpt' does not exist (the newest checkpoints in"),
        ({"mixup__prob": 2}, "mixup.prob"),
        ({"data__encoding": "raw"}, "data.encoding: this config expects raw shards, '"),
        ({"image_size": 128}, "image_size: 128 px is larger than the 64 px of the shards in"),
        ({"data__gpu_decode": True}, "decode 'device': needs JPEG shards, these are png"),
    ],
)
def test_bad_inputs_fail_before_training(shard_dir, tiny_teacher_dir, tmp_path, override, message):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=re.escape(message)):
        train(tiny_config(shard_dir, tiny_teacher_dir, out, **override))
    assert not list_checkpoints(out)


def test_a_folder_of_the_users_own_files_is_refused_and_kept(shard_dir, tiny_teacher_dir, tmp_path):
    """``out`` pointed at a folder of other files: one line, and its config.yaml is not replaced."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("mine: true\n")
    (out / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=re.escape(f"out {out}: holds files pretraining (pretrain/run.py) did not")):
        train(tiny_config(shard_dir, tiny_teacher_dir, out))
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.txt"]
    assert (out / "config.yaml").read_text() == "mine: true\n"


def test_nan_loss_stops_naming_step_and_keeps_last_good_checkpoint(
    first_run, shard_dir, tiny_teacher_dir, tmp_path, monkeypatch
):
    import pretrain.trainer as trainer_mod

    out = tmp_path / "run"
    good = train(tiny_config(shard_dir, tiny_teacher_dir, out, train__max_steps=3))
    good_ckpt = good.last_checkpoint
    before = load_file(str(good_ckpt / "student.safetensors"))
    # the resumed run's loss turns NaN (as a diverging run's does): it must stop, not checkpoint NaN weights
    real = trainer_mod.distill_loss
    monkeypatch.setattr(trainer_mod, "distill_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    message = r"loss became nan at step 4; the last good checkpoint is .*step_00000003"
    with pytest.raises(TrainingDiverged, match=message):
        train(tiny_config(shard_dir, tiny_teacher_dir, out, train__max_steps=9))
    assert [s for s, _ in list_checkpoints(out)] == [3]
    after = load_file(str(good_ckpt / "student.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cli_exit_code_and_one_line_error(shard_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    args = tiny_overrides(shard_dir, tmp_path / "missing_teacher", tmp_path / "out")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "pretrain" / "run.py"),
            "--config",
            str(REPO / "pretrain" / "configs" / "tiny.yaml"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "teacher.name_or_path: cannot load" in lines[0]
    assert "Traceback" not in proc.stderr


def test_upsampling_small_shards_is_allowed_only_on_purpose(shard_dir, tiny_teacher_dir, tmp_path, serve):  # noqa: F811
    """Refused for a folder, and for a brace pattern of shards (no manifest), local or remote: the
    pattern's size comes from its first local shard, or over HTTP from the first batch."""
    from pretrain.trainer import _check_shard_size

    manifest = json.loads((shard_dir / "manifest.json").read_text())
    size = manifest["settings"]["size"]
    first, last = manifest["shards"][0], manifest["shards"][-1]
    assert first.startswith("shard-") and last.startswith("shard-")
    pattern = f"shard-{{{first[6:12]}..{last[6:12]}}}.tar"
    base, _ = serve(shard_dir.parent)
    for shards in (shard_dir, f"{shard_dir}/{pattern}", f"{base}/{shard_dir.name}/{pattern}"):
        with pytest.raises(
            UserError, match=f"larger than the {size} px of the shards .* every image would be upsampled"
        ):
            train(tiny_config(shards, tiny_teacher_dir, tmp_path / "run", image_size=2 * size, train__max_steps=1))
    assert not list_checkpoints(tmp_path / "run")
    _check_shard_size(
        tiny_config(shard_dir, tiny_teacher_dir, tmp_path, image_size=2 * size, data__allow_upsample=True), size
    )
    _check_shard_size(tiny_config(shard_dir, tiny_teacher_dir, tmp_path, image_size=size // 2), size)  # downsampling


def test_a_rerun_from_step_0_hides_the_killed_runs_curve_points(tmp_path):
    """A run killed before its first checkpoint restarts at step 0: TensorBoard must show each step
    once, as metrics.jsonl does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretrain.metrics import MetricsLog

    for loss in (1.0, 2.0):  # the killed run, then the rerun
        metrics = MetricsLog(tmp_path, 0)
        for step in (1, 2, 3):
            metrics.log(step, loss=loss)
        metrics.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.0), (2, 2.0), (3, 2.0)]
    assert [r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [2.0, 2.0, 2.0]


def test_skipped_shards_and_samples_are_counted_apart(shard_dir, tiny_teacher_dir, tmp_path, caplog):
    """An unreadable shard was reported as 1 of the "skipped corrupt samples" (and `skipped_samples`
    in metrics.jsonl): shards and samples are counted apart."""
    import shutil

    from shards.stream import skipped_counts

    assert skipped_counts({"unreadable_shard": 2, "bad_shard": 1, "corrupt": 3, "bad_size": 1}) == (3, 4)
    names = json.loads((shard_dir / "manifest.json").read_text())["shards"]
    listed = tmp_path / "list"
    listed.mkdir()
    shutil.copyfile(shard_dir / names[0], listed / names[0])
    (listed / "shard-999999.tar").write_bytes(b"not a tar file" * 100)
    shards = f"{listed}/shard-{{{names[0][6:12]},999999}}.tar"  # a brace list: one shard and the junk
    cfg = tiny_config(shards, tiny_teacher_dir, tmp_path / "run", train__max_steps=6, train__log_every=1,
                      num_workers=0, data__max_skipped_share=1.0)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pretrain.trainer"):
        train(cfg)
    last = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]
    passes = last["skipped_shards"]  # the junk shard, once per pass over the two
    assert passes >= 1 and last["skipped_samples"] == 0
    said = f"skipped while reading the shards in this run (resumes included): {passes} shard read(s) and 0 sample(s)"
    assert f"{said} (bad_shard {passes})" in caplog.text  # a tar file that does not parse
