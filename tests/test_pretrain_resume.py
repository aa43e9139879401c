"""Preemption: SIGTERM -> checkpoint -> exit 75, and the resumed run ends bit-identical.

The signal goes to the whole process group, loader workers included, as SLURM sends it on a preemption.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dist.tiny_pretrain import REPO, TINY_YAML, tiny_config, tiny_overrides

from pretrain.checkpoint import list_checkpoints
from pretrain.trainer import train
from sonodistill.jsonl import read_jsonl
from sonodistill.stop import EXIT_PREEMPTED, StopRequest

# Mixup, random crops/flips/blur, 2-step accumulation and 2 data workers: every source of randomness
# and every piece of state that resume has to restore is in play.
RUN = dict(train__max_steps=12, train__log_every=1, train__save_every=100, mixup__prob=1.0, num_workers=2)


def test_stop_request_flags_signals_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert stop.requested and stop.received == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_sigterm_then_resume_equals_uninterrupted_run(shard_dir, tiny_teacher_dir, tmp_path, monkeypatch, caplog):
    out = tmp_path / "interrupted"
    log = tmp_path / "stderr.txt"
    cmd = [
        sys.executable,
        str(REPO / "pretrain" / "run.py"),
        "--config",
        str(TINY_YAML),
        *tiny_overrides(shard_dir, tiny_teacher_dir, out, **RUN),
    ]
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ), start_new_session=True
        )
        try:
            deadline = time.time() + 240
            while time.time() < deadline and proc.poll() is None:
                steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
                if steps and steps[-1] >= 2:
                    os.killpg(proc.pid, signal.SIGTERM)  # the run and its 2 loader workers
                    break
                time.sleep(0.05)
            rc = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:  # a failed run must not outlive the test
                proc.kill()
    stderr = log.read_text()
    assert rc == EXIT_PREEMPTED, stderr[-3000:]
    ckpts = list_checkpoints(out)
    assert len(ckpts) == 1, ckpts
    k = ckpts[0][0]
    assert 2 <= k < 12
    assert f"stopped by SIGTERM after step {k}" in stderr

    reference = train(tiny_config(shard_dir, tiny_teacher_dir, tmp_path / "reference", **RUN))
    saved = json.loads((ckpts[0][1] / "loader_rank0.json").read_text())["num_workers"]
    # requeued onto one core: the loader keeps the checkpoint's workers, the order they deal
    import sonodistill.workers

    monkeypatch.setattr(sonodistill.workers, "available_cores", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="pretrain.trainer"):
        resumed = train(tiny_config(shard_dir, tiny_teacher_dir, out, **RUN))
    if saved > 1:
        assert f"resume: {saved} loader workers as when the checkpoint was written (not 1)" in caplog.text
    assert resumed.step == reference.step == 12

    got, want = resumed.student.state_dict(), reference.student.state_dict()
    assert got.keys() == want.keys()
    differing = [name for name in want if not torch.equal(got[name], want[name])]
    assert not differing, differing[:5]
    # Per-step losses too: the interrupted+resumed history is the uninterrupted one, with no repeats.
    a = [(r["step"], r["loss"]) for r in read_jsonl(out / "metrics.jsonl")]
    b = [(r["step"], r["loss"]) for r in read_jsonl(tmp_path / "reference" / "metrics.jsonl")]
    assert a == b and len(b) == 12


def test_a_fresh_start_beside_another_runs_checkpoints_is_refused(tmp_path):
    """resume=none (or an older checkpoint) in an out folder holding newer checkpoints would interleave a
    second run's checkpoints with the first's, and keep_last would delete the new ones."""
    from pretrain.checkpoint import resolve_resume, step_dir
    from sonodistill.errors import UserError

    assert resolve_resume("none", tmp_path) is None  # an empty out folder: a fresh run
    for step in (6, 9):
        step_dir(tmp_path, step).mkdir(parents=True)
        (step_dir(tmp_path, step) / "meta.json").write_text(json.dumps({"step": step}))
    with pytest.raises(UserError, match=r"resume=none: out .* holds checkpoints of a run up to step_00000009"):
        resolve_resume("none", tmp_path)
    with pytest.raises(UserError, match="up to step_00000009"):
        resolve_resume(str(step_dir(tmp_path, 6)), tmp_path)
    assert resolve_resume("auto", tmp_path) == step_dir(tmp_path, 9)
    assert resolve_resume(str(step_dir(tmp_path, 9)), tmp_path) == step_dir(tmp_path, 9)
    assert resolve_resume(str(step_dir(tmp_path, 6)), tmp_path / "elsewhere") == step_dir(tmp_path, 6)
    gone = step_dir(tmp_path, 3)  # removed by keep_last: named as gone, with the checkpoints there are
    with pytest.raises(UserError, match=rf"^resume: '{gone}' does not exist \(the newest checkpoints in {tmp_path}: "
                       r"step_00000006, step_00000009; train.keep_last removes older ones\)$"):  # fmt: skip
        resolve_resume(str(gone), tmp_path)
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match="is not a complete checkpoint folder"):
        resolve_resume(str(tmp_path / "half"), tmp_path)


def test_a_resume_with_other_views_batch_seed_or_teacher_is_refused(shard_dir, tiny_teacher_dir, tmp_path, caplog):
    """Resuming continues *this* run: settings that change what it trains (views, augmentations, batch,
    seed, the teacher's weights wherever they lie) are refused, naming each; the length may grow."""
    import shutil

    from sonodistill.dinov3 import init_tiny
    from sonodistill.errors import UserError

    out = tmp_path / "run"
    run = dict(train__max_steps=2, train__save_every=2, num_workers=0)
    train(tiny_config(shard_dir, tiny_teacher_dir, out, **run))
    moved = Path(shutil.copytree(tiny_teacher_dir, tmp_path / "moved"))  # the same teacher at another path
    other = tmp_path / "other"
    init_tiny(other, seed=1)
    ckpt = list_checkpoints(out)[-1][1]
    for teacher, extra, said in (
        (tiny_teacher_dir, {"image_size": 32}, "image_size 64 -> 32"),
        (tiny_teacher_dir, {"seed": 3, "augment__preset": "none"}, "augment.preset 'us' -> 'none'; seed 0 -> 3"),
        (other, {}, "teacher: other weights than the checkpoint's"),
    ):
        with pytest.raises(UserError) as exc:
            train(tiny_config(shard_dir, teacher, out, **{**run, **extra}))
        assert str(exc.value) == (
            f"resume: checkpoint {ckpt} was trained with other settings ({said}); set them back to continue it, "
            "or give a new out for a new run"
        ), str(exc.value)
    resumed = train(tiny_config(shard_dir, moved, out, **{**run, "train__max_steps": 3, "num_workers": 1}))
    assert resumed.step == 3
    with caplog.at_level(logging.INFO, logger="pretrain.trainer"):
        again = train(tiny_config(shard_dir, moved, out, **{**run, "train__max_steps": 3}))
    assert again.step == 3 and "the run is finished (3 of 3 steps): nothing to train" in caplog.text


def test_a_resume_on_another_shard_set_or_global_batch_is_refused(shard_dir, tiny_teacher_dir, tmp_path, caplog):
    """The shard set is compared by its manifest (a copied folder resumes), the global batch as trained
    (with ``train.global_batch=0`` it follows the batch size); a finished run's config.yaml stays."""
    import shutil

    from sonodistill.errors import UserError

    out = tmp_path / "run"
    run = dict(train__max_steps=2, train__save_every=2, num_workers=0, train__global_batch=0)
    train(tiny_config(shard_dir, tiny_teacher_dir, out, **run))
    ckpt = list_checkpoints(out)[-1][1]
    other = Path(shutil.copytree(shard_dir, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "num_samples": manifest["num_samples"] - 1}))
    for shards, extra, said in (
        (other, {}, f"another shard set ({shard_dir.name}, manifest sha256 "),
        (shard_dir, {"train__batch_size": 2}, "another global batch (4 -> 2 = batch_size x processes x accumulation)"),
    ):
        with pytest.raises(UserError, match=r"^resume: checkpoint .* was trained on ") as exc:
            train(tiny_config(shards, tiny_teacher_dir, out, **{**run, **extra}))
        assert said in str(exc.value) and str(exc.value).endswith("or give a new out for a new run")
    copied = Path(shutil.copytree(shard_dir, tmp_path / "copied"))
    assert train(tiny_config(copied, tiny_teacher_dir, out, **{**run, "train__max_steps": 3})).step == 3
    before = (out / "config.yaml").read_text()
    with caplog.at_level(logging.INFO, logger="pretrain.trainer"):
        train(tiny_config(copied, tiny_teacher_dir, out, **{**run, "train__max_steps": 1}))
    assert "nothing to train" in caplog.text and (out / "config.yaml").read_text() == before  # still max_steps 3
    assert ckpt.exists()


