"""KD recipes as typed components: the Recipe protocol and its registry, the one-run reproduction a
recipe without a paper module gets, methods parsed once, one dataset read per KD cell with no file
round trips, renamed keys, and what ``--help`` / ``--show-config`` print."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from test_downstream_models import one_thread  # noqa: F401  (shared fixture)

from downstream.kd.__main__ import main
from downstream.kd.config import RecipeConfig
from downstream.kd.recipes.base import Recipe, RecipeResult, image_deployment, preset, recipe_part
from downstream.kd.registry import PAPERS, RECIPES, reproduction, reproduction_config
from downstream.sweep import SweepConfig, TaskSpec, cell_config, cells, kd_cell_config, parse_grid, run_sweep
from sonodistill.config import config_fields, load_config

REPO = Path(__file__).resolve().parents[1]


def test_registry_lists_typed_recipes_and_their_reproductions():
    assert list(RECIPES) == ["vit_mobilenet", "nanoray", "hdkd", "csa_moe", "seg_unet"]
    for name, recipe in RECIPES.items():
        assert isinstance(recipe, Recipe) and recipe.name == name and recipe.kind in ("cls", "seg")
        assert issubclass(recipe.config, RecipeConfig) and preset(name).is_file()
        paper = reproduction(name)
        assert paper is PAPERS[name] and paper.recipe is recipe and issubclass(paper.config, recipe.config)
        cfg = reproduction_config(name)
        own = recipe_part(recipe, cfg)  # a sweep cell runs the recipe's own part of the resolved config
        assert type(own) is recipe.config
        assert all(getattr(own, f.name) == getattr(cfg, f.name) for f in dataclasses.fields(recipe.config))
    assert RECIPES["csa_moe"].needs_masks and RECIPES["csa_moe"].teacher_outputs == ()
    assert RECIPES["seg_unet"].sweep_teacher and RECIPES["seg_unet"].kind == "seg"
    # the paper-only settings are the reproduction's, not the recipe's
    assert "sweep" not in config_fields(RECIPES["hdkd"].config) and "sweep" in config_fields(PAPERS["hdkd"].config)
    assert "repeats" in config_fields(PAPERS["csa_moe"].config) and "repeats" not in config_fields(
        RECIPES["csa_moe"].config
    )


class Majority(Recipe):
    """A recipe written for this test: predicts the training split's most frequent class."""

    name = "majority"
    config = RecipeConfig
    kind = "cls"
    teacher_outputs = ()

    def run(self, cfg, data, out):
        counts = torch.bincount(torch.tensor([r.label for r in data.parts["train"]]), minlength=len(data.classes))
        labels = [r.label for r in data.parts["test"]]
        acc = sum(y == int(counts.argmax()) for y in labels) / len(labels)
        student = {"accuracy": acc, "macro_f1": 0.0, "params": 0, "best_epoch": 0}
        metrics = {"recipe": self.name, "models": {"majority": student}, "history": {"majority": []}}
        return RecipeResult(metrics, student, image_deployment(torch.nn.Identity(), cfg.image_size, "cls"))

    def summary_entries(self):
        return []


def test_a_recipe_without_a_paper_module_runs_once(busi_dir, tmp_path):
    from downstream.kd.data import prepare
    from downstream.kd.papers.base import OneRun

    recipe = Majority()
    assert isinstance(recipe, Recipe)
    paper = OneRun(recipe)  # what the registry gives a recipe with no paper module
    cfg = RecipeConfig(image_size=32, split=dataclasses.replace(RecipeConfig().split, ratios=[0.6, 0.2, 0.2]))
    data = prepare(str(busi_dir), cfg, tmp_path)
    metrics = paper.reproduce(cfg, data, tmp_path)
    test = [r.label for r in data.parts["test"]]
    assert metrics["models"]["majority"]["accuracy"] == pytest.approx(max(test.count(k) for k in set(test)) / len(test))
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert "| student | " in (tmp_path / "report.md").read_text()


