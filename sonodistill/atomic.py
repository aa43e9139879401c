"""Atomic file output: write to a temporary name in the same directory, then rename.

A crash or a kill mid-write leaves either the old file or the new one, never a torn file;
every stage writes its manifests, metrics, checkpoints and shards through these helpers.
Files that several processes may create at once (parts of a sweep or a shard build on other
nodes) go through :func:`write_once`: created if absent, first writer wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_like_others(folder: Path) -> None:
    """Give the files in ``folder`` the permissions the umask gives any new file: safetensors writes
    weights 0600, so colleagues on a shared cluster could read a run's config but not resume from it."""
    mode = 0o666 & ~_umask()
    for f in folder.iterdir():
        if f.is_file() and not f.is_symlink():
            os.chmod(f, mode)


def remove_stale_temporaries(folder: Path, older_than_s: float = 3600.0) -> int:
    """Delete the temporaries :func:`atomic_open` leaves when its process is killed outright (SIGKILL,
    the OOM killer) under ``folder``: names ``.NAME.RANDOM.tmp`` untouched for ``older_than_s`` (a
    write in progress, another sweep's on a shared cache too, is seconds old). The number removed."""
    import time

    cutoff, removed = time.time() - older_than_s, 0
    for tmp in folder.rglob(".*.tmp") if folder.is_dir() else ():
        with contextlib.suppress(OSError):
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def _staged(path: Path, mode: str, publish: Callable[[str, Path], object], **kwargs: Any) -> Iterator[IO]:
    """Write a temporary sibling of ``path``, then ``publish(tmp, path)``; the temporary never outlives it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        publish(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    with _staged(Path(path), mode, os.replace, **kwargs) as fh:
        yield fh


def _link_once(tmp: str, path: Path) -> bool:
    try:
        os.link(tmp, path)  # fails when path exists: create-if-absent in one step (POSIX and NFS)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: the file is complete either way, a racer may win
        if path.exists():
            return False
        os.replace(tmp, path)
        return True


def write_once(path: str | os.PathLike, data: bytes | str) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True when this call created it.

    For files that several processes (sweep parts, build parts on other nodes) may make at once:
    readers never see a torn file and of racing writers exactly one wins, so every process can read
    the winner's file back and all of them go on with the same content."""
    won: list[bool] = []
    blob = data.encode("utf-8") if isinstance(data, str) else data
    with _staged(Path(path), "wb", lambda tmp, p: won.append(_link_once(tmp, p))) as fh:
        fh.write(blob)
    return won[0]


def json_text(obj: Any, indent: int = 2) -> str:
    """How every JSON file of the project is written (indented, one trailing newline)."""
    return json.dumps(obj, indent=indent, sort_keys=False) + "\n"


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    write_text(path, json_text(obj, indent))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT held back for the few system calls inside (delivered right after)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGTERM, signal.SIGINT}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def scratch_dir(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """A hidden folder made for the work inside ``parent`` (a name no other folder there bears),
    removed with what is left in it when the work ends, however it ends."""
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` (old one removed). The
    old one is moved aside under a name made for it (never a fixed name a user's folder may bear)."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            with _signals_held():  # a stop between the two renames would leave no folder at ``path``
                os.replace(path, old)  # onto the empty folder just made: rename replaces an empty directory
                os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
