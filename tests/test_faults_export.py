"""Faults a new user meets with ``pretrain.export`` (issue 16): it never deletes what it did not write,
and nothing it publishes names a local path. Each case keeps every byte the folder had."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
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


def test_a_shard_url_publishes_no_host_user_password_or_token(run, tmp_path):
    """A remote shard set is named by its URL's path: data.shards=http://alice:s3cr3t@10.0.0.7:8731/ put
    the user, password and host into the model card and config.json, and the check said "clean"."""
    from sonodistill.provenance import public_source_name, url_secrets

    assert public_source_name("http://alice:s3cr3t@10.0.0.7:8731/") == "remote shards (http)"
    assert public_source_name("https://u:p@store.lab:9000/us/shards/manifest.json?token=abc") == "shards"
    assert public_source_name("s3://bucket/us/shard-{000000..000009}.tar") == "shard-{000000..000009}.tar"
    assert public_source_name("/data/lab/shards/") == "shards"
    signed = "https://b.s3.amazonaws.com/s/manifest.json?X-Amz-Signature=ab12"
    assert url_secrets(f"from http://alice:s3cr3t@10.0.0.7:8731/ and {signed}") == [
        "http://alice:s3cr3t@10.0.0.7:8731/",
        signed,
    ]
    assert url_secrets("https://huggingface.co/lab/us, hf-hub:lab/us, http://10.0.0.7/shards/") == []
    assert url_secrets("http://h/a?monkey=1 http://h/b?keyword=x") == []  # whole parameter names only
    assert url_secrets("http://h/a?api_key=1") == ["http://h/a?api_key=1"]
    out = tmp_path / "pub"
    export(run, out)
    card = (out / "README.md").read_text()
    (out / "README.md").write_text(card + "\nshards from https://alice:s3cr3t@store.lab/us/\n")  # a hand edit
    with pytest.raises(UserError, match=r"README.md: names a URL with credentials \(https://alice:s3cr3t@store"):
        push(out, "lab/us", dry_run=True)


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
    inode = here.stat().st_ino
    export(run, ".")  # "." has no name of its own: the folder it stands for is written
    # written into, not swapped: the shell standing in it sees the files (it was left in a deleted folder)
    assert sorted(os.listdir(".")) == ["README.md", "config.json", "model.safetensors"]
    assert here.stat().st_ino == inode
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
    card = (out / "README.md").read_text().replace("PATH_TO_THIS_FOLDER", str(out))  # all a reader changes
    code = re.search(r"```python\n(import segmentation_models_pytorch as smp\n.*?)```", card, re.S).group(1)
    assert 'smp.Unet("tu-resnet10t"' in code
    scope: dict = {}
    with _chdir(tmp_path):  # run from anywhere, not only inside the export folder
        exec(code, scope)  # noqa: S102 (the card's own snippet, as a reader would run it)
    weights = load_file(str(out / "model.safetensors"))
    got = scope["unet"].encoder.model.state_dict()
    assert all(torch.equal(got[k], weights[k]) for k in got if k in weights) and len(set(got) & set(weights)) > 20
    timm_code = re.search(r"```python\n(import timm\n.*?)```", card, re.S).group(1)
    timm_scope: dict = {}
    with _chdir(tmp_path):
        exec(timm_code, timm_scope)  # noqa: S102
    assert timm_scope["features"].shape[:2] == (1, timm_scope["model"].num_features)


def test_export_never_deletes_a_users_folder_named_like_its_staging(run, tmp_path):
    """The staging and set-aside folders get names made for them: a user's `.export/` inside --out
    (--overwrite) and a `.<out>.old` backup beside it (re-export) stay."""
    mine = tmp_path / "mine"
    (mine / ".export").mkdir(parents=True)
    (mine / ".export" / "keep.txt").write_text("precious\n")
    main(["--checkpoint", str(run), "--out", str(mine), "--overwrite"])
    assert (mine / ".export" / "keep.txt").read_text() == "precious\n"
    assert sorted(p.name for p in mine.iterdir()) == [".export", "README.md", "config.json", "model.safetensors"]
    backup = tmp_path / ".us.old"
    backup.mkdir()
    (backup / "NOTE.txt").write_text("my backup\n")
    export(run, tmp_path / "us")
    export(run, tmp_path / "us")  # re-export: the earlier one replaced as a whole
    assert (backup / "NOTE.txt").read_text() == "my backup\n"
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".us."))
    assert left == [".us.old"]  # nothing of its own left behind


def _bad_checkpoint(run: Path, tmp_path: Path) -> Path:
    from pretrain.checkpoint import list_checkpoints

    bad = tmp_path / "bad"
    ckpt = list_checkpoints(run)[-1][1]
    shutil.copytree(ckpt, bad / "checkpoints" / ckpt.name)
    return bad / "checkpoints" / ckpt.name


def test_a_broken_checkpoint_is_one_line_not_a_traceback(run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    ckpt = _bad_checkpoint(run, tmp_path)
    meta = json.loads((ckpt / "meta.json").read_text())
    cases = [
        (b"\xff\xfe\x00garbage" * 20, "meta.json: unreadable"),
        (b"[]", "not a pretraining checkpoint's meta.json (no step)"),
        (json.dumps({"step": 2}).encode(), "records no config"),
        (json.dumps({k: v for k, v in meta.items() if k != "teacher"}).encode(), "records no teacher"),
    ]
    for data, said in cases:
        (ckpt / "meta.json").write_bytes(data)
        err = _refused(["--checkpoint", str(ckpt), "--out", str(tmp_path / "x")], capsys)
        assert said in err, err
    (ckpt / "meta.json").write_text(json.dumps(meta))
    state = load_file(str(ckpt / "student.safetensors"))
    key = next(k for k in state if k.startswith("backbone.") and state[k].ndim == 4)
    state[key] = state[key][:, :1].contiguous()  # one input channel: another shape
    save_file(state, str(ckpt / "student.safetensors"))
    err = _refused(["--checkpoint", str(ckpt), "--out", str(tmp_path / "x")], capsys)
    assert "does not match timm" in err and key.removeprefix("backbone.") in err
    assert not (tmp_path / "x").exists()


def test_a_teacher_path_that_is_gone_is_no_hub_id():
    from sonodistill.provenance import model_provenance, public_model_name

    gone = model_provenance("/scratch/alice/teachers/dinov3-vitb16", "dinov3_vit")
    assert gone["hub_id"] is None and "/scratch" not in public_model_name(gone)
    for name in ("./teacher", "~/teacher", "a/b/c"):
        assert model_provenance(name, "dinov3_vit")["hub_id"] is None
    assert model_provenance("facebook/dinov3-vitb16-pretrain-lvd1689m", "dinov3_vit")["hub_id"].startswith("facebook/")
