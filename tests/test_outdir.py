"""One command never writes into another's output folder (sonodistill.outdir): ``--out`` pointed at
a pretraining run, an export or another evaluation ends with one line and leaves every file as it was."""

from __future__ import annotations

import pytest

from downstream.run import main as run_main
from sonodistill.outdir import MARK, claim, owner


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_folder_is_marked_by_its_first_command_and_refused_to_the_others(tmp_path):
    out = tmp_path / "run"
    claim(out, "downstream.run")
    assert (out / MARK).read_text() == "downstream.run\n" and owner(out) == "downstream.run"
    claim(out, "downstream.run")  # the same command again: a rerun or a resume
    with pytest.raises(Exception, match=rf"--out {out}: holds the output of downstream.run; give downstream.audit"):
        claim(out, "downstream.audit")
    # folders written before marks existed are known by the files only their command writes
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoints").mkdir()
    assert owner(tmp_path / "old") == "pretraining (pretrain/run.py)"
    claim(tmp_path / "old", "pretraining (pretrain/run.py)", key="out")
    # a folder of the user's own files is nobody's; checking without writing leaves it untouched
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    claim(tmp_path / "notes", "downstream.sweep", write=False)
    assert owner(tmp_path / "notes") is None and not (tmp_path / "notes" / MARK).exists()


def test_a_rank_checking_while_the_first_writes_the_mark_sees_a_new_folder(tmp_path):
    """Rank 0 writes the mark through a temporary sibling; rank 1, checking only its own files at
    that moment, must not take the temporary for a user's file (it ended the run with exit 2)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / f".{MARK}.k2j3_x.tmp").write_text("downstream.kd train\n")
    claim(out, "downstream.kd train", write=False, only_own=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="holds files downstream.kd train did not write"):
        claim(out, "downstream.kd train", write=False, only_own=True)


def test_the_other_ranks_wait_for_the_first_ranks_mark_before_writing(tmp_path, monkeypatch):
    """Rank 1 wrote keys/ (or splits.json) before rank 0 judged the folder, which then took it for a
    user's file and refused its own run: the other ranks return only once the mark is there."""
    import threading
    import time

    import sonodistill.outdir as outdir

    out = tmp_path / "run"
    first = threading.Timer(0.3, claim, (out, "downstream.run"), {"only_own": True})
    start = time.monotonic()
    first.start()
    claim(out, "downstream.run", write=False, only_own=True, follow=True)
    assert time.monotonic() - start >= 0.25 and owner(out) == "downstream.run"
    first.join()
    (out / "splits.json").write_text("{}")  # now rank 1 writes; a rerun accepts the folder
    claim(out, "downstream.run", only_own=True)
    monkeypatch.setattr(outdir, "MARK_WAIT_S", 0.2)
    with pytest.raises(
        Exception, match=f"--out {tmp_path / 'lone'}: the first rank did not mark the folder within 0.2 s"
    ):
        claim(tmp_path / "lone", "downstream.run", write=False, only_own=True, follow=True)


@pytest.mark.parametrize(
    "what", [("checkpoints/step_00000009/meta.json", "pretraining"), ("model.safetensors", "a model")]
)
def test_downstream_run_into_a_pretraining_run_or_an_export_is_refused_and_keeps_every_byte(tmp_path, capsys, what):
    name, held = what
    out = tmp_path / "target"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_text("{}")
    (out / "config.yaml").write_text("keep: me\n")
    before = _files(out)
    with pytest.raises(SystemExit) as exc:
        run_main(["--task", "busi-cls", "--data", str(tmp_path / "data"), "--encoder", "rand", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {out}: holds the output of {held}")
    assert _files(out) == before


def test_downstream_run_into_a_folder_of_the_users_own_files_is_refused_and_keeps_every_byte(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("keep: me\n")
    with pytest.raises(SystemExit) as exc:
        run_main(["--task", "busi-cls", "--data", str(tmp_path / "data"), "--encoder", "rand", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {out}: holds files downstream.run did not write; give it a new or empty folder"]
    assert _files(out) == {"config.yaml": b"keep: me\n"}


def test_a_bad_encoder_spec_ends_the_run_before_any_file_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        run_main(
            ["--task", "busi-cls", "--data", str(tmp_path), "--encoder", str(tmp_path / "nope"), "--out", str(out)]
        )
    assert exc.value.code == 2 and "unknown encoder spec" in capsys.readouterr().err
    assert not out.exists()


def test_a_sweep_checks_every_encoder_and_fraction_before_its_first_cell(busi_dir, tmp_path, capsys):
    from downstream.sweep import main as sweep_main

    base = ["--config", "downstream/configs/tiny.yaml", f"busi={busi_dir}", "tasks=[busi-cls]", "methods=[]"]
    for extra, said in (
        ([f"encoders=[R=rand,A={tmp_path / 'nope'}]"], "unknown encoder spec"),
        (["fractions=[0.5,0]"], "fractions: expected fractions in (0, 1], got [0.0]"),
        (["seeds=[0,0]"], "seeds: expected distinct values, got [0, 0]"),
        (["linear_fractions=[0.2,0.2]"], "linear_fractions: expected distinct values, got [0.2, 0.2]"),
        (["seeds=[-1]"], "seeds: expected integers from 0 to 2**32-1, got [-1]"),
        (["run.split.ratios=[1,0,0]"], "split.ratios: expected three positive numbers train/val/test"),
        (
            ["tasks=[busi-cls,busi-seg]", "run.image_size=80"],
            "run.image_size: U-Net segmentation needs a multiple of 32",
        ),
        (["kd_presets=[tinyy]"], "kd_presets: no preset 'tinyy' (tiny, or a YAML file)"),
        (["run.probe.epochs=0"], "probe.epochs: expected at least 1, got 0"),
        (["seeds=[]"], "seeds: expected at least one value, got [] (the sweep would run no cell)"),
        (["tasks=[]"], "tasks: expected at least one value, got []"),
        (["fractions=[]", "modes=[finetune]"], "fractions: expected at least one value for fine-tuning and the KD"),
        (["linear_fractions=[]"], "linear_fractions: expected at least one value for mode 'linear' (or leave"),
        (["modes=[]"], "modes: expected at least one value for the encoder rows, got []"),
    ):
        out = tmp_path / f"sweep{len(said)}"
        with pytest.raises(SystemExit) as exc:
            sweep_main([*base, *extra, f"out={out}"])
        assert exc.value.code == 2 and said in capsys.readouterr().err
        assert not (out / "cells").exists() and not (out / "results.jsonl").exists()


def test_a_first_run_refused_on_its_data_leaves_no_folder_and_a_rerun_keeps_its_folder(tmp_path, capsys):
    out, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    (data / "only").mkdir()  # one class folder: not a classification dataset
    args = ["--task", "cls", "--data", str(data), "--encoder", "rand", "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        run_main(args)
    assert exc.value.code == 2 and "expected one sub-folder per class" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()  # a folder the user made: kept, with the mark of the command that was given it
    with pytest.raises(SystemExit):
        run_main(args)
    assert out.is_dir() and owner(out) == "downstream.run"
