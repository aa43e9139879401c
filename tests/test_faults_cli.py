"""A wrong flag, value type or choice is one ``error:`` line on every command (argparse's usage text
is for ``--help``), exit 2, nothing written."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "module, argv, said",
    [
        ("shards.build", ["--size", "abc"], "argument --size: invalid int value: 'abc'"),
        ("shards.build", ["--encoding", "gif"], "argument --encoding: invalid choice: 'gif'"),
        ("shards.inspect", [], "the following arguments are required: shards"),
        ("shards.synth.__main__", ["--layout", "busi", "--n", "x"], "argument --n: invalid int value: 'x'"),
        ("downstream.run", ["--mode", "foo"], "argument --mode: invalid choice: 'foo'"),
        ("downstream.kd.__main__", ["train", "--recipe"], "argument --recipe: expected one argument"),
        ("downstream.sweep", ["--bogus"], "unrecognized arguments: --bogus"),
        ("downstream.audit", ["--bogus"], "unrecognized arguments: --bogus"),
        ("downstream.embed", ["--bogus"], "unrecognized arguments: --bogus"),
        ("pretrain.export", ["--checkpoint"], "argument --checkpoint: expected one argument"),
        ("pretrain.teacher", [], "the following arguments are required"),
        ("pretrain.run", ["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_a_wrong_flag_is_one_line_naming_it(module, argv, said, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {said}") and "usage:" not in captured.err + captured.out
    assert lines[0].endswith("(--help lists the options)")
    assert not any(tmp_path.iterdir())


def test_a_select_the_task_never_reports_is_refused_before_the_data_is_read(capsys, tmp_path):
    from downstream.run import main

    argv = [
        "--task",
        "busi-seg",
        "--data",
        str(tmp_path / "nowhere"),
        "--encoder",
        "rand",
        "--out",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "train.select=val_accuracy"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: train.select: val_accuracy is not a validation metric of a seg task; "
        "valid: auto, last, val_dice, val_iou, val_dice_lesion, val_iou_lesion"
    )
    assert not (tmp_path / "o").exists()
