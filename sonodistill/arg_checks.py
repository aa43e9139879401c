"""Lower bounds of a script's numeric flags, checked before any work: one ``error:`` line (exit 2
under :func:`sonodistill.errors.cli_main`) instead of a traceback minutes in."""

from __future__ import annotations

import argparse

from sonodistill.errors import UserError


def at_least(args: argparse.Namespace, least: dict[str, int]) -> None:
    """:class:`UserError` naming the first flag of ``least`` (its dest name) below its bound."""
    for name, low in least.items():
        value = getattr(args, name)
        if value < low:
            raise UserError(f"--{name.replace('_', '-')} {value}: expected at least {low}")
