"""A seeded random subset of a shard set that depends only on the seed and the samples.

Every sample's key (and its source file's SHA-1) is hashed with the seed and the ``k`` smallest
hashes are kept (a bottom-k sample: uniform, and the same whatever the reading order, the number of
threads or the machine).
Shards are indexed whole (:mod:`shards.shardfile`) but only samples whose hash beats the current
k-th smallest are decoded: about ``k * (1 + ln(N / k))`` decodes for ``N`` samples, 15K for a 3,000-image
subset of a 160K-frame corpus. Written here because the streaming loader's order (hence a "first k"
subset) follows its worker count, and webdataset has no sampling by key.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

from shards.codec import CorruptSample, decode_gray
from shards.manifest import resolve_shards
from shards.read_guard import MAX_SKIPPED_SHARE
from shards.shardfile import ShardUnreadable, open_shard
from sonodistill.errors import UserError
from sonodistill.logs import progress

log = logging.getLogger(__name__)


def sample_rank(seed: int, key: str, meta: dict) -> int:
    """The sample's place in the seed's random order: 64 bits of BLAKE2b over (seed, key, the SHA-1 of
    its source file): shard sets built apart reuse keys, and would otherwise share their picks."""
    text = f"{seed}\0{key}\0{meta.get('sha1', '')}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class Subset:
    images: np.ndarray  # uint8 [N, 1, H, W], in the seed's order
    sources: list[str]
    keys: list[str]
    skipped: dict[str, int] = field(default_factory=dict)  # corrupt samples and unreadable shards, by reason


@dataclass
class _Kept:
    """The ``k`` lowest-ranked samples so far, as a heap of negated orders (the worst on top)."""

    k: int
    heap: list[tuple[int, int, int, tuple[np.ndarray, str, str]]] = field(default_factory=list)

    @property
    def bar(self) -> tuple[int, int, int] | None:
        """A sample must come before this in the seed's order to get in (None: not full yet)."""
        return None if len(self.heap) < self.k else (-self.heap[0][0], -self.heap[0][1], -self.heap[0][2])

    def offer(self, order: tuple[int, int, int], item: tuple[np.ndarray, str, str]) -> None:
        entry = (-order[0], -order[1], -order[2], item)  # (rank, shard, member) is unique: items never compared
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, entry)
        elif entry[:3] > self.heap[0][:3]:
            heapq.heapreplace(self.heap, entry)


def _read_shard(u: int, url: str, seed: int, bar: tuple | None) -> tuple[int, list, Counter, int, str | None]:
    """One shard's candidates: ``((rank, shard, member), (image, source, key))`` for samples before ``bar``."""
    counts: Counter = Counter()
    try:
        shard = open_shard(url)
    except ShardUnreadable as exc:
        return u, [], counts, 0, str(exc)
    if not shard.index.complete:
        counts["bad_shard"] += 1  # truncated: the samples before the damage are used
    found = []
    for m in range(len(shard)):
        key, meta = shard.key(m), shard.meta(m)
        order = (sample_rank(seed, key, meta), u, m)
        if bar is not None and order >= bar:
            continue
        enc = shard.index.encoding(m)
        if enc is None:
            counts["missing_image"] += 1
            continue
        try:
            image = decode_gray(shard.image(m), enc)
        except CorruptSample as exc:
            counts[exc.reason] += 1
            continue
        found.append((order, (image, str(meta.get("source", "")), key)))
    return u, found, counts, len(shard), None


def _check_losses(failed: int, lost: int, total: int | None, read: int, url: str, reason: str, short: int = 0) -> None:
    """Stop, as the loader does (:mod:`shards.read_guard`), when more than 1 % of the samples are lost or,
    without a manifest, when the first shards all fail: a store that went away never hangs the read."""
    if total and lost > MAX_SKIPPED_SHARE * total:
        bad = ", ".join(f"{n} shard(s) {what}" for n, what in ((failed, "unreadable"), (short, "cut short")) if n)
        raise UserError(
            f"shards: {bad}, {lost} of {total} samples ({lost / total:.1%}) lost, "
            f"more than {MAX_SKIPPED_SHARE:.0%}; e.g. {url} ({reason})"
        )
    if not total and not read and failed >= 3:
        raise UserError(f"shards: the first {failed} shards could not be read, e.g. {url} ({reason})")


def seeded_subset(shards: str, k: int, seed: int, threads: int = 1) -> Subset:
    """Up to ``k`` samples of ``shards`` (folder, URL, manifest or pattern), the same for any ``threads``.

    Unreadable shards are skipped, warned about and counted under ``skipped``, as are the corrupt
    samples met (a sample is decoded only while it could still get in, so that count may vary).
    """
    urls, manifest = resolve_shards(shards)
    total = None if manifest is None else int(manifest["num_samples"])
    counts = [int(c) for c in (manifest or {}).get("shard_samples", [])] or None
    kept, skipped, lost, read, short = _Kept(k), Counter(), 0, 0, 0
    with (
        ThreadPoolExecutor(max(1, threads)) as pool,
        progress(total=total, desc="read shards", unit="img") as bar,
    ):
        # a few shards ahead of the threads, so each starts with a recent bar (fewer wasted decodes)
        ahead = max(1, threads) * 2
        pending, next_u = set(), 0
        while next_u < len(urls) or pending:
            while next_u < len(urls) and len(pending) < ahead:
                pending.add(pool.submit(_read_shard, next_u, urls[next_u], seed, kept.bar))
                next_u += 1
            done = next(as_completed(pending))
            pending.discard(done)
            u, found, c, n, failure = done.result()
            if failure is not None:
                log.warning(f"{urls[u]}: shard skipped, unreadable ({failure})")
                skipped["unreadable_shard"] += 1
                lost += counts[u] if counts else 0
                _check_losses(skipped["unreadable_shard"], lost, total, read, urls[u], failure)
            elif counts and n < counts[u]:  # truncated: the samples after the damage are lost
                lost += counts[u] - n
                short += 1
                cut = f"cut short: {n} of {counts[u]} samples"
                _check_losses(skipped["unreadable_shard"], lost, total, read, urls[u], cut, short)
            read += n
            skipped.update(c)
            for order, item in found:
                kept.offer(order, item)
            bar.update(n)
    rows = sorted(((-e[0], -e[1], -e[2]), e[3]) for e in kept.heap)
    if not rows:
        raise UserError(f"{shards}: no samples in the shards")
    shapes = {item[0].shape for _, item in rows}
    if len(shapes) > 1:
        raise UserError(f"{shards}: samples of different sizes ({', '.join(map(str, sorted(shapes)))})")
    if skipped:
        log.warning(f"{shards}: skipped {dict(skipped)}")
    return Subset(
        images=np.stack([item[0] for _, item in rows])[:, None],
        sources=[item[1] for _, item in rows],
        keys=[item[2] for _, item in rows],
        skipped=dict(skipped),
    )