def test_a_damaged_checkpoint_is_named_and_a_lost_random_state_warned(shard_dir, tiny_teacher_dir, tmp_path, caplog):
    import shutil

    from sonodistill.errors import UserError

    out = tmp_path / "run"
    run = dict(train__max_steps=2, train__save_every=2, num_workers=0)
    train(tiny_config(shard_dir, tiny_teacher_dir, out, **run))
    ckpt = list_checkpoints(out)[-1][1]
    saved = tmp_path / "saved"
    shutil.copytree(ckpt, saved)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError) as exc:
        train(tiny_config(shard_dir, tiny_teacher_dir, out, **{**run, "train__max_steps": 3}))
    assert str(exc.value).startswith(f"resume: checkpoint {ckpt} does not fit this config or is damaged (")
    assert str(exc.value).endswith(
        f"if it is damaged, move it out of {ckpt.parent} and resume=auto continues from the one before"
    )
    shutil.rmtree(ckpt)
    shutil.copytree(saved, ckpt)
    (ckpt / "random_states_0.pkl").write_bytes(b"cut")
    (ckpt / "loader_rank0.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        assert train(tiny_config(shard_dir, tiny_teacher_dir, out, **{**run, "train__max_steps": 3})).step == 3
    assert "resume: random_states_0.pkl of the checkpoint missing or unreadable; those ranks'" in caplog.text
    assert "resume: loader_rank0.json of the checkpoint missing or unreadable: data order restarts" in caplog.text


def test_a_stream_reshuffled_on_resume_continues_exactly_on_the_next(shard_dir, tiny_teacher_dir, tmp_path, caplog):
    """After a resume without its loader position (another world size, a lost file) the stream is
    reseeded; a later resume at the same world size must continue that stream, not restart it."""
    import shutil

    run = dict(train__max_steps=2, train__save_every=2, num_workers=0, data__record_keys=True)
    straight = tmp_path / "straight"
    train(tiny_config(shard_dir, tiny_teacher_dir, straight, **run))
    (list_checkpoints(straight)[-1][1] / "loader_rank0.json").unlink()
    stopped = tmp_path / "stopped"
    shutil.copytree(straight, stopped)
    train(tiny_config(shard_dir, tiny_teacher_dir, straight, **{**run, "train__max_steps": 4}))
    train(tiny_config(shard_dir, tiny_teacher_dir, stopped, **{**run, "train__max_steps": 3}))  # saves step 3
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train(tiny_config(shard_dir, tiny_teacher_dir, stopped, **{**run, "train__max_steps": 4}))
    assert "resume" not in caplog.text and "shard loader" not in caplog.text  # an exact continuation
    keys = [read_jsonl(out / "keys" / "rank0.jsonl") for out in (straight, stopped)]
    assert sorted({r["step"] for r in keys[1]}) == [1, 2, 3, 4] and keys[0] == keys[1]


def test_a_resume_on_another_list_of_shards_is_refused(shard_dir, tiny_teacher_dir, tmp_path):
    """A brace pattern has no manifest: its shards' names tell the list (a copy elsewhere resumes)."""
    import shutil

    from sonodistill.errors import UserError

    tars = sorted(p.name for p in shard_dir.glob("*.tar"))
    assert len(tars) >= 3
    stem, first, last = tars[0][: tars[0].rindex("-") + 1], tars[0].split("-")[-1][:-4], tars[-1].split("-")[-1][:-4]
    pattern = lambda folder, end: f"{folder}/{stem}{{{first}..{end}}}.tar"  # noqa: E731
    out = tmp_path / "run"
    run = dict(train__max_steps=2, train__save_every=2, num_workers=0, data__encoding="any")
    train(tiny_config(pattern(shard_dir, last), tiny_teacher_dir, out, **run))
    fewer = tars[1].split("-")[-1][:-4]
    with pytest.raises(UserError, match=rf"another shard list \({len(tars)} -> 2 shards, or other names\)"):
        train(tiny_config(pattern(shard_dir, fewer), tiny_teacher_dir, out, **{**run, "train__max_steps": 3}))
    copied = Path(shutil.copytree(shard_dir, tmp_path / "copied"))
    assert train(tiny_config(pattern(copied, last), tiny_teacher_dir, out, **{**run, "train__max_steps": 3})).step == 3


def test_source_weights_written_another_way_are_the_same_setting():
    """A YAML map (a dict) and the same map on the command line (a string), in another order and with
    a source at 0, were refused on resume as other settings."""
    from pretrain.checkpoint import changed_on_resume
    from pretrain.config import PretrainConfig
    from sonodistill.config import load_config, to_dict

    def cfg(weights):
        return load_config(PretrainConfig, None, ["data.mode=resampled", f"data.source_weights={weights}"])

    meta = {"config": to_dict(cfg("{breast: 3, thyroid: 1, cardiac: 1}"))}
    same = cfg("{cardiac: 1.0, thyroid: 1, breast: 3, liver: 0}")
    same.data.source_weights = {"cardiac": 1.0, "thyroid": 1.0, "breast": 3.0, "liver": 0.0}  # as YAML gives it
    assert changed_on_resume(meta, same, {}) == []
    assert changed_on_resume(meta, cfg("{breast: 2, thyroid: 1, cardiac: 1}"), {}) == [
        "data.source_weights.breast 3.0 -> 2.0"
    ]
    older = {"config": {**meta["config"], "data": {**meta["config"]["data"], "source_weights": "tau=inf"}}}
    assert changed_on_resume(older, cfg("tau=0.5"), {}) == ["data.source_weights 'tau=inf' -> 0.5"]
