"""Ordered parallel map with a bounded window: results in input order, memory independent of length.

``multiprocessing.Pool.imap`` eagerly drains its input iterator into the task queue, which for a
dataset source means holding every encoded image in memory; this keeps at most ``window`` chunks in
flight instead.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from sonodistill.stop import ignore_all_stop_signals, pool_context

A = TypeVar("A")
R = TypeVar("R")


def _run_chunk(fn: Callable[[A], R], chunk: list[A]) -> list[R]:
    return [fn(x) for x in chunk]


def ordered_map(
    fn: Callable[[A], R], items: Iterable[A], workers: int, chunk: int = 8, window: int | None = None
) -> Iterator[R]:
    """Yield ``fn(x)`` for every ``x`` in order; ``workers <= 1`` runs in this process."""
    if workers <= 1:
        for x in items:
            yield fn(x)
        return
    window = window or workers * 4
    it = iter(items)
    # spawn: workers must not inherit a parent's threads (torch, tqdm) through fork.
    # Workers ignore a stop signal sent to the whole process group: the main process decides; they
    # die with it when it is killed outright.
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=pool_context(),
        initializer=ignore_all_stop_signals,
        initargs=(os.getpid(),),
    ) as pool:
        pending: deque = deque()

        def submit() -> bool:
            batch = list(itertools.islice(it, chunk))
            if batch:
                pending.append(pool.submit(_run_chunk, fn, batch))
            return bool(batch)

        for _ in range(window):
            if not submit():
                break
        while pending:
            results = pending.popleft().result()
            submit()
            yield from results
