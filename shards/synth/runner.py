"""What every layout shares: output/truth checks, per-image seeding, the (parallel) job loop with a
progress bar, and the truth JSONL.

Each image gets its own generator from ``SeedSequence([seed, layout, *ids])``, so its content
does not depend on generation order and any worker count writes identical files.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from sonodistill.atomic import write_text
from sonodistill.errors import UserError
from sonodistill.logs import progress as progress_bar
from sonodistill.outdir import make_writable_folder
from sonodistill.stop import die_with_parent

T = TypeVar("T")
R = TypeVar("R")

LAYOUT_TAGS = {"corpus": 1, "busi": 2, "ddti": 3}
PLAN = 0  # id of the layout-level generator that lays out sources, kinds and duplicates


def image_rng(seed: int, layout: str, *ids: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), LAYOUT_TAGS[layout], *map(int, ids)]))


def plan_rng(seed: int, layout: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), LAYOUT_TAGS[layout], PLAN, 0x5EED]))


def check_args(out: str | os.PathLike, n: int, seed: int, truth: str | os.PathLike | None, workers: int) -> Path:
    """Validate common arguments; create ``out``. Raises UserError with a one-line reason."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserError(f"--n: expected a positive number of images, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed: expected a non-negative integer, got {seed!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise UserError(f"--workers: expected a positive integer, got {workers!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: output path exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out}: output directory exists and is not empty (choose a new --out)")
    if truth is not None:
        t = Path(truth).resolve()
        if t == out.resolve() or out.resolve() in t.parents:
            raise UserError(
                f"--truth {truth}: must be outside the output directory {out} (it would be scanned as data)"
            )
        if t.is_dir():
            raise UserError(f"--truth {truth}: is a directory, expected a file path")
        if t.exists() and not t.is_file():  # a device or a pipe: the atomic write would replace it
            raise UserError(f"--truth {truth}: exists and is not a regular file (a device, a pipe?)")
        if t.exists():  # another set's ground truth, as --out refuses another set's files
            raise UserError(f"--truth {truth}: exists; give a new file (the truth of another set would be lost)")
        make_writable_folder(t.parent, "--truth")  # written last: a bad path must not cost the whole run
    make_writable_folder(out)
    return out


def run_jobs(fn: Callable[[T], R], tasks: Sequence[T], workers: int, progress: bool, desc: str, out: Path) -> list[R]:
    """``[fn(t) for t in tasks]`` on ``workers`` processes, in order, with a progress bar.

    On Ctrl-C, temporary files of images being written are removed before re-raising.
    """
    results: list[R] = []
    bar = progress_bar(total=len(tasks), desc=desc, unit="img", main=progress)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                results.append(fn(t))
                bar.update(1)
        else:
            pool = multiprocessing.get_context().Pool(
                min(workers, len(tasks)), initializer=_ignore_sigint, initargs=(os.getpid(),)
            )
            with pool:
                for r in pool.imap(fn, tasks, chunksize=max(1, min(8, len(tasks) // (4 * workers)))):
                    results.append(r)
                    bar.update(1)
    except BaseException:
        for tmp in out.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return results


def _ignore_sigint(parent: int) -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool and removes temporary files, and die
    with it when it is killed outright."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def write_truth(truth: str | os.PathLike | None, records: Iterable[dict]) -> None:
    if truth is not None:
        write_text(truth, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def split_counts(n: int, weights: Sequence[float], at_least_one: bool = True) -> list[int]:
    """Split ``n`` in proportion to ``weights`` (largest remainder); each part >= 1 when n allows."""
    w = np.asarray(weights, dtype=np.float64)
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if at_least_one and n >= len(w):
        for i in range(len(w)):
            while counts[i] == 0:
                j = int(np.argmax(counts))
                counts[j] -= 1
                counts[i] += 1
    return [int(c) for c in counts]
