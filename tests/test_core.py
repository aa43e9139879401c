"""The core package: logging and progress, JSON-lines logs, the optimiser/schedule builder."""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sonodistill import logs
from sonodistill.errors import UserError, cli_main
from sonodistill.jsonl import append_jsonl, read_jsonl, truncate_jsonl
from sonodistill.optim import OptimConfig, build_optimizer, build_scheduler, per_step, warmup_steps


def test_progress_is_a_log_line_not_a_bar_when_stderr_is_not_a_terminal(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a TTY, like a SLURM log or CI
    monkeypatch.setattr(logs, "MIN_INTERVAL", 0.0)
    monkeypatch.delenv("SONODISTILL_PROGRESS", raising=False)
    log = logging.getLogger("test.progress")
    log.propagate = True
    with caplog.at_level(logging.INFO, logger="test.progress"):
        bar = logs.progress(total=100, desc="train", unit="step", log_every=25, logger=log)
        assert isinstance(bar, logs.LogProgress)
        for _ in range(100):
            bar.update(1)
        bar.set_postfix(loss="0.5")
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[0].startswith("train: 25/100 step") and "\r" not in "".join(lines)
    assert sys.stderr.getvalue() == ""  # no carriage-return frames


def test_deepspeed_says_nothing_about_a_cpu_only_machine():
    """DeepSpeed (imported by accelerate and transformers on demand) warns on every CPU command that it
    falls back to the CPU; a command's logging set-up keeps that notice, and only that one, out."""
    script = (
        "import logging, sys\n"
        "from sonodistill.logs import setup_logging\n"
        "if sys.argv[1] == 'ours': setup_logging()\n"
        "from deepspeed.accelerator import get_accelerator\n"
        "get_accelerator()\n"
        "logging.getLogger('DeepSpeed').warning('a real DeepSpeed warning')\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    runs = {
        how: subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True, env=env, timeout=300)
        for how in ("plain", "ours")
    }
    assert all(r.returncode == 0 for r in runs.values())
    # DeepSpeed's logger writes to stdout, where a command's JSON goes
    assert "Setting accelerator to CPU" in runs["plain"].stdout  # what a command printed before
    assert "Setting accelerator to CPU" not in runs["ours"].stdout
    assert "a real DeepSpeed warning" in runs["ours"].stdout


def test_progress_is_silent_off_the_main_process(monkeypatch, caplog):
    monkeypatch.setattr(logs, "MIN_INTERVAL", 0.0)
    log = logging.getLogger("test.progress2")
    log.propagate = True
    with caplog.at_level(logging.INFO, logger="test.progress2"):
        bar = logs.progress(range(50), desc="x", main=False, logger=log, log_every=1)
        assert sum(1 for _ in bar) == 50
    assert caplog.records == []


def test_messages_and_errors_come_from_rank_zero_only(monkeypatch, capsys):
    monkeypatch.setattr(logs, "_HANDLER", None)
    for name in logs.ROOT_PACKAGES:
        logging.getLogger(name).handlers.clear()
    logs.setup_logging()
    log = logging.getLogger("downstream.example")

    @cli_main
    def command():
        log.info("hello")
        raise UserError("data: bad\nfolder")

    for rank, expect in (("1", ""), ("0", "hello")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exc:
            command()
        assert exc.value.code == 2  # every rank exits with the user-error code
        err = capsys.readouterr().err
        if expect:
            lines = err.strip().splitlines()
            assert lines[0].endswith("downstream.example: hello") and lines[1] == "error: data: bad folder"
        else:
            assert err == ""  # printed once per launch, by rank 0


def test_a_second_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    """Ctrl-C twice interrupts at once (sonodistill.stop): one line, the shell's code, no traceback."""
    monkeypatch.setenv("RANK", "0")

    @cli_main
    def command():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        command()
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted (Ctrl-C): stopped at once; what was saved before is kept"
    )


