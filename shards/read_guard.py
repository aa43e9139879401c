"""What a loader worker does when shards cannot be read: skip and count a few, stop a run that
loses too many or reads nothing.

A shard that still fails after :mod:`shards.remote`'s retries (or a local one that is gone) is
skipped with a warning naming it. A slot that has skipped more than ``max_skipped_share`` of the
samples it should read this epoch, that has read nothing for ``stall_timeout_s`` seconds while
shards keep failing, or that ends an epoch without a single sample, stops the run with one line
naming a failing URL: a store that went away never hangs a ``loop`` run, and an ``epoch`` pass never
ends early in silence.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sonodistill.errors import UserError

log = logging.getLogger(__name__)

MAX_SKIPPED_SHARE = 0.01
STALL_TIMEOUT_S = 120.0


@dataclass
class ReadGuard:
    max_skipped_share: float = MAX_SKIPPED_SHARE
    stall_timeout_s: float = STALL_TIMEOUT_S
    total: int | None = None  # samples the slot reads this epoch (None: no manifest)
    skipped: int = 0  # samples of skipped shards this epoch
    failures: list[tuple[str, str]] = field(default_factory=list)  # (url, reason)
    last_ok: float = field(default_factory=time.monotonic)

    def new_epoch(self, total: int | None) -> None:
        self.total, self.skipped, self.failures = total, 0, []

    def ok(self) -> None:
        self.last_ok = time.monotonic()

    def failed(self, url: str, reason: str, samples: int | None) -> None:
        """A shard could not be read: warn, count, and stop the run when too much is lost."""
        log.warning(f"{url}: shard skipped, unreadable ({reason})")
        self.failures.append((url, reason))
        self.skipped += samples or 0
        if self.total and self.skipped > self.max_skipped_share * self.total:
            raise UserError(
                f"data.shards: {len(self.failures)} shard(s) unreadable, {self.skipped} of {self.total} samples "
                f"({self.skipped / self.total:.1%}) lost this epoch, more than data.max_skipped_share="
                f"{self.max_skipped_share:g}; e.g. {url} ({reason})"
            )
        idle = time.monotonic() - self.last_ok
        if idle > self.stall_timeout_s:
            raise UserError(
                f"data.shards: nothing read for {idle:.0f} s (data.stall_timeout_s={self.stall_timeout_s:g}); "
                f"last failure {url} ({reason})"
            )

    def epoch_end(self, samples: int) -> None:
        """An epoch in which this slot read no sample at all while shards failed ends the run."""
        if samples == 0 and self.failures:
            url, reason = self.failures[-1]
            raise UserError(f"data.shards: no shard of this slot could be read, e.g. {url} ({reason})")