def _sweep(busi_dir, ddti_dir, out, methods: str, *extra: str) -> SweepConfig:
    return load_config(
        SweepConfig,
        REPO / "downstream/configs/tiny.yaml",
        [
            f"busi={busi_dir}",
            f"ddti={ddti_dir}",
            f"out={out}",
            "tasks=[ddti-seg,busi-cls]",
            "encoders=[R18=rand:resnet18]",
            f"methods={methods}",
            "fractions=[0.5,1.0]",
            "run.image_size=32",
            "run.train.epochs=1",
            "run.num_workers=0",
            *extra,
        ],
    )


def test_methods_are_parsed_once_into_typed_values(busi_dir, ddti_dir, tmp_path, monkeypatch):
    import downstream.kd.cell as cell
    import downstream.sweep as sweep

    calls = []
    parse = cell.parse_method
    monkeypatch.setattr(cell, "parse_method", lambda *a, **k: calls.append(a[0]) or parse(*a, **k))
    monkeypatch.setattr(sweep, "write_report", lambda *a, **k: None)  # no finished cell to report
    cfg = _sweep(busi_dir, ddti_dir, tmp_path / "sweep", "[kd:nanoray,HD=kd:hdkd?data.img_size=48]")
    summary = run_sweep(cfg, max_cells=0)  # plans every cell (configs, keys), runs none
    assert calls == ["kd:nanoray", "HD=kd:hdkd?data.img_size=48"]  # once per entry, for 8 KD cells
    assert summary["cells"] == 2 * (2 + 2 * 2) and summary["ran"] == 0
    grid = parse_grid(cfg)
    kd = [c for c in cells(cfg, grid) if c.method is not None]
    assert all(isinstance(c.method.recipe, Recipe) and isinstance(c.task, TaskSpec) for c in kd)
    assert kd[0].method.recipe is RECIPES["nanoray"] and kd[-1].method.overrides == ("image_size=48",)
    hd = next(c for c in kd if c.method.name == "HD" and c.task.kind == "cls")
    settings = kd_cell_config(cfg, hd, cell_config(cfg, hd))
    assert settings.config.image_size == 48 and type(settings.config) is RECIPES["hdkd"].config
    assert settings.digest["data"]["img_size"] == 48  # cell keys hash the names they were made with
    assert settings.digest["sweep"] == {"per_class": [0], "seed": 0}  # the paper's data-size sweep as one run


def test_a_kd_cell_reads_its_data_once_and_round_trips_nothing(busi_dir, ddti_dir, tmp_path, monkeypatch):
    import safetensors.torch

    import downstream.config as run_config
    import downstream.kd.data as kd_data
    from downstream.kd.cell import run_kd_cell

    reads = []
    for module in (run_config, kd_data):  # every dataset read of a cell goes through one of these
        real = module.read_catalog
        monkeypatch.setattr(module, "read_catalog", lambda *a, _real=real, **k: reads.append(a[0]) or _real(*a, **k))

    def refuse(*a, **k):
        raise AssertionError("a KD cell must not read files it wrote itself")

    monkeypatch.setattr(kd_data, "read_subset", refuse)  # the label subset is handed over in memory
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)  # the deployed model too
    edge = ["run.edge.runs=2", "run.edge.warmup=0", "run.edge.rounds=1", "run.edge.quant.calib_images=2"]
    cfg = _sweep(busi_dir, ddti_dir, tmp_path / "sweep", "[kd:vit_mobilenet]", "tasks=[busi-cls]", *edge)
    c = next(c for c in cells(cfg) if c.method is not None and c.fraction == 0.5)
    rc = cell_config(cfg, c)
    m = run_kd_cell(rc, c.method, kd_cell_config(cfg, c, rc), task_label="BUSI Cls.")
    assert reads == [str(busi_dir)]  # one read for the whole cell
    subset = json.loads((Path(rc.out) / "subset.json").read_text())["train"]  # the cell's record of its labels
    recipe = json.loads((Path(rc.out) / "metrics.json").read_text())
    assert m["n_train"] == recipe["splits"]["train"] == len(subset) < m["n_val"] + m["n_test"] + len(subset)
    assert m["test"]["accuracy"] == recipe["models"]["distilled"]["accuracy"]
    assert m["edge"]["onnx"]["metric"] == "accuracy" and m["params_m"] > 0


