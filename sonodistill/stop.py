"""Stop requests: SIGTERM, SIGINT and SIGUSR1 ask a long-running command to keep its work and exit 75.

SLURM's preemption and ``scancel``, Kubernetes and a terminal's Ctrl-C signal every process of a
job, loader workers included. So:

- the main process installs :class:`StopRequest` (before any loader starts its workers), whose
  handler only records the request; the command acts on it at its next check (pretraining: every
  ``train.log_every`` steps, where the ranks already synchronise; a training loop: every step; a
  sweep: between cells; a shard build: between files), keeps what is finished (a checkpoint, the
  finished cells or stages, the finished shards) and ends with :class:`Stopped`, which
  :func:`sonodistill.errors.cli_main` turns into one ``stopped:`` line and exit code
  :data:`EXIT_PREEMPTED` (75). Running the same command again continues.
- loader workers ignore the signals unless their own parent sends them (:func:`ignore_stop_signals`
  as ``worker_init_fn``): they end when the main process shuts its loader down, never mid-batch.
- a second Ctrl-C interrupts at once (``KeyboardInterrupt``), for a user who does not want to wait.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import os
import signal
import threading
from types import FrameType

# sysexits.h EX_TEMPFAIL: "temporary failure, try again" - the work so far is kept, run it again.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
PR_SET_PDEATHSIG = 1  # linux/prctl.h

_ACTIVE: list[StopRequest] = []


class Stopped(Exception):
    """A stop signal ended the command after it kept its work (exit 75: run it again to continue)."""


class StopRequest:
    """Context manager that turns SIGTERM/SIGINT/SIGUSR1 into a flag (previous handlers restored on exit)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == "SIGINT":  # Ctrl-C twice: stop now
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopRequest:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)


def stop_requested() -> str | None:
    """The signal that asked this process to stop (``None``: carry on or no request installed)."""
    for req in _ACTIVE:
        if req.received:
            return req.received
    return None


def check_stop(kept: str) -> None:
    """Raise :class:`Stopped` if a stop was requested; ``kept`` says what a re-run continues from."""
    received = stop_requested()
    if received:
        raise Stopped(f"{received} received; {kept}; run the same command again to continue")


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """``worker_init_fn`` of every loader: a stop signal to the whole process group must not kill a
    worker mid-batch (PyTorch's own SIGTERM handler in a worker dies on a signal not sent by its
    parent, and the main process then crashes). SIGINT and SIGUSR1 are ignored; SIGTERM still ends
    the worker when its parent sends it (the loader's shutdown), and only then."""
    for sig in STOP_SIGNALS:
        if sig != signal.SIGTERM:
            signal.signal(sig, signal.SIG_IGN)
    _sigterm_from_parent_only()


def ignore_all_stop_signals(parent: int | None = None) -> None:
    """``initializer`` of a process pool (spawned workers): the three signals are ignored outright.
    A spawned worker already runs threads (its imports start them) that :func:`ignore_stop_signals`
    cannot mask, and a pool ends its workers with a message, never with SIGTERM. With ``parent``
    (the pool's process id) the worker also dies with it (:func:`die_with_parent`)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked since the spawn: now ignored
    if parent is not None:
        die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when ``parent`` dies (Linux; elsewhere nothing). A parent
    killed with SIGKILL (or by the OOM killer) cannot tell its pool, whose workers would otherwise
    wait for work forever, ignoring the stop signals, holding memory."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _sigterm_from_parent_only() -> None:
    # A handler cannot see who sent a signal; sigwaitinfo can. SIGTERM is blocked in this thread and,
    # with :func:`worker_context`, in every thread started at the fork (at-fork hooks of libraries), so
    # one waiting thread takes it and exits the process only when the sender is the parent.
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent:
                os._exit(0)

    threading.Thread(target=wait, name="sigterm-from-parent", daemon=True).start()


def _started_blocking(name: str, base: type, signals: set) -> type:
    """``base`` (a multiprocessing Process class) started with ``signals`` blocked in this thread, so
    the child starts with them blocked (across fork, and exec); here they wait a moment at most.
    Bound to ``name`` in this module: spawn pickles the process object, class by name."""

    def _Popen(process_obj):  # noqa: N802 (multiprocessing's name)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            return base._Popen(process_obj)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    return type(name, (base,), {"_Popen": staticmethod(_Popen), "__module__": __name__})


_SigtermBlockedFork = _started_blocking("_SigtermBlockedFork", multiprocessing.context.ForkProcess, {signal.SIGTERM})


class _SigtermBlockedForkContext(multiprocessing.context.ForkContext):
    Process = _SigtermBlockedFork


_StopBlockedSpawn = _started_blocking("_StopBlockedSpawn", multiprocessing.context.SpawnProcess, set(STOP_SIGNALS))


class _StopBlockedSpawnContext(multiprocessing.context.SpawnContext):
    Process = _StopBlockedSpawn


def pool_context() -> multiprocessing.context.BaseContext:
    """``mp_context`` of a process pool whose initializer is :func:`ignore_all_stop_signals`: spawned
    with the stop signals blocked (the mask survives the exec), so one sent to the whole job while a
    worker is still importing stays pending until the initializer has ignored it. Otherwise it kills
    that worker, the pool is broken, and the pool's SIGTERM to the others (which ignore it) never
    ends them: the build hangs instead of stopping."""
    return _StopBlockedSpawnContext()


def worker_context() -> multiprocessing.context.BaseContext | None:
    """``multiprocessing_context`` of every loader with workers: forked with SIGTERM blocked, so a thread
    a library starts in the child at the fork (before ``worker_init_fn``) never takes a stop signal meant
    for the job (PyTorch's handler would kill the worker there). None where fork is not available."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    return _SigtermBlockedForkContext()
