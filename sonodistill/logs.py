"""Logging and progress for every stage.

- One logger per module (``logging.getLogger(__name__)``), so each package (``shards``,
  ``pretrain``, ``downstream``, ``sonodistill``) can be tuned on its own.
- :func:`setup_logging` (called by every command through ``cli_main``) sends records to stderr
  from rank 0 only: a distributed run prints a message once, not once per process. A module run
  as ``python -m shards.build`` logs as ``__main__``; its records are kept too, under the name
  it is imported by (else they would reach only Python's last-resort handler: warnings alone). Set
  ``SONODISTILL_LOG_RANKS=all`` to hear every rank (each line then names its rank).
- :func:`progress` is a tqdm bar on a terminal; when stderr is not a terminal (SLURM logs, CI,
  pipes) it logs one line every ``log_every`` updates (at most one per ``MIN_INTERVAL`` seconds)
  instead of carriage-return frames, and on ranks other than 0 it is silent.
  ``SONODISTILL_PROGRESS=bar|log|off`` forces a style.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

ROOT_PACKAGES = ("sonodistill", "shards", "pretrain", "downstream", "bench")
MIN_INTERVAL = 10.0  # seconds between two progress lines in a log


def rank() -> int:
    """This process's global rank from the launcher's environment (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def is_main_rank() -> bool:
    return rank() == 0


class _RankFilter(logging.Filter):
    def __init__(self, all_ranks: bool):
        super().__init__()
        self.all_ranks = all_ranks

    def filter(self, record: logging.LogRecord) -> bool:
        if self.all_ranks:
            record.msg = f"[rank {rank()}] {record.msg}"
            return True
        return is_main_rank()


def main_module_name() -> str:
    """The import name of the module run as ``__main__`` (``python -m downstream.kd``: downstream.kd;
    a script: its file's stem)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name.removesuffix(".__main__")
    path = getattr(main, "__file__", None)
    return os.path.splitext(os.path.basename(path))[0] if path else "__main__"


class _Formatter(logging.Formatter):
    """``HH:MM:SS name: message``; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        name = main_module_name() if record.name == "__main__" else record.name
        return f"{self.formatTime(record, '%H:%M:%S')} {name}: {level}{record.getMessage()}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (redirections and test capture included)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        """Ignored: logging.StreamHandler sets it, but the stream is always the current sys.stderr."""


_HANDLER: logging.Handler | None = None


class _NoCpuFallbackNotice(logging.Filter):
    """DeepSpeed, imported by accelerate and transformers on demand, warns on every command of a
    machine without a GPU that it falls back to the CPU, on stdout (where a command's JSON goes):
    what the user chose, said by us already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Setting accelerator to CPU"):
            return True
        import torch

        return torch.cuda.device_count() > 0  # a GPU it could not use: that one is worth a warning


def setup_logging(level: int = logging.INFO) -> None:
    """One stderr handler for the project's packages (idempotent)."""
    global _HANDLER
    if _HANDLER is not None:
        return
    logging.getLogger("DeepSpeed").addFilter(_NoCpuFallbackNotice())  # the logger DeepSpeed creates on import
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    handler.addFilter(_RankFilter(os.environ.get("SONODISTILL_LOG_RANKS", "") == "all"))
    for name in (*ROOT_PACKAGES, "__main__"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    _HANDLER = handler


def _style(main: bool) -> str:
    forced = os.environ.get("SONODISTILL_PROGRESS", "")
    if not main or forced == "off":
        return "off"
    if forced in ("bar", "log"):
        return forced
    return "bar" if sys.stderr.isatty() else "log"


class LogProgress:
    """The subset of tqdm's interface the project uses, writing a log line every ``log_every`` updates."""

    def __init__(
        self,
        iterable: Iterable | None,
        total: int | None,
        desc: str,
        unit: str,
        initial: int,
        log_every: int | None,
        logger: logging.Logger | None,
        enabled: bool,
    ):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self._last = self._initial = initial
        self.enabled = enabled
        self.log = logger or logging.getLogger("sonodistill.progress")
        self.every = log_every or max(1, (total or 1000) // 10)
        self.postfix: dict[str, Any] = {}
        self._t0 = self._t_last = time.perf_counter()

    def __iter__(self) -> Iterator:
        for item in self.iterable:  # type: ignore[union-attr]
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled and self.n - self._last >= self.every and time.perf_counter() - self._t_last >= MIN_INTERVAL:
            self._emit()

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = kwargs

    def _emit(self) -> None:
        self._last, self._t_last = self.n, time.perf_counter()
        rate = (self.n - self._initial) / max(time.perf_counter() - self._t0, 1e-9)
        of = f"/{self.total}" if self.total else ""
        extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        self.log.info(f"{self.desc}: {self.n}{of} {self.unit} ({rate:.1f} {self.unit}/s) {extra}".rstrip())

    def close(self) -> None:
        if self.enabled and self.n != self._last:
            self._emit()
        self.enabled = False


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    main: bool = True,
    log_every: int | None = None,
    logger: logging.Logger | None = None,
) -> Any:
    """A tqdm bar (terminal) or a :class:`LogProgress` (logs) over ``iterable`` / up to ``total``.

    ``main=False`` (ranks other than 0) gives a silent counter with the same interface.
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    style = _style(main)
    if style == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, leave=False)
    return LogProgress(iterable, total, desc, unit, initial, log_every, logger, enabled=style == "log")
