"""Faults in evaluation data (issue 16): a corrupt image in a dataset is one short error that names
the file first, whether it is decoded in the main process or in a loader worker."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from downstream import run as run_cli


@pytest.mark.parametrize("workers", [0, 2])
def test_a_truncated_image_ends_the_run_with_one_short_line_naming_it(busi_dir, tmp_path, capsys, workers):
    data = Path(shutil.copytree(busi_dir, tmp_path / "busi"))
    image = sorted(p for p in (data / "malignant").glob("*.png") if "_mask" not in p.name)[0]
    raw = image.read_bytes()
    image.write_bytes(raw[: len(raw) // 3])  # cut mid-stream, as an interrupted copy leaves it
    argv = ["--task", "busi-cls", "--data", str(data), "--encoder", "rand", "--mode", "linear"]
    argv += ["--out", str(tmp_path / "out"), f"num_workers={workers}", "image_size=32", "probe.epochs=1"]
    with pytest.raises(SystemExit) as exc:
        run_cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {image}: cannot read image"), err[0]
    assert len(err[0]) < 300 and "Traceback" not in err[0]