def test_a_module_run_with_python_m_logs_under_its_import_name(tmp_path):
    """``python -m shards.build`` logs as ``__main__``: its progress lines and messages reach stderr,
    named ``shards.build`` (they used to reach only Python's last-resort handler, warnings alone)."""
    (tmp_path / "src").mkdir()
    for i in range(3):
        Image.fromarray(np.full((96, 128), 40 * (i + 1), np.uint8)).save(tmp_path / "src" / f"{i}.png")
    env = {**os.environ, "SONODISTILL_PROGRESS": "log", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = ["-m", "shards.build", "--source", f"s={tmp_path / 'src'}", "--out", str(tmp_path / "out"), "--size", "64"]
    res = subprocess.run([sys.executable, *cmd, "--workers", "1"], capture_output=True, text=True, env=env)
    assert re.search(r"^\d\d:\d\d:\d\d shards\.build: build: 3/3 file", res.stderr, re.M), res.stderr
    assert res.returncode == 2 and "every input was rejected (no_tissue=3)" in res.stderr  # flat grey frames


def test_jsonl_survives_a_torn_line(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"step": 1})
    with open(path, "a") as fh:
        fh.write('{"step": 2, "loss"')  # killed mid-write
    assert read_jsonl(path) == [{"step": 1}]
    append_jsonl(path, {"step": 3})  # fenced off by a newline, not glued to the torn line
    assert read_jsonl(path) == [{"step": 1}, {"step": 3}]
    truncate_jsonl(path, 2)
    assert read_jsonl(path) == [{"step": 1}]
    assert path.read_text() == '{"step": 1}\n'


def model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )


def test_optimiser_never_decays_norms_or_biases_and_skips_frozen_parameters():
    m = model()
    m(torch.zeros(1, 3, 5, 5))
    m[0].requires_grad_(False)
    opt = build_optimizer(m, OptimConfig(optimizer="adamw", lr=0.1, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    plain = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decayed == {id(m[3].weight)}
    assert plain == {id(m[1].weight), id(m[1].bias), id(m[3].bias)}  # frozen conv left out
    assert isinstance(build_optimizer(m, OptimConfig(optimizer="adam")), torch.optim.Adam)
    with pytest.raises(UserError, match="nothing to train"):
        build_optimizer(m.requires_grad_(False), OptimConfig())


def test_optimiser_is_fused_and_steps_as_torchs_per_tensor_adamw():
    """The fused kernel on CPU too; three steps land where torch's per-tensor AdamW lands. No
    BatchNorm here: a bias before one has a gradient of pure rounding noise, whose sign Adam's
    normalised step follows, so any two kernels (or thread counts) part there."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(36, 2))
    ref, start = copy.deepcopy(m), m[3].weight.detach().clone()
    opt = build_optimizer(m, OptimConfig(optimizer="adamw", lr=0.1, weight_decay=0.05))
    assert all(g["fused"] for g in opt.param_groups)
    groups = [
        {"params": [p for p in ref.parameters() if (p.ndim > 1) is decay], "weight_decay": wd}
        for decay, wd in ((True, 0.05), (False, 0.0))
    ]
    ref_opt = torch.optim.AdamW(groups, lr=0.1, foreach=False)
    for step in range(3):
        x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(step))
        for net, o in ((m, opt), (ref, ref_opt)):
            o.zero_grad()
            net(x).square().sum().backward()
            o.step()
    for p, q in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(m[3].weight, start, atol=1e-2)  # the steps moved the weights


def test_cosine_schedule_shape_and_warmup_arithmetic():
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_epochs=0.5, min_lr=0.1)
    assert warmup_steps(cfg, 10, 100) == 5
    assert warmup_steps(OptimConfig(warmup_steps=7, warmup_epochs=3), 10, 100) == 7  # steps win
    assert warmup_steps(cfg, None, 100) == 0  # unknown epoch length: no warm-up
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10, total_steps=20)
    assert per_step(sched)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(1.0)  # linear warm-up from 0 over 5 steps
    mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))  # halfway through the decay
    assert lrs[5 + 15 // 2] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 15)))
    assert min(lrs[5:]) >= 0.1 and mid > 0.1
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # the floor after the last step
    plateau = build_scheduler(opt, OptimConfig(schedule="plateau"), 10, 20)
    assert not per_step(plateau) and build_scheduler(opt, OptimConfig(schedule="none"), 10, 20) is None
    for total in (1, 2, 3):  # a warm-up longer than the run: its last step runs at the peak
        opt = torch.optim.SGD([p], lr=1.0)
        sched = build_scheduler(opt, OptimConfig(lr=1.0, schedule="cosine", warmup_steps=10), None, total)
        lrs = []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs[-1] == pytest.approx(1.0) and lrs == sorted(lrs), lrs
