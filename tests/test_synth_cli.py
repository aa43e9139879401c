"""``python -m shards.synth``: the example command works; bad input is one ``error:`` line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shards.synth.__main__ import main


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--layout", "coco", "--n", "3", "--out", "{d}/a"], "--layout: expected one of corpus, busi, ddti"),
        (["--layout", "busi", "--n", "0", "--out", "{d}/a"], "--n: expected a positive number"),
        (
            ["--layout", "corpus", "--n", "3", "--out", "{d}/a", "--sources", "breast,kidney"],
            "unknown source kidney",
        ),
        (["--layout", "corpus", "--n", "3", "--out", "{d}/full"], "not empty"),
        (
            ["--layout", "corpus", "--n", "3", "--out", "{d}/a", "--truth", "{d}/a/t.jsonl"],
            "outside the output directory",
        ),
        (
            ["--layout", "busi", "--n", "3", "--out", "{d}/a", "--sources", "breast"],
            "--sources: only for --layout corpus",
        ),
        (["--layout", "corpus", "--n", "3"], "the following arguments are required: --out"),
        (["--layout", "corpus", "--n", "three", "--out", "{d}/a"], "invalid int value"),
        (
            ["--layout", "ddti", "--n", "3", "--out", "{d}/a", "--workers", "0"],
            "--workers: expected a positive integer",
        ),
        (
            ["--layout", "corpus", "--n", "3", "--out", "{d}/a", "--doppler-fraction", "2"],
            "--doppler-fraction",
        ),
        (  # the truth file is written last: a path that cannot take it is refused before any image
            ["--layout", "busi", "--n", "3", "--out", "{d}/a", "--truth", "{d}/full/keep.txt/t.jsonl"],
            "--truth {d}/full/keep.txt: cannot create the folder: a file",
        ),
        (["--layout", "busi", "--n", "3", "--out", "{d}/a", "--truth", "/proc/t.jsonl"], "--truth /proc: cannot write"),
        (["--layout", "busi", "--n", "3", "--out", "{d}/a", "--truth", "/dev/null"], "--truth /dev/null: exists and"),
        (["--layout", "busi", "--n", "3", "--out", "{d}/a", "--truth", "{d}/full/keep.txt"], "keep.txt: exists; give"),
        (
            ["--layout", "corpus", "--n", "60", "--out", "{d}/a", "--doppler-fraction", "0.6", "--junk-fraction", "0.3"]
            + ["--duplicate-fraction", "0.3"],
            "expected a sum below 1 (the rest are B-mode frames), got 1.2",
        ),
        (
            ["--layout", "corpus", "--n", "2", "--out", "{d}/a", "--doppler-fraction", "0.5", "--junk-fraction", "0.4"],
            "--n 2: too small for the Doppler/junk/duplicate fractions (no B-mode frame left)",
        ),
        (["--layout", "busi", "--n", "3", "--out", "/proc/sonodistill-synth"], "--out /proc/sonodistill-synth: cannot"),
    ],
)
def test_bad_arguments_one_line_exit_2(capsys, tmp_path, argv, expected):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    code, out, err = run_main(capsys, *[a.format(d=tmp_path) for a in argv])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected.format(d=tmp_path) in lines[0]
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in (
        "--layout",
        "--n",
        "--seed",
        "--out",
        "--truth",
        "--workers",
        "--sources",
        "--doppler-fraction",
        "--junk-fraction",
        "--duplicate-fraction",
        "--overlays",
        "--no-overlays",
    ):
        assert opt in text


def test_example_command(tmp_path, repo_root):
    out, truth = tmp_path / "corpus", tmp_path / "truth.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "shards.synth",
        "--layout",
        "corpus",
        "--n",
        "8",
        "--seed",
        "0",
        "--out",
        str(out),
        "--truth",
        str(truth),
        "--sources",
        "breast,cardiac",
        "--no-overlays",
    ]
    p = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert p.returncode == 0, p.stderr
    assert "wrote 8 files" in p.stdout
    records = [json.loads(x) for x in truth.read_text().splitlines()]
    assert len(records) == 8 and {r["source"] for r in records} == {"breast", "cardiac"}
    assert all(r["overlays"] == [] for r in records)
    files = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    assert files == sorted(r["path"] for r in records)
    # the same command as a real process fails with one line and exit code 2 when --out is not empty
    p = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: ")
