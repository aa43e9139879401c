"""KD recipes as sweep rows: same splits and label subsets as the encoder rows, n/a rows with reasons,
the edge table and Pareto plots, resume; the methods syntax and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_downstream_models import one_thread, save_encoder  # noqa: F401  (shared helper + fixture)

from downstream.sweep import SweepConfig, run_sweep
from sonodistill.config import load_config
from sonodistill.errors import UserError
from sonodistill.jsonl import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _cfg(busi_dir, ddti_dir, export, out, methods: str) -> SweepConfig:
    return load_config(
        SweepConfig,
        REPO / "downstream/configs/tiny.yaml",
        [
            f"busi={busi_dir}",
            f"ddti={ddti_dir}",
            f"out={out}",
            "tasks=[ddti-seg,busi-cls]",
            f"encoders=[R18-Rand=rand:resnet18,R18-Distill={export}]",
            f"methods={methods}",
            "fractions=[0.5,1.0]",
            "linear_fractions=[0.5]",
            "run.image_size=32",
            "run.train.epochs=1",
            "run.num_workers=0",
            "run.probe.epochs=20",
            "run.edge.runs=2",
            "run.edge.warmup=0",
            "run.edge.rounds=1",
            "run.edge.quant.calib_images=2",
        ],
    )


METHODS = "[kd:vit_mobilenet?teacher.encoder=@R18-Distill,kd:seg_unet,kd:csa_moe]"


def test_kd_rows_share_splits_and_subsets_and_reach_every_table(busi_dir, ddti_dir, tmp_path):
    export = save_encoder(tmp_path / "export", "resnet18", seed=3)
    out = tmp_path / "sweep"
    summary = run_sweep(_cfg(busi_dir, ddti_dir, export, out, METHODS))
    # 2 tasks x (2 encoders x 1 linear fraction + 3 methods x 2 fine-tuning fractions)
    assert summary == {"ran": 16, "remaining": 0, "cells": 16, "done": 16}
    rows = read_jsonl(out / "results.jsonl")

    def row(task, name, frac):
        [r] = [
            r
            for r in rows
            if (r["cell"]["task_key"], r["cell"]["encoder_name"], r["cell"]["fraction"]) == (task, name, frac)
        ]
        return r

    # the KD cell trains on the encoder cells' split and nested label subset
    enc, kd = row("busi-cls", "R18-Rand", 0.5), row("busi-cls", "kd:vit_mobilenet", 0.5)
    subset = lambda r: json.loads((Path(r["config"]["out"]) / "subset.json").read_text())["train"]  # noqa: E731
    assert subset(kd) == subset(enc) and kd["config"]["split"]["file"] == enc["config"]["split"]["file"]
    assert kd["kd_config"]["split"]["file"] == enc["config"]["split"]["file"]
    recipe_metrics = json.loads((Path(kd["config"]["out"]) / "metrics.json").read_text())
    assert (
        recipe_metrics["splits"]["train"] == len(subset(enc))
        and recipe_metrics["splits"]["test"] == kd["metrics"]["n_test"]
    )
    assert set(subset(row("busi-cls", "kd:vit_mobilenet", 0.5))) < set(subset(row("busi-cls", "kd:vit_mobilenet", 1.0)))
    # run: settings reach the recipe; the method override picks the distilled encoder as teacher
    assert kd["kd_config"]["image_size"] == 32 and kd["kd_config"]["student"]["train"]["epochs"] == 1
    assert kd["kd_config"]["teacher"]["encoder"] == str(export)
    m = kd["metrics"]
    assert m["test"]["accuracy"] == recipe_metrics["models"]["distilled"]["accuracy"]
    assert m["teacher"]["accuracy"] == recipe_metrics["models"]["teacher"]["accuracy"] and m["scratch"] is not None
    assert m["edge"]["onnx"]["metric"] == "accuracy" and m["edge"]["threads"] == 1
    assert 0 < m["timing"]["train_s"] < m["time_s"]
    seg = row("ddti-seg", "kd:seg_unet", 0.5)
    assert seg["kd_config"]["teacher"]["encoder"] == str(export)  # defaults to the sweep's distilled encoder
    assert 0 <= seg["metrics"]["test"]["dice"] <= 1 and seg["metrics"]["edge"]["onnx"]["metric"] == "dice"
    assert row("busi-cls", "kd:csa_moe", 1.0)["metrics"]["na"].startswith("csa_moe: binary classifier")
    # a KD row is checked by the encoder its teacher is built from: here a timm export without provenance
    for r in (kd, seg):
        assert r["metrics"]["decontamination"]["reason"] == "no provenance"
    assert "onnx" in row("ddti-seg", "R18-Distill", 0.5)["metrics"]["edge"]
    assert "onnx" not in row("ddti-seg", "R18-Rand", 0.5)["metrics"]["edge"]  # a reference encoder

    tables = (out / "tables.md").read_text()
    t3 = tables.split("## Table 3:")[1].split("## Table 3b")[0]
    names = [line.split("|")[1].strip() for line in t3.splitlines() if line.startswith("| ") and "Model" not in line]
    names = [n for n in names if n != "---"]
    assert names == ["R18-Rand", "R18-Distill", "kd:vit_mobilenet", "kd:seg_unet", "kd:csa_moe"]  # KD rows below
    csa = next(line for line in t3.splitlines() if line.startswith("| kd:csa_moe"))
    assert csa.count("n/a (") == 2 and "csa_moe: classification recipe; DDTI Seg. is a segmentation task" in t3
    assert "csa_moe: binary classifier of benign, malignant" in t3
    assert "## Edge: metric vs CPU latency (ms, batch size 1)" in tables
    contamination = tables.split("## Test-set contamination")[1].split("\n## ")[0]
    assert "| kd:vit_mobilenet | – | not checked: no provenance |" in contamination
    assert "| kd:seg_unet | not checked: no provenance | – |" in contamination
    assert "kd:csa_moe" not in contamination  # no teacher: nothing to check
    busi_cell = next(line for line in t3.splitlines() if line.startswith("| kd:vit_mobilenet")).split("|")[-2]
    k = busi_cell.strip().rsplit("(", 1)[1].rstrip(")")  # the KD row's BUSI score carries the footnote
    assert f"({k}) not checked for test-set contamination (no provenance)" in t3
    edge = tables.split("### BUSI Cls.")[1]
    assert "| Model | Mode | Params (M) | GMACs | PyTorch ms | ORT fp32 ms | ORT INT8 ms | INT8 x | INT8 Δ |" in edge
    assert "| kd:vit_mobilenet | fine-tune |" in edge and "| R18-Distill | linear |" in edge
    assert not (out / "fractions_linear.png").exists()  # one linear fraction: no curve to draw
    for name in ("fractions_finetune.png", "pareto_DDTI_Seg.png", "pareto_BUSI_Cls.png"):
        assert (out / name).stat().st_size > 1000, name

    # resume: nothing re-runs; a changed method override re-runs that method's cells only
    assert run_sweep(_cfg(busi_dir, ddti_dir, export, out, METHODS))["ran"] == 0
    changed = METHODS.replace("kd:csa_moe", "kd:csa_moe?model.gate_hidden=32")
    again = run_sweep(_cfg(busi_dir, ddti_dir, export, out, changed))
    assert again["ran"] == 4 and again["done"] == 16  # csa_moe's 4 (n/a) cells, nothing else


def test_methods_syntax_and_errors(tmp_path, caplog):
    from downstream.kd.cell import parse_method
    from downstream.kd.registry import RECIPES

    m = parse_method("HDKD-wide=kd:hdkd?model.channels=[64,128,192]&loss.feature_weight=0")
    assert (m.name, m.recipe, m.overrides) == (
        "HDKD-wide",
        RECIPES["hdkd"],
        ("model.channels=[64,128,192]", "loss.feature_weight=0"),
    )
    assert parse_method("kd:nanoray").name == "kd:nanoray"
    with pytest.raises(UserError, match="unknown recipe 'resnet'.*vit_mobilenet, nanoray, hdkd, csa_moe, seg_unet"):
        parse_method("kd:resnet")
    with pytest.raises(UserError, match="names no sweep encoder; encoders: A"):
        parse_method("kd:nanoray?teacher.encoder=@B", {"A": "rand"})
    with pytest.raises(UserError, match="needs teacher.encoder=SPEC.*no distilled encoder"):
        parse_method("kd:seg_unet", {"R50-Rand": "rand", "DINO": "dinov3:x"})
    seg = parse_method("kd:seg_unet?student.unlabelled=true", {"R50-Rand": "rand", "D": "runs/export"})
    assert seg.overrides == ("teacher.encoder=runs/export", "student.unlabelled=true")  # the default teacher first
    # keys are checked when the sweep is read, against the recipe's own keys (not its paper reproduction's)
    with pytest.raises(UserError) as exc:
        parse_method("kd:hdkd?sweep.per_class=[5]")
    assert str(exc.value) == (
        "methods: 'kd:hdkd?sweep.per_class=[5]': sweep.per_class is a setting of the paper reproduction "
        "(python -m downstream.kd train --recipe hdkd), not of a sweep cell"
    )
    with pytest.raises(UserError, match="expects int"):
        parse_method("kd:nanoray?student.train.epochs=many")
    # values no stage runs with are refused when the sweep starts, naming the method (not cells in)
    for method, message in (
        ("kd:hdkd?loss.temperature=-2", "loss.temperature: must be a finite number > 0, got -2.0"),
        ("kd:nanoray?student.train.batch_size=0", "student.train.batch_size: expected at least 1, got 0"),
        ("kd:nanoray?teacher.train.epochs=0", "teacher.train.epochs: expected at least 1, got 0"),
        ("kd:vit_mobilenet?image_size=8", "image_size: expected at least 32 pixels, got 8"),
        (
            "kd:nanoray?student.train.select=accuracy",
            "student.train.select: expected auto, last or a validation metric val_<name> "
            "(val_loss, val_accuracy, val_dice, ...), got 'accuracy'",
        ),
    ):
        with pytest.raises(UserError) as exc:
            parse_method(method)
        assert str(exc.value) == f"methods: '{method}': {message}"
    with pytest.raises(UserError, match="recipe 'csa_moe' has no teacher"):
        parse_method("kd:csa_moe?teacher.encoder=rand")
    with pytest.raises(UserError) as exc:  # an old name and its new one: refused, as on the command line
        parse_method("kd:hdkd?loss.lam=1&loss.feature_weight=2")
    assert str(exc.value).endswith("both 'loss.lam' and 'loss.feature_weight' set 'loss.feature_weight'")
    # a select value renamed in issue 15 still works, with one warning naming the new value
    import logging

    with caplog.at_level(logging.WARNING, logger="downstream.fit"):
        for _ in range(2):
            parse_method("kd:nanoray?student.train.select=val_acc")
    assert [r.getMessage() for r in caplog.records if r.name == "downstream.fit"] == [
        "student.train.select: 'val_acc' is deprecated, use 'val_accuracy' (the old value still works for now)"
    ]
    cfg = SweepConfig(busi=str(tmp_path), encoders=["A=rand"], methods=["A=kd:nanoray"], tasks=["busi-cls"])
    with pytest.raises(UserError, match="row names must be unique"):
        run_sweep(cfg)


def test_a_replaced_teacher_checkpoint_is_another_input(busi_dir, ddti_dir, tmp_path):
    """A KD cell that loads a trained teacher: the file's stamp is in the cell key, as an encoder folder's."""
    import os

    from downstream.sweep import parse_grid, plan_cells

    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes(b"weights v1")
    cfg = _cfg(busi_dir, ddti_dir, save_encoder(tmp_path / "e", "resnet18"), tmp_path / "out", "[]")
    cfg.methods = [f"KDc=kd:vit_mobilenet?teacher.checkpoint={teacher}"]
    cfg.tasks, cfg.encoders = ["busi-cls"], []

    def keys() -> list[str]:
        plan = plan_cells(cfg, parse_grid(cfg))
        assert {f"file:{teacher}"} <= set(plan[0].inputs) and len(plan) == 2
        return [p.key for p in plan]

    first = keys()
    assert keys() == first  # stamps are stable
    teacher.write_bytes(b"weights v2")  # same size, written again
    os.utime(teacher, ns=(1, 1))
    assert set(keys()).isdisjoint(first)
