"""``bench/gpu.py``, the prepared GPU check: it must keep working although CI has no GPU.

``--smoke`` runs every part at tiny sizes on the CPU (the same code paths as on a GPU: the
trainer's setup and step functions, ShardLoader, the augmentations, accelerate + DeepSpeed, a
downstream cell); without a GPU and without ``--smoke`` the script says it skipped. Speeds are
not asserted, only that every part produced its figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: int = 900) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # this test is about the CPU behaviour
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def test_without_a_gpu_it_skips(tmp_path):
    _, summary = _run("--out", str(tmp_path))
    assert summary == {"device": "cpu", "skipped": True}
    assert json.loads((tmp_path / "gpu.json").read_text()) == summary


def test_a_failing_part_is_recorded_and_a_part_over_budget_is_skipped():
    gpu = _bench_module()
    b = gpu.Bench(argparse.Namespace(smoke=True, budget=100.0, out=None, parts=""), Path("/nonexistent"))

    def broken(_b):
        raise ValueError("shards missing\n  second line")

    gpu.PART_FNS["augment"] = broken
    out = gpu.run_part(b, "augment")
    assert out["ok"] is False and out["error"] == "ValueError: shards missing second line"
    assert out["seconds"] >= 0
    b.args.budget = 0.0
    out = gpu.run_part(b, "augment")
    assert out["ok"] is False and out["skipped"].startswith("budget: ")


def test_parts_not_measured_make_the_exit_code_1_after_the_json(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--parts", "augment", "--budget", "0.001", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 1
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["augment"]["ok"] is False and summary["augment"]["skipped"].startswith("budget: ")
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 1 part(s) not measured: augment (budget: ")
    assert json.loads((tmp_path / "gpu.json").read_text()) == summary


def _positive(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


@pytest.mark.slow
def test_smoke_runs_every_part(tmp_path):
    gpu = _bench_module()
    # A generous budget: the smoke must finish every part even on a slow, shared CI machine.
    proc, s = _run("--smoke", "--out", str(tmp_path), "--budget", "1500", timeout=1700)
    assert s["bench"] == "gpu" and s["device"] == "cpu" and s["smoke"] is True
    failed = {k: s[k] for k in gpu.PARTS if not s[k]["ok"]}
    assert not failed
    assert json.loads((tmp_path / "gpu.json").read_text()) == s
    assert "step (" in (tmp_path / "gpu.txt").read_text()

    step = s["step"]["batches"]
    assert sorted(step, key=int) == [str(b) for b in gpu.SMOKE.batches]
    for row in step.values():
        assert _positive(row["whole_img_s"], row["model_img_s"], row["ratio"], row["teacher_share"])
        assert row["peak_gib"] is None  # GPU memory: not measured on a CPU
    wall = s["wall_time"]
    assert wall["images"] == 1000 * gpu.RECIPE_IMAGES and wall["global_batch"] == 512
    assert set(wall["gpus"]) == {"8", "64"}
    assert all(_positive(r["hours"], r["img_s_per_gpu"]) for r in wall["gpus"].values())
    loader = s["loader"]
    assert _positive(loader["target_img_s"])
    for enc in ("raw", "jpeg"):
        r = loader["encodings"][enc]
        assert _positive(r["one_worker_img_s"], r["img_s"]) and r["workers_needed"] >= 1
        assert isinstance(r["keeps_up"], bool)
    assert _positive(s["augment"]["device_img_s"], s["augment"]["cpu_img_s"])
    down = s["downstream"]
    assert _positive(down["cell_s"], down["n_train"], down["train_img_s"]) and 0.0 <= down["test_dice"] <= 1.0
    ds = s["deepspeed"]
    assert ds["runs"] is True and ds["steps"] == gpu.SMOKE.ds_steps and _positive(ds["img_s"], ds["final_loss"])
    comp = s["compile"]
    assert _positive(comp["compile_s"], comp["on"]["model_img_s"], comp["off"]["model_img_s"])


def test_a_bench_script_logs_like_a_command_and_keeps_stdout_for_its_report(tmp_path):
    """Bench scripts run under the commands' own set-up: project log lines on stderr, library notices
    (DeepSpeed's CPU fallback, imported by accelerate while a probe trains) off stdout, whose last
    line is the JSON; bad input is one ``error:`` line and exit 2."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    probe = [sys.executable, "bench/probe.py", "--n", "40", "--size", "32", "--fractions", "1.0", "--seeds", "0"]
    proc = subprocess.run(probe, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.strip().splitlines()
    assert json.loads(out[-1])["bench"] == "probe" and not any(line.startswith("[") for line in out)
    assert "Setting accelerator to CPU" not in proc.stdout + proc.stderr
    assert "warning: encoder 'encoder' on busi-cls: no provenance" in proc.stderr  # formatted as ours, not bare
    bad = [sys.executable, "bench/edge.py", "--models", "nope"]
    proc = subprocess.run(bad, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: unknown model(s) ['nope']")


def test_a_deepspeed_that_cannot_import_fails_its_part_only(tmp_path, monkeypatch):
    """accelerate imports an installed DeepSpeed inside transformers' save_pretrained: one that is
    installed without its dependencies must cost the deepspeed part, not every part saving a teacher."""
    from accelerate.utils.imports import is_deepspeed_available

    gpu = _bench_module()
    fake = tmp_path / "site" / "deepspeed"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import einops_missing_here\n")
    info = tmp_path / "site" / "deepspeed-0.0.0.dist-info"  # accelerate checks the distribution too
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: deepspeed\nVersion: 0.0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delitem(sys.modules, "deepspeed", raising=False)
    assert is_deepspeed_available()
    reason = gpu.hide_broken_deepspeed()
    assert reason.startswith("import deepspeed failed: ModuleNotFoundError: No module named 'einops_missing_here'")
    assert not is_deepspeed_available()
    from sonodistill.dinov3 import init_tiny

    assert (init_tiny(tmp_path / "teacher", seed=0) / "config.json").is_file()  # saves as if DeepSpeed were absent
    b = gpu.Bench(argparse.Namespace(smoke=True, budget=100.0, out=None, parts=""), tmp_path)
    b.deepspeed_broken = reason
    out = gpu.run_part(b, "deepspeed")
    assert out["ok"] is False and out["error"] == f"RuntimeError: {reason}"


def test_a_budget_that_is_not_positive_is_refused():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--budget", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --budget 0: expected a positive number of seconds"
