"""One writer per output folder: an advisory lock file that the kernel releases when its holder dies.

Two commands writing into one folder at once (a SLURM requeue overlapping the old job, a command
started twice) interleave their files; the second is refused with one line instead. ``flock``
needs no clean-up after a crash (the lock goes with the process), so a killed run never leaves a
folder locked (processes it forked, such as loader workers, keep the lock until they notice their
parent's death, a few seconds: the next command waits for them). On a filesystem without ``flock``
(Lustre mounted ``noflock``, some NFS set-ups) the guard is off, with one warning: the commands
still run, two at once in one folder are not refused.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sonodistill.errors import UserError

log = logging.getLogger(__name__)

# What flock raises where the filesystem does not support it.
UNSUPPORTED = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}
_warned: list[str] = []  # the folder of the one warning this process gives


def _unsupported(error: OSError, lock: Path) -> bool:
    """True (after one warning per process) when ``error`` says the filesystem has no file locks."""
    if error.errno not in UNSUPPORTED:
        return False
    if not _warned:
        _warned.append(str(lock.parent))
        log.warning(
            f"{lock.parent}: the filesystem does not support file locks ({os.strerror(error.errno)}); "
            "two commands writing into the same folder will not be refused"
        )
    return True


@contextmanager
def exclusive(lock: Path, what: str) -> Iterator[None]:
    """Hold ``lock`` (created if missing) while the block runs; :class:`UserError` naming ``what``
    (the folder, as the user gave it) when another process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            _take(fd)
        except BlockingIOError:
            pid = _holder_pid(fd)
            raise UserError(
                f"{what}: another process (pid {pid}) is writing to it; wait for it to end or use another folder"
            ) from None
        except OSError as e:
            if not _unsupported(e, lock):
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


ORPHAN_WAIT_S = 30.0  # how long a lock kept by a dead writer's children (loader workers) is waited for


def _take(fd: int) -> None:
    """``flock`` now; if the writer recorded in the file has died on this machine, the processes it
    forked (DataLoader workers inherit the descriptor and notice their parent's death within
    seconds) may still hold it: wait for them, up to :data:`ORPHAN_WAIT_S`."""
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if _writer_alive(fd) or time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def _holder_pid(fd: int) -> str:
    return (os.pread(fd, 128, 0).decode(errors="replace").split() or ["?"])[0]


def _writer_alive(fd: int) -> bool:
    """Whether the writer recorded in the lock file still runs (True when that cannot be told here:
    another machine's process, or a file from before hosts were recorded)."""
    fields = os.pread(fd, 128, 0).decode(errors="replace").split()
    if len(fields) != 2 or fields[1] != socket.gethostname() or not fields[0].isdigit():
        return True
    try:
        os.kill(int(fields[0]), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def holder(lock: Path) -> str | None:
    """The pid holding ``lock`` now (None: nobody, or no such file); the lock is not kept."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_pid(fd) if _writer_alive(fd) else None  # a dead writer's children write nothing
        except OSError as e:
            if not _unsupported(e, lock):
                raise
        return None
    finally:
        os.close(fd)
