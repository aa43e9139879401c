"""Work split into N parts that N processes (a SLURM array's tasks, on any nodes) run at once.

A part is written ``I/N``: the I-th of N, counted from 0 (``0/4`` ... ``3/4``), as SLURM numbers the
tasks of ``sbatch --array=0-3``. :func:`assign` deals weighted items to the parts
longest-processing-time first (the greedy rule with a worst case of 4/3 of the best makespan): the
largest item goes to the least loaded part, ties broken by position, so every process computes the
same slices from the same list without talking to the others. The sweep (cells, by a cost model) and
the shard builder (input files, by size) both split their work here.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sonodistill.errors import UserError

PART_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Part:
    """The ``index``-th (from 0) of ``count`` parts."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, where: str = "part") -> Part:
        """``"I/N"`` with ``0 <= I < N``; anything else is one :class:`UserError` line naming ``where``."""
        m = PART_RE.match(text)
        if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
            raise UserError(f"{where}: expected I/N with 0 <= I < N (the I-th of N parts, from 0), got '{text}'")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def tag(self) -> str:
        """For file names: ``part-I-of-N``."""
        return f"part-{self.index}-of-{self.count}"


def assign(costs: Sequence[float], count: int) -> list[int]:
    """The part (0 .. count-1) of every item: largest cost first, each to the least loaded part so far
    (ties: the lower part number; equal costs: the earlier item first). Deterministic for a given list."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    owner = [0] * len(costs)
    # a heap of (load, part); parts past the number of items would stay empty (ties go to the lower part)
    loads = [(0.0, p) for p in range(min(count, len(costs)))]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, p = heapq.heappop(loads)
        owner[i] = p
        heapq.heappush(loads, (load + costs[i], p))
    return owner