def test_renamed_kd_keys_warn_and_work(tmp_path, caplog, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("data: {img_size: 48, workers: 0, classes: [benign, malignant], split: {ratios: [0.6, 0.2, 0.2]}}\n")
    with caplog.at_level(logging.WARNING):
        cfg = reproduction_config("csa_moe", [old], ["data.subset=x.json", "data.reader.layout=busi"])
    assert (cfg.image_size, cfg.num_workers, cfg.classes, cfg.split.ratios) == (
        48,
        0,
        ["benign", "malignant"],
        [0.6, 0.2, 0.2],
    )
    assert (cfg.subset, cfg.reader.layout) == ("x.json", "busi")
    assert "'data.img_size' is deprecated, use 'image_size'" in caplog.text
    assert "'data.reader.layout' is deprecated, use 'reader.layout'" in caplog.text
    # HDKD's loss keys named after the paper's symbols (lambda, alpha_f): one-to-one renames
    with caplog.at_level(logging.WARNING):
        cfg = reproduction_config("hdkd", [], ["loss.lam=5", "loss.alpha_f=2"])
    assert (cfg.loss.feature_weight, cfg.loss.stage_exponent) == (5.0, 2.0)
    assert "'loss.lam' is deprecated, use 'loss.feature_weight'" in caplog.text
    # on the command line too, and the resolved config prints under the new names
    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", "nanoray", "--show-config", "data.img_size=96", "data.split.seed=5"])
    assert exc.value.code == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["image_size"] == 96 and shown["split"]["seed"] == 5 and "data" not in shown


def test_train_help_lists_the_chosen_recipes_keys(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", "hdkd", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "value after hdkd.yaml shown after =" in text
    assert "loss.feature_weight = 10.0" in text and "sweep.per_class = [50, 100, 150, 0]" in text  # preset values
    assert "model.dim = 256" in text and "DFLT embedding width" in text
    assert "data.img_size -> image_size" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "add --recipe NAME to --help" in capsys.readouterr().out


def test_show_config_prints_a_config_that_loads_back(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", "vit_mobilenet", "--show-config", "efficiency.runs=3", "loss.temperature=2"])
    assert exc.value.code == 0
    path = tmp_path / "shown.yaml"
    path.write_text(capsys.readouterr().out)
    again = reproduction_config("vit_mobilenet", [path])
    assert again == reproduction_config("vit_mobilenet", (), ["efficiency.runs=3", "loss.temperature=2"])


def test_a_saved_stage_is_the_same_bytes_whatever_the_process(tmp_path):
    """safetensors orders its metadata map differently in every process; the header is rewritten in
    key order, and the file still loads with its tensors and metadata."""
    from safetensors.torch import load_file

    from downstream.kd.checkpoint import read_arch, save_model

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "model.safetensors"
    save_model(model, path, arch={"name": "linear", "note": "é/x"}, trained_on=["ff", "aa"])
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = blob[8 : 8 + n].decode()
    assert header.index('"arch"') < header.index('"trained_on"') < header.index('"bias"')
    assert (8 + n) % 8 == 0  # the tensors stay aligned
    loaded = load_file(path)
    assert torch.equal(loaded["weight"], model.weight.detach()) and torch.equal(loaded["bias"], model.bias.detach())
    assert read_arch(path) == {"name": "linear", "note": "é/x"}
