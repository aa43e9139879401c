"""Renamed config keys, ``--help`` generated from the config dataclasses, ``--show-config``, and the
loader-worker cap: what a user relies on to find and keep their settings."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import yaml

from sonodistill.config import ConfigError, config_fields, load_config, to_dict, with_old_names
from sonodistill.config_cli import commented_yaml, field_notes


@dataclass
class Train:
    lr: float = 0.1  # peak learning rate
    seed: int = 0


@dataclass
class Data:
    workers: int = 2
    split: dict = field(default_factory=dict)


@dataclass
class Run:
    """A run."""

    RENAMED: ClassVar[dict[str, str]] = {"train.seed": "seed", "data.workers": "num_workers", "size": "image_size"}

    seed: int = 0  # everything random
    num_workers: int = 1  # loader processes
    image_size: int = 64  # pixels
    train: Train = field(default_factory=Train)


def test_renamed_keys_work_in_overrides_and_files_and_warn_naming_the_new_key(tmp_path, caplog):
    f = tmp_path / "old.yaml"
    f.write_text("size: 96\ntrain:\n  seed: 7\n  lr: 0.5\ndata:\n  workers: 3\n")
    with caplog.at_level(logging.WARNING, logger="sonodistill.config"):
        cfg = load_config(Run, f, ["train.seed=9"])
    assert (cfg.image_size, cfg.seed, cfg.num_workers, cfg.train.lr) == (96, 9, 3, 0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert any("'size' is deprecated, use 'image_size'" in m for m in lines)
    assert any("'data.workers' is deprecated, use 'num_workers'" in m for m in lines)
    assert any("override: 'train.seed' is deprecated, use 'seed'" in m for m in lines)
    assert all("\n" not in m for m in lines)  # one line each


def test_old_and_new_name_together_is_an_error(tmp_path):
    f = tmp_path / "both.yaml"
    f.write_text("size: 96\nimage_size: 128\n")
    with pytest.raises(ConfigError, match="both 'size' and its new name 'image_size' are given"):
        load_config(Run, f)
    for both in (["size=96", "image_size=128"], ["image_size=128", "size=96"]):  # on the command line too
        with pytest.raises(ConfigError, match="^override: both 'size' and its new name 'image_size' are given"):
            load_config(Run, None, both)
    assert load_config(Run, None, ["size=96", "size=80"]).image_size == 80
    assert load_config(Run, None, ["image_size=96", "image_size=80"]).image_size == 80  # a key twice: last wins


def test_with_old_names_puts_renamed_values_back_for_digests():
    old = with_old_names(Run, to_dict(Run(seed=5, num_workers=4)))
    assert old["train"]["seed"] == 5 and "seed" not in old
    assert old["data"]["workers"] == 4 and old["size"] == 64


def test_sweep_cell_key_digest_is_unchanged_by_the_shared_knob_renames():
    """A sweep finished before the renames keeps its cells: the digest sees the old layout."""
    from downstream.config import RunConfig

    d = with_old_names(RunConfig, to_dict(RunConfig(num_workers=3, mixed_precision="no")))
    assert d["train"]["num_workers"] == 3 and d["train"]["mixed_precision"] == "no"
    assert "num_workers" not in d and "mixed_precision" not in d


def test_pretraining_out_dir_is_out_like_every_other_command(tmp_path, caplog, capsys):
    """The output folder is ``out`` in every stage; a pretraining config or checkpoint that says
    ``out_dir`` still loads (a file or override with a warning, a run's own saved config silently)."""
    from pretrain.config import PretrainConfig
    from sonodistill.config import config_from_dict

    f = tmp_path / "old.yaml"
    f.write_text("out_dir: runs/a\n")
    with caplog.at_level(logging.WARNING, logger="sonodistill.config"):
        assert load_config(PretrainConfig, f).out == "runs/a"
        assert load_config(PretrainConfig, None, ["out_dir=runs/b"]).out == "runs/b"
    warned = [r.getMessage() for r in caplog.records]
    assert sum("'out_dir' is deprecated, use 'out'" in m for m in warned) == 2
    caplog.clear()
    saved = {**to_dict(PretrainConfig()), "out_dir": "runs/c"}
    del saved["out"]
    with caplog.at_level(logging.WARNING, logger="sonodistill.config"):
        assert config_from_dict(PretrainConfig, saved).out == "runs/c"
    assert caplog.records == []
    from pretrain.run import main

    with pytest.raises(SystemExit) as exc:  # --out, the flag every other command has
        main(["--out", "runs/d", "seed=4", "--show-config"])
    assert exc.value.code == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["out"], shown["seed"]) == ("runs/d", 4)
    with pytest.raises(SystemExit) as exc:  # a key and its flag both given: which was meant is a guess
        main(["out=runs/a", "--out", "runs/b", "--show-config"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "error: out: given twice (out=runs/a and --out runs/b); give one"
    with pytest.raises(SystemExit) as exc:  # a printed config is one that runs: its values are checked
        main(["--out", "runs/d", "train.lr=-1", "--show-config"])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and captured.out == ""
    assert captured.err.strip() == "error: train.lr: expected a positive number, got -1.0"


def _leaf_keys_without_meaning(cls: type, prefix: str = "") -> list[str]:
    notes, missing = field_notes(cls), []
    for name, tp in config_fields(cls).items():
        if dataclasses.is_dataclass(tp):
            missing += _leaf_keys_without_meaning(tp, prefix + name + ".")
        elif not notes.get(name):
            missing.append(prefix + name)
    return missing


def _command_configs() -> list[type]:
    from downstream.config import RunConfig
    from downstream.kd.registry import RECIPES, reproduction
    from downstream.sweep import SweepConfig
    from pretrain.config import PretrainConfig

    # every KD recipe's config as python -m downstream.kd train resolves it (the recipe's keys and its paper's)
    return [PretrainConfig, RunConfig, SweepConfig, *(reproduction(name).config for name in RECIPES)]


@pytest.mark.parametrize("cls", _command_configs(), ids=lambda c: c.__name__)
def test_every_key_of_a_command_has_a_one_line_meaning(cls):
    assert _leaf_keys_without_meaning(cls) == []


def test_pretrain_help_lists_every_key_with_default_and_meaning(capsys):
    from pretrain.config import PretrainConfig
    from pretrain.run import main
    from sonodistill.config import valid_keys

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for key in valid_keys(PretrainConfig):
        assert f"  {key} = " in out, key
    assert "image_size = 256" in out and "side of the square views" in out
    assert "augment.size -> image_size" in out  # renamed keys are listed too


def test_show_config_prints_commented_yaml_that_loads_back(tmp_path, capsys):
    from downstream.config import RunConfig
    from downstream.run import parse

    with pytest.raises(SystemExit) as exc:
        parse(["--task", "busi-cls", "--seed", "3", "--show-config", "train.lr=0.01", "train.num_workers=1"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "# label fraction of the training split" in text
    saved = tmp_path / "resolved.yaml"
    saved.write_text(text)
    again = load_config(RunConfig, saved)
    assert (again.task, again.seed, again.train.lr, again.num_workers) == ("busi-cls", 3, 0.01, 1)
    assert again == load_config(RunConfig, None, ["task=busi-cls", "seed=3", "train.lr=0.01", "num_workers=1"])
    assert yaml.safe_load(text) == to_dict(again)


def test_commented_yaml_round_trips_every_pretrain_value(tmp_path):
    from pretrain.config import PretrainConfig

    cfg = load_config(PretrainConfig, None, ["augment.crop_scale=[0.5,0.9]", "data.source_weights={a: 2.0}"])
    (tmp_path / "c.yaml").write_text(commented_yaml(cfg))
    assert load_config(PretrainConfig, tmp_path / "c.yaml") == cfg


def test_loader_workers_never_exceed_the_cores_of_this_process(monkeypatch):
    from sonodistill import workers

    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    monkeypatch.setattr(workers, "machine_cores", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    assert [workers.loader_workers(n) for n in (0, 1, 2, 4, 16)] == [0, 1, 2, 2, 2]
    monkeypatch.setattr(workers, "available_cores", lambda: 16)
    monkeypatch.setattr(workers, "machine_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert workers.loader_workers(4) == 2  # 16 cores shared by 8 ranks
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert workers.loader_workers(4) == 1  # never 0 when workers were asked for
    # a rank bound to 12 of the node's 96 cores (srun --cpus-per-task=12) has them to itself
    monkeypatch.setattr(workers, "machine_cores", lambda: 96)
    monkeypatch.setattr(workers, "available_cores", lambda: 12)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert workers.loader_workers(4) == 4 and workers.loader_workers(16) == 12
    monkeypatch.setattr(workers, "available_cores", lambda: 96)
    assert workers.loader_workers(16) == 12  # free to run anywhere: 96 cores shared by 8 ranks
    # torchrun's 8 ranks in a job (or container) limited to 32 of the 96 cores share those 32
    monkeypatch.setattr(workers, "available_cores", lambda: 32)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    assert workers.loader_workers(16) == 4
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert workers.loader_workers(16) == 4  # 32 x 8 ranks > 96: not each its own


def test_downstream_loader_uses_the_capped_worker_count(monkeypatch):
    import torch

    from downstream.loaders import make_loader
    from sonodistill import workers

    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    dl = make_loader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), 2, train=False, workers=4)
    assert dl.num_workers == 2


def test_a_checkpoint_config_saved_before_the_renames_reads_under_the_new_names(caplog):
    """pretrain.export and resume read a run's saved config: an older run's keys still count, silently."""
    from pretrain.config import PretrainConfig
    from sonodistill.config import config_from_dict

    old = {"augment": {"preset": "us", "size": 96}, "data": {"num_workers": 3}, "train": {"seed": 5, "lr": 0.5}}
    with caplog.at_level(logging.WARNING):
        cfg = config_from_dict(PretrainConfig, old)
    assert (cfg.image_size, cfg.num_workers, cfg.seed, cfg.train.lr) == (96, 3, 5, 0.5)
    assert not caplog.records


def test_overrides_may_follow_a_flag_and_anything_else_stays_an_error(capsys):
    """argparse fills ``key=value ...`` from its first run only: ``--splits-only run.num_workers=1``
    used to end in "unrecognized arguments" although the key is valid."""
    import argparse

    from sonodistill.config_cli import add_config_args, parse_command_line

    p = argparse.ArgumentParser(prog="cmd")
    p.add_argument("--splits-only", action="store_true")
    add_config_args(p)
    args = parse_command_line(p, ["a=1", "--splits-only", "b.c=2", "--config", "x.yaml", "d=[1,2]"])
    assert args.overrides == ["a=1", "b.c=2", "d=[1,2]"] and args.splits_only and args.config == ["x.yaml"]
    with pytest.raises(SystemExit):
        parse_command_line(p, ["a=1", "--splits-only", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("downstream.run", ["train.lr=-1"], "error: train.lr: expected a learning rate above 0, got -1.0"),
        ("downstream.kd", ["train", "--recipe", "hdkd", "teacher.train.lr=-1"], "error: teacher.train.lr: expected"),
        ("downstream.sweep", ["methods=[kd:bogus]"], "error: methods: 'kd:bogus': unknown recipe 'bogus'"),
        ("downstream.sweep", ["run.train.lr=0"], "error: run.train.lr: expected a learning rate above 0, got 0.0"),
        ("downstream.kd", ["train", "--recipe", "csa_moe", "repeats=0"], "error: repeats: expected >= 1, got 0"),
        ("downstream.kd", ["train", "--recipe", "seg_unet", "student.encoder=nope"], "error: student.encoder: smp"),
    ],
)
def test_every_command_checks_the_values_it_shows(module, argv, message, capsys):
    """--show-config prints a config that runs: the values a run refuses are refused there too (one
    line, exit 2), for every command; data folders and encoders that may not exist yet are not asked for."""
    import importlib

    main = importlib.import_module(module if module != "downstream.kd" else "downstream.kd.__main__").main
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--show-config"])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and captured.out == "" and captured.err.strip().startswith(message), captured.err


def test_a_preset_shown_before_its_files_exist(capsys):
    """seg_unet's teacher encoder (a later export) and a teacher checkpoint need not exist to be shown."""
    from downstream.kd.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", "seg_unet", "teacher.checkpoint=later/model.safetensors", "--show-config"])
    assert exc.value.code == 0 and "checkpoint: later/model.safetensors" in capsys.readouterr().out
