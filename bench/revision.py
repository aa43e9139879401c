"""The project's packages as they were at a git revision, for benchmarks that compare before and after."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sonodistill.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def packages_at(revision: str, dest: Path, packages: tuple[str, ...] = ("shards", "sonodistill")) -> Path:
    """Extract ``packages`` at ``revision`` into ``dest`` (created) with ``git archive``; exits with one
    line when the revision is unknown."""
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, *packages], capture_output=True)
    if archive.returncode != 0:
        raise UserError(f"--before {revision}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest
