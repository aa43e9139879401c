"""What a loader worker does when shards cannot be read: skip and count a few, stop a run that
loses too many or reads nothing.

A shard that still fails after :mod:`shards.remote`'s retries (or a local one that is gone) is
skipped with a warning naming it. A slot that has skipped more than ``max_skipped_share`` of the
samples it should read this epoch (in unreadable shards, past the damage of truncated ones, in
shards whose length differs from the manifest, or of another image size than the loader's), that
has read nothing for ``stall_timeout_s`` seconds while
shards keep failing, or that ends an epoch without a single sample, stops the run with one line
naming a failing URL: a store that went away never hangs a ``loop`` run, and an ``epoch`` pass never
ends early in silence.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from sonodistill.errors import UserError

log = logging.getLogger(__name__)

MAX_SKIPPED_SHARE = 0.01
STALL_TIMEOUT_S = 120.0


# What a slot can lose, as its messages name it.
LOSSES = {
    "unreadable": "in unreadable shards",  # describe() counts the shards
    "truncated": "past the damage in truncated shards",
    "mismatch": "in shards whose length differs from the manifest",
    "size": "of another image size",
    "not_jpeg": "not JPEG (decode='device')",
}


@dataclass
class ReadGuard:
    max_skipped_share: float = MAX_SKIPPED_SHARE
    stall_timeout_s: float = STALL_TIMEOUT_S
    total: int | None = None  # samples the slot reads this epoch (None: no manifest)
    skipped: int = 0  # samples lost this epoch (LOSSES)
    causes: Counter = field(default_factory=Counter)  # samples lost this epoch, per LOSSES key
    failures: list[tuple[str, str]] = field(default_factory=list)  # (url, reason) of unreadable shards
    last: tuple[str, str] | None = None  # (url, reason) of the latest loss
    warned: set = field(default_factory=set)  # (url, cause): one warning each per run
    last_ok: float = field(default_factory=time.monotonic)

    def new_epoch(self, total: int | None) -> None:
        self.total, self.skipped, self.failures = total, 0, []
        self.causes, self.last = Counter(), None

    def ok(self) -> None:
        self.last_ok = time.monotonic()

    def failed(self, url: str, reason: str, samples: int | None) -> None:
        """A shard could not be read: warn, count, and stop the run when too much is lost."""
        self.failures.append((url, reason))
        self.lost(url, reason, samples or 0, "unreadable")
        idle = time.monotonic() - self.last_ok
        if idle > self.stall_timeout_s:
            raise UserError(
                f"data.shards: nothing read for {idle:.0f} s (data.stall_timeout_s={self.stall_timeout_s:g}); "
                f"last failure {url} ({reason})"
            )

    def lost(self, url: str, reason: str, samples: int, cause: str) -> None:
        """``samples`` of ``url`` not read for ``cause`` (a LOSSES key): warned once per shard and
        cause, counted, and the run stopped when this epoch has lost more than its share."""
        if (url, cause) not in self.warned:
            self.warned.add((url, cause))
            what = "shard skipped, unreadable" if cause == "unreadable" else "samples skipped"
            log.warning(f"{url}: {what} ({reason})")
        self.skipped += samples
        self.causes[cause] += samples
        self.last = (url, reason)
        if self.total:
            self.check_share(self.total)

    def check_share(self, total: int) -> None:
        if self.skipped > self.max_skipped_share * total:
            url, reason = self.last or ("?", "?")
            raise UserError(
                f"data.shards: {self.skipped} of {total} samples ({self.skipped / total:.1%}) lost this epoch "
                f"({self.describe()}), more than data.max_skipped_share={self.max_skipped_share:g}; "
                f"e.g. {url} ({reason})"
            )

    def describe(self) -> str:
        said = {"unreadable": f"in {len(self.failures)} unreadable shard(s)"}
        return ", ".join(f"{n} {said.get(c, LOSSES[c])}" for c, n in self.causes.items() if n or c in said)

    def epoch_end(self, samples: int, planned: int, shards: list[str], held: int, skips: dict[str, int]) -> None:
        """An epoch in which this slot read no sample at all ends the run -- a ``loop`` run would
        otherwise spin forever -- when its shards failed, when the ``shards`` it was dealt gave none of
        the ``planned`` samples (damaged, or every sample skipped: ``skips`` says why), or when they hold
        none at all (``held``: empty tar files). Without a manifest the share lost is checked here."""
        if samples and self.total is None and planned:
            self.check_share(planned)
        if samples:
            return
        if self.failures:
            url, reason = self.failures[-1]
            raise UserError(f"data.shards: no shard of this slot could be read, e.g. {url} ({reason})")
        if shards and (planned > 0 or held == 0):
            why = ", ".join(f"{k} {v}" for k, v in sorted(skips.items()) if v)
            raise UserError(
                f"data.shards: the {len(shards)} shard(s) of this loader slot gave no sample ("
                + (f"samples skipped: {why}" if why else "damaged, truncated or empty tar files")
                + (f"; {self.last[1]}" if self.last else "")
                + f"), e.g. {shards[0]}"
            )


FAILURES_IN_A_ROW = 3  # shards failing one after another: the store is gone, not one bad file


@dataclass
class Coverage:
    """What one pass over a shard set that must see all of it (``shards.inspect``) could not read.

    An overlap count over a set read in part is only a lower bound, so what was missed is reported;
    ``FAILURES_IN_A_ROW`` unreadable shards in a row stop the pass with one line instead of minutes
    of retries per shard against a store that went away."""

    what: str  # the shard set, for messages
    counts: list[int] | None = None  # samples per shard (the manifest's shard_samples)
    read: int = 0  # samples read
    unreadable: int = 0  # shards not opened at all
    cut_short: int = 0  # shards truncated or damaged (their samples before the damage are read)
    corrupt: int = 0  # samples that did not decode
    missed: int = 0  # samples known not read (needs the manifest's counts)
    in_a_row: int = 0

    def shard(self, u: int, url: str, read: int, failure: str | None, complete: bool = True, corrupt: int = 0) -> None:
        """Shard ``u`` gave ``read`` samples and ``corrupt`` bad ones (``failure``: why it did not open)."""
        self.read += read
        self.corrupt += corrupt
        if failure is not None:
            log.warning(f"{url}: shard skipped, unreadable ({failure})")
            self.unreadable += 1
            self.missed += self.counts[u] if self.counts else 0
            self.in_a_row += 1
            if self.in_a_row >= FAILURES_IN_A_ROW:
                raise UserError(
                    f"{self.what}: {self.in_a_row} shards in a row could not be read (the store is gone or the "
                    f"set is damaged), e.g. {url} ({failure})"
                )
            return
        self.in_a_row = 0
        expected = self.counts[u] if self.counts else None
        if not complete or (expected is not None and read + corrupt < expected):
            self.cut_short += 1
        if expected is not None:
            self.missed += max(0, expected - read)
        elif corrupt:
            self.missed += corrupt

    def gaps(self) -> str | None:
        """What was not read, in one phrase (None: every sample was)."""
        labels = (
            (self.unreadable, "shard(s) unreadable"),
            (self.cut_short, "shard(s) cut short"),
            (self.corrupt, "corrupt sample(s)"),
        )
        details = ", ".join(f"{n} {label}" for n, label in labels if n)
        if not details and not self.missed:
            return None
        if self.counts:
            return f"{self.missed} of {sum(self.counts)} samples not read" + (f" ({details})" if details else "")
        return f"not read: {details}"
