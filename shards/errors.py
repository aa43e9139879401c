"""User-facing errors and the CLI wrapper that turns them into one line and a non-zero exit.

Every command-line entry point of the project runs through :func:`cli_main`, so bad input
(a missing file, an unknown config key, a wrong architecture) never ends in a traceback.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input: the message is one line naming the file/key and what was expected."""


def cli_main(fn: F) -> F:
    """Run ``fn``; a :class:`UserError` prints ``error: <message>`` to stderr and exits 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            msg = " ".join(str(exc).split())  # always one line
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
