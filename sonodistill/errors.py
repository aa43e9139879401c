"""User-facing errors and the CLI wrapper that turns them into one line and a non-zero exit.

Every command-line entry point of the project runs through :func:`cli_main`, so bad input
(a missing file, an unknown config key, a wrong architecture) never ends in a traceback, and the
error is printed once (by rank 0), not once per process of a distributed launch. ``cli_main`` also
sets up logging (:func:`sonodistill.logs.setup_logging`).
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from sonodistill.logs import is_main_rank, setup_logging

F = TypeVar("F", bound=Callable[..., object])

EXIT_USER_ERROR = 2
EXIT_STORAGE = 74  # sysexits.h EX_IOERR
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
# A full disk, a quota, a read-only or forbidden folder, a file where a folder should be, a name too long:
# the machine's state or a path to fix, told in one line.
STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENAMETOOLONG)


class UserError(Exception):
    """Bad input: the message is one line naming the file/key and what was expected."""


def user_message(exc: BaseException) -> str:
    """The one-line message of a :class:`UserError`. One raised in a DataLoader worker reaches the
    main process re-raised by PyTorch with the worker's whole traceback in its message; only its
    last line, the original message, is for the user."""
    text = str(exc)
    marker = f"{type(exc).__name__}: "
    if "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return " ".join(text.split())


def cli_main(fn: F) -> F:
    """Run ``fn`` with logging set up; a :class:`UserError` prints ``error: <message>`` to stderr
    (on rank 0 only) and exits 2 on every rank; a stop signal that the command answered by keeping
    its work (:class:`sonodistill.stop.Stopped`) prints ``stopped: <what was kept>`` and exits 75."""
    from sonodistill.stop import EXIT_PREEMPTED, Stopped

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        setup_logging()
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if is_main_rank():
                print(f"error: {user_message(exc)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except Stopped as exc:
            if is_main_rank():
                print(f"stopped: {' '.join(str(exc).split())}", file=sys.stderr)
            sys.exit(EXIT_PREEMPTED)
        except (
            KeyboardInterrupt
        ):  # Ctrl-C (twice where a stop is answered): now; files are written under temporary names
            if is_main_rank():
                print("interrupted (Ctrl-C): stopped at once; what was saved before is kept", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            if exc.errno not in STORAGE_ERRORS:
                raise
            if is_main_rank():  # files are written under temporary names: nothing finished is lost
                print(
                    f"error: {exc.filename or 'output'}: {exc.strerror}; run the command again once fixed",
                    file=sys.stderr,
                )
            sys.exit(EXIT_STORAGE)

    return wrapper  # type: ignore[return-value]
