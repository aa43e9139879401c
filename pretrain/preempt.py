"""Preemption: SIGTERM / SIGUSR1 ask the run to checkpoint and exit cleanly.

The handler only records the request; the trainer acts on it at its next check (every
``train.log_every`` steps, where the ranks already synchronise), so every rank stops after the same
step, writes one checkpoint and exits with :data:`EXIT_PREEMPTED`. ``resume=auto`` then continues
from it; ``launch/slurm_pretrain.sbatch`` requeues the job on that exit code.

Install the handler before the data loader starts its workers: forked workers inherit it and so
keep running (instead of dying) when a signal reaches the whole process group, as SLURM sends it.
torch replaces a worker's SIGTERM handler with one that dies, so the shard loader's workers ignore
SIGTERM (:mod:`shards.stream`); the main process ends them after its checkpoint.
"""

from __future__ import annotations

import signal
from types import FrameType

# sysexits.h EX_TEMPFAIL: "temporary failure, try again" - a checkpoint was written, run it again.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Context manager that turns SIGTERM/SIGUSR1 into a flag (previous handlers restored on exit)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopRequest:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
