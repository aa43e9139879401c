"""An ``argparse`` parser whose mistakes are one ``error:`` line, as every other bad input is.

argparse prints its whole usage text before the error and exits itself; raised as a
:class:`~sonodistill.errors.UserError` instead, a wrong flag, type or choice reaches
:func:`~sonodistill.errors.cli_main` like any other bad input (``--help`` still prints the usage).
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from sonodistill.errors import UserError


class CommandParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (--help lists the options)")
