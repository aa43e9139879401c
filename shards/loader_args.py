"""The shard loader's arguments checked up front: a wrong type or range is one line naming the
argument, not a traceback from inside a worker process (or a value quietly taken as another)."""

from __future__ import annotations

import math
from numbers import Integral, Real

from sonodistill.errors import UserError


def _int(name: str, value: object, low: int) -> None:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
        raise UserError(f"shard loader {name} {value!r}: expected a whole number >= {low}")


def _real(name: str, value: object, low: float, high: float, low_open: bool = False) -> None:
    bad = not isinstance(value, Real) or isinstance(value, bool) or math.isnan(value)
    if bad or value < low or value > high or (low_open and value == low):
        bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high != math.inf else "")
        raise UserError(f"shard loader {name} {value!r}: expected a number {bound}")


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise UserError(f"shard loader {name} {value!r}: expected true or false")


def check_loader_args(
    *,
    batch_size: object,
    seed: object,
    shuffle_buffer: object,
    num_workers: object,
    prefetch_factor: object,
    max_skipped_share: object,
    stall_timeout_s: object,
    flags: dict[str, object],
    rank: object = None,
    world_size: object = None,
) -> None:
    """Raise :class:`UserError` for the first argument of the wrong type or out of range."""
    _int("batch_size", batch_size, 1)
    _int("seed", seed, 0)  # numpy's SeedSequence takes no negative entropy
    _int("shuffle_buffer", shuffle_buffer, 1)  # 1 = no shuffling within a window
    _int("num_workers", num_workers, 0)
    _int("prefetch_factor", prefetch_factor, 1)
    _real("max_skipped_share", max_skipped_share, 0.0, 1.0)
    # 0 would be the DataLoader's "no timeout": the guard against a store that hangs would be gone
    _real("stall_timeout_s", stall_timeout_s, 0.0, math.inf, low_open=True)
    for name, value in flags.items():
        _bool(name, value)
    if rank is not None:
        _int("rank", rank, 0)
    if world_size is not None:
        _int("world_size", world_size, 1)
