"""Which command's output a folder holds: one command never writes into another's folder.

Each command that writes a run folder marks it (``.sonodistill-stage``: the command's name) and
refuses a folder marked by another, so ``--out`` pointed at the wrong folder (a pretraining run, an
export, another evaluation) ends with one line instead of replacing its ``config.yaml`` and
results. A folder written before marks existed is recognised by the files that only that
command writes. Export keeps its own rule (:mod:`pretrain.export`: it replaces only an export).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sonodistill.atomic import write_once
from sonodistill.errors import UserError

MARK = ".sonodistill-stage"
MODEL = "a model (pretrain.export or a teacher)"

# Files (or folders) that only one command writes: an unmarked folder holding one is that command's.
SIGNATURES = {
    "pretraining (pretrain/run.py)": ("checkpoints", "metrics.jsonl"),
    "a shard build (shards.build)": ("manifest.json", ".build-journal.jsonl"),
    MODEL: ("model.safetensors",),
    "downstream.run": ("subset.json",),
    "downstream.sweep": ("sweep.yaml",),
    "downstream.kd train": ("report.md",),
    "downstream.audit": ("audit.json",),
    "downstream.embed": ("embed.json",),
    "pretrain.teacher init-tiny": (),  # recognised by its mark only: its files are any teacher's
}


def owner(out: Path) -> str | None:
    """The command whose output ``out`` holds (None: nobody's, or a folder of other files)."""
    mark = out / MARK
    if mark.is_file():
        return mark.read_text(encoding="utf-8").strip()
    if not out.is_dir():
        return None
    for stage, names in SIGNATURES.items():
        if any((out / n).exists() for n in names):
            return stage
    return None


def make_folder(out: Path, key: str = "--out") -> None:
    """``mkdir -p out``, with one line naming ``key`` where a file (or a dangling link) is in the way
    or the system refuses."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{key} {out}: cannot create the folder: a file (or a broken link) is in its way") from None
    except OSError as exc:  # forbidden, read-only, a file system that takes no folders (/proc)
        raise UserError(f"{key} {out}: cannot create the folder ({exc.strerror})") from None


def make_writable_folder(out: Path, key: str = "--out") -> None:
    """:func:`make_folder`, then one line naming ``key`` unless a file can be created in it (a folder
    of a file system that takes no files, ``/proc``, or one this user may not write), before any work."""
    import tempfile

    make_folder(out, key)
    try:
        tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-").close()  # created, then deleted on close
    except OSError as exc:
        raise UserError(f"{key} {out}: cannot write there ({exc.strerror or exc})") from None


MARK_WAIT_S = 600.0  # how long the other ranks wait for the first rank's mark (torchrun ends them if it fails)


def claim(
    out: str | Path, stage: str, key: str = "--out", write: bool = True, only_own: bool = False, follow: bool = False
) -> None:
    """Refuse ``out`` when it holds another command's output (``only_own``: any files but ``stage``'s
    own, for a command whose file names, ``config.yaml`` among them, a user's folder may hold); else
    mark it as ``stage``'s (``write=False``: check only, as every rank but the first does; ``follow``:
    then wait for the first rank's mark, so that no rank writes into the folder, a ``splits.json``,
    before the first has judged it: it would take that file for a user's)."""
    out = Path(out)
    held = owner(out)
    if held is not None and held != stage:
        raise UserError(f"{key} {out}: holds the output of {held}; give {stage} a folder of its own")
    if out.exists() and not out.is_dir():
        raise UserError(f"{key} {out}: is a file; expected a folder")
    others = only_own and held is None and out.is_dir() and any(not _marking(p.name) for p in out.iterdir())
    if others and owner(out) != stage:  # the mark may have landed since it was read
        raise UserError(f"{key} {out}: holds files {stage} did not write; give it a new or empty folder")
    if write:
        make_folder(out, key)
        write_once(out / MARK, stage + "\n")
    elif follow:
        deadline = time.monotonic() + MARK_WAIT_S
        while owner(out) != stage:
            if time.monotonic() > deadline:
                raise UserError(f"{key} {out}: the first rank did not mark the folder within {MARK_WAIT_S:g} s")
            time.sleep(0.05)


def _marking(name: str) -> bool:
    """The temporary file of a mark being written (another rank or part claiming the folder now)."""
    return name.startswith(f".{MARK}.") and name.endswith(".tmp")


@contextmanager
def claimed(
    out: str | Path,
    stage: str,
    key: str = "--out",
    write: bool = True,
    only_own: bool = False,
    first: tuple[str, ...] = (),
    follow: bool = False,
) -> Iterator[None]:
    """:func:`claim` for the work inside the ``with``; when that work fails and the folder was made by
    this call and holds nothing but its mark (and ``first``: what the command writes before its work,
    a KD run's ``splits.json``), the folder goes again: a refused or crashed first run leaves no
    folder that looks like a run."""
    out = Path(out)
    made = write and not out.exists()
    claim(out, stage, key, write, only_own, follow)
    try:
        yield
    except BaseException:
        try:
            names = {p.name for p in out.iterdir()} if made else set()
            if MARK in names and names <= {MARK, *first}:
                for name in sorted(names - {MARK}):
                    (out / name).unlink()  # written by this call: the folder did not exist before it
                (out / MARK).unlink()
                out.rmdir()  # refuses a folder another process has written into since
        except OSError:
            pass  # gone or written to meanwhile: the failure itself is what the user must see
        raise
