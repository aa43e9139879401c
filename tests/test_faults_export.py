"""Faults a new user meets with ``pretrain.export`` (issue 16): it never deletes what it did not write,
and nothing it publishes names a local path. Each case keeps every byte the folder had."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import pytest
from dist.tiny_pretrain import tiny_config

from pretrain.export import export, main, push
from pretrain.trainer import train
from sonodistill.errors import UserError


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256): what a refused export must leave as is."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def run(shard_dir, tiny_teacher_dir, tmp_path_factory) -> Path:
    """A finished tiny run inside a project folder that also holds an unrelated note."""
    project = tmp_path_factory.mktemp("project")
    (project / "notes.txt").write_text("my notes\n")
    out = project / "run"
    train(tiny_config(shard_dir, tiny_teacher_dir, out, train__max_steps=2, train__save_every=2))
    return out


@contextlib.contextmanager
def _chdir(folder: Path):
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    return err


@pytest.mark.parametrize("where", ["run", "parent"])
def test_export_into_the_run_or_its_parent_is_refused_and_keeps_every_byte(run, where, capsys):
    target = run if where == "run" else run.parent
    before = _snapshot(target)
    err = _refused(["--checkpoint", str(run), "--out", str(target)], capsys)
    assert "holds the checkpoint being exported" in err and str(target) in err
    err = _refused(["--checkpoint", str(run), "--out", str(target), "--overwrite"], capsys)
    assert "holds the checkpoint being exported" in err
    assert _snapshot(target) == before


def test_a_folder_of_other_files_is_refused_unless_overwrite_which_keeps_them(run, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")
    (folder / "README.md").write_text("my own readme\n")
    err = _refused(["--checkpoint", str(run), "--out", str(folder)], capsys)
    assert "not empty and not an earlier export (holds README.md, notes.txt)" in err
    assert err.rstrip().endswith("--overwrite to write the export files beside them, replacing README.md")
    assert (folder / "README.md").read_text() == "my own readme\n"
    main(["--checkpoint", str(run), "--out", str(folder), "--overwrite"])
    assert (folder / "notes.txt").read_text() == "keep me\n"  # never deleted
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "notes.txt"]
    assert "Not for clinical use" in (folder / "README.md").read_text()


def test_a_folder_holding_another_run_is_refused_even_with_overwrite(run, tmp_path, capsys):
    other = tmp_path / "other_run"
    (other / "checkpoints" / "step_00000001").mkdir(parents=True)
    (other / "checkpoints" / "step_00000001" / "meta.json").write_text("{}")
    before = _snapshot(other)
    err = _refused(["--checkpoint", str(run), "--out", str(other), "--overwrite"], capsys)
    assert "holds a pretraining run" in err
    assert _snapshot(other) == before


def test_another_commands_folder_is_refused_even_with_overwrite(run, shard_dir, tiny_teacher_dir, tmp_path, capsys):
    import shutil

    teacher = tmp_path / "teacher"  # init-tiny's (marked): its model.safetensors is not export's to replace
    shutil.copytree(tiny_teacher_dir, teacher)
    shards = tmp_path / "shards"  # an unmarked shard build, recognised by its manifest
    shards.mkdir()
    (shards / "manifest.json").write_bytes((shard_dir / "manifest.json").read_bytes())
    for folder, stage in ((teacher, "pretrain.teacher init-tiny"), (shards, "a shard build")):
        before = _snapshot(folder)
        for extra in ([], ["--overwrite"]):
            err = _refused(["--checkpoint", str(run), "--out", str(folder), *extra], capsys)
            assert f"holds the output of {stage}" in err and "export never writes into it" in err
        assert _snapshot(folder) == before


def test_an_out_that_cannot_be_a_folder_is_one_line(run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine\n")
    err = _refused(["--checkpoint", str(run), "--out", str(blocker / "sub")], capsys)
    assert f"--out {blocker}: cannot create the folder: a file" in err
    err = _refused(["--checkpoint", str(run), "--out", "/proc/sonodistill-export"], capsys)
    assert err.startswith("error: --out /proc/sonodistill-export: cannot write the export there (")
    assert blocker.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_an_earlier_export_is_replaced_and_a_new_folder_is_created(run, tmp_path):
    out = tmp_path / "exp"
    export(run, out)
    first = _snapshot(out)
    export(run, out, title="again")
    assert set(_snapshot(out)) == set(first)  # the same three files, rewritten
    assert "# again" in (out / "README.md").read_text()


def test_nothing_published_names_a_local_path(run, shard_dir, tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "pub"
    main(["--checkpoint", str(run), "--out", str(out), "--push-to-hub", "lab/us", "--dry-run"])
    printed = capsys.readouterr().out
    for name in ("README.md", "config.json"):
        text = (out / name).read_text()
        for local in (str(tmp_path.parent), str(shard_dir), str(tiny_teacher_dir), str(run)):
            assert local not in text, (name, local)
    card = (out / "README.md").read_text()
    meta = json.loads((run / "checkpoints" / "step_00000002" / "meta.json").read_text())
    sha = meta["teacher"]["weights_sha256"]
    assert f"a local dinov3_vit checkpoint (weights sha256 {sha[:16]})" in card
    assert f"`{shard_dir.name}` (manifest sha256 {meta['data']['manifest_sha256'][:16]})" in card
    prov = json.loads((out / "config.json").read_text())["sonodistill"]
    assert prov["teacher_provenance"]["weights_sha256"] == sha and prov["data"]["name"] == shard_dir.name
    assert "README.md" in printed and "no local path" in printed
    # A hand edit that adds a local path is refused before anything is uploaded.
    (out / "README.md").write_text(card + f"\nweights from {tiny_teacher_dir}\n")
    with pytest.raises(UserError, match="README.md: names the local path"):
        push(out, "lab/us", dry_run=True)


def test_a_repo_id_that_contains_a_folder_name_is_no_local_path():
    from sonodistill.provenance import local_paths

    assert local_paths("# lab/tmp-encoder, lab/home-us and data/work") == []
    assert local_paths("weights from /tmp/t (or `/tmp`)") == ["/tmp", "/tmp/t"]
    assert local_paths("see /scratch/u/run/, then /data/x") == ["/data/x", "/scratch/u/run/"]


def test_a_checkpoint_with_damaged_weights_is_one_line(run, tmp_path, capsys):
    import shutil

    copy = Path(shutil.copytree(run / "checkpoints", tmp_path / "checkpoints"))
    ckpt = sorted(copy.glob("step_*"))[-1]
    weights = ckpt / "student.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    err = _refused(["--checkpoint", str(ckpt), "--out", str(tmp_path / "exp")], capsys)
    assert err.startswith(f"error: --checkpoint: {weights}: unreadable (")
    assert err.strip().endswith("export an earlier checkpoint (--checkpoint <run>/checkpoints/step_...)")
    assert not (tmp_path / "exp").exists()


def test_out_given_as_dot_or_as_a_link_to_an_earlier_export(run, tmp_path, monkeypatch):
    here = tmp_path / "us-r50"
    here.mkdir()
    monkeypatch.chdir(here)
    export(run, ".")  # "." has no name of its own: the folder it stands for is written
    assert sorted(p.name for p in here.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "# us-r50" in (here / "README.md").read_text()
    latest = tmp_path / "latest"
    latest.symlink_to(here)
    before = (here / "config.json").read_bytes()
    export(run, latest, title="again")  # the earlier export the link points at is replaced; the link stays
    assert latest.is_symlink() and "# again" in (here / "README.md").read_text()
    assert (here / "config.json").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "latest",
        "us-r50",
    ]


def test_an_out_inside_the_run_is_refused_even_with_overwrite(run, tmp_path, capsys):
    before = _snapshot(run)
    for sub in ("tb", "exports/us"):
        err = _refused(["--checkpoint", str(run), "--out", str(run / sub), "--overwrite"], capsys)
        assert f"inside the pretraining run {run}; export never writes into one" in err
    assert _snapshot(run) == before
    project = tmp_path / "project"  # a folder of downloaded weights named checkpoints/ is no run
    (project / "checkpoints").mkdir(parents=True)
    (project / "checkpoints" / "resnet50.safetensors").write_bytes(b"weights")
    assert (export(run, project / "exports" / "us") / "model.safetensors").is_file()


def test_the_cards_unet_snippet_loads_the_export_for_any_timm_student(run, tmp_path):
    """resnet10t is no smp encoder of its own: the card shows smp's tu- form, and it loads the weights."""
    import re

    import torch
    from safetensors.torch import load_file

    out = export(run, tmp_path / "exp")
    card = (out / "README.md").read_text()
    code = re.search(r"```python\n(import segmentation_models_pytorch as smp\n.*?)```", card, re.S).group(1)
    assert 'smp.Unet("tu-resnet10t"' in code
    scope: dict = {}
    with _chdir(out):
        exec(code, scope)  # noqa: S102 (the card's own snippet, as a reader would run it)
    weights = load_file(str(out / "model.safetensors"))
    got = scope["unet"].encoder.model.state_dict()
    assert all(torch.equal(got[k], weights[k]) for k in got if k in weights) and len(set(got) & set(weights)) > 20
