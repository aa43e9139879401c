"""Stream WebDataset shards to many ranks and DataLoader workers, with an exact, resumable position.

    loader = ShardLoader("/data/shards", batch_size=64, mode="loop", seed=0, num_workers=8)
    for batch in loader:            # {"image": uint8 [B, 1, H, W]} (+ "source", "key")
        ...
        state = loader.state_dict()  # store in the checkpoint; load_state_dict() continues after it

Each (rank, worker) pair is a *slot*. Per epoch, the shard list is permuted with ``(seed, epoch)``
— the same permutation on every rank — and dealt to the slots (when there are fewer shards than
slots, every slot reads all shards and keeps every ``total``-th sample), so each sample is seen
exactly once per epoch across all ranks and workers (each slot on its own epoch clock: at a given
step, slots may be an epoch apart). A slot's samples, in shard order, are cut into
windows of ``shuffle_buffer`` consecutive samples and each window is permuted with a generator
seeded by ``(seed, epoch, slot, window)``: the order is a pure function of those numbers and of the
shards' sample counts (the manifest's, so a shard that fails to read cannot shift it).

Shards are read whole (memory-mapped when local, fetched with retries when remote:
:mod:`shards.remote`) and indexed at once (:mod:`shards.tarindex`); images are decoded (PNG,
JPEG) or copied (raw) straight into a batch buffer that is handed to the main process through
reused shared memory (:mod:`shards.handoff`). Nothing is done per sample in Python beyond the decode
call and one row copy, which keeps the loader at its decode (or read) limit (``bench/loader.py``).

Modes: ``epoch`` (one pass per ``iter()``, finite), ``loop`` (epoch after epoch, infinite: the
pretraining default) and ``resampled`` (shards drawn with replacement, infinite; ``source_weights``
sets how often each source is drawn: :mod:`shards.balance`).

Position = for every slot, (epoch, samples taken from that epoch's shuffled stream). Resuming
skips whole windows by their counts without reading them, and the DataLoader's worker round-robin
is rotated to continue with the slot that was next. Written here because webdataset's loaders have
no resumable position and ``accelerate.skip_first_batches`` would decode everything it skips.

``decode="device"`` (JPEG shards only) leaves decoding to the caller's device: batches carry the
undecoded JPEG members (``"jpeg"``: uint8 bytes, ``"jpeg_offsets"``: ``[B+1]``), turned into
images by :func:`decode_on_device` (nvJPEG on a GPU).
"""

from __future__ import annotations

import functools
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.codec import CorruptSample, decode_gray, decode_jpeg_batch, npy_header
from shards.handoff import BatchRing
from shards.loader_args import check_loader_args
from shards.manifest import encoding_of, present_shards, resolve_shards
from shards.read_guard import MAX_SKIPPED_SHARE, STALL_TIMEOUT_S, ReadGuard
from shards.shardfile import NPY_CODE as _NPY_CODE
from shards.shardfile import IndexCache, Shard, ShardUnreadable, open_shard
from sonodistill.errors import UserError
from sonodistill.stop import Stopped, ignore_stop_signals, stop_requested, worker_context

log = logging.getLogger(__name__)

MODES = ("epoch", "loop", "resampled")
# skip counters of ShardLoader.skipped that count shards; every other key counts samples
SHARD_SKIPS = ("unreadable_shard", "bad_shard", "shard_mismatch")
STALL_POLL_S = 2.0  # a loader waiting on a stalled store looks for a stop request this often
STATE_VERSION = 2
# Images per DataLoader item (several batches travel together when batches are smaller; see _Item).
ITEM_IMAGES = {"raw": 512, "decoded": 256}
DECODE = ("worker", "device")


@functools.cache
def _npy_header_len(size: int) -> int:
    return len(npy_header((size, size)))


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


Deal = tuple[list[int], tuple[int, int] | None]


def deal(n: int, seed: int, epoch: int, shuffle: bool, slot: int, total: int) -> Deal:
    """The ``n`` shards' permutation for ``epoch`` (the same on every rank) dealt to ``total`` slots:
    the shards ``slot`` reads, and (slot, total) when there are fewer shards than slots and every
    slot reads them all, keeping every ``total``-th sample."""
    order = list(range(n))
    if shuffle:
        random.Random(_seed(seed, epoch, 0)).shuffle(order)
    if n >= total:
        return order[slot::total], None
    return order, (slot, total)


def dealt_samples(counts: list[int], mine: list[int], modulo: tuple[int, int] | None) -> int:
    """Samples a slot reads from its dealt shards (``deal``): with fewer shards than slots, slot
    ``s`` of ``total`` keeps the samples whose running index is ``s`` modulo ``total``."""
    held = sum(counts[u] for u in mine)
    return len(range(modulo[0], held, modulo[1])) if modulo is not None else held


class _Window:
    """A permuted run of a slot's samples: ``(shard, member)`` per position; ``start`` = position in the epoch."""

    __slots__ = ("start", "shard", "member", "raw_offset", "buffers")

    def __init__(self, start: int, shard: np.ndarray, member: np.ndarray) -> None:
        self.start, self.shard, self.member = start, shard, member
        self.raw_offset: np.ndarray | None = None  # raw shard sets: see _SlotStream._plan_raw
        self.buffers: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.shard)


class _SlotStream(IterableDataset):
    """The per-worker side: the slot's sample order -> decode/copy -> fixed-size uint8 batches."""

    def __init__(
        self,
        urls: list[str],
        counts: list[int] | None,
        batch_size: int,
        mode: str,
        seed: int,
        shuffle: bool,
        shuffle_buffer: int,
        rank: int,
        world_size: int,
        num_workers: int,
        with_meta: bool,
        drop_last: bool,
        start: dict[int, tuple[int, int]],
        rotation: int,
        image_size: int | None,
        epoch_limit: int | None,
        decode: str = "worker",
        ring: BatchRing | None = None,
        encoding: str | None = None,
        parts: int = 1,
        first_parts: dict[int, int] | None = None,
        plan: tuple[list[float], list[dict[str, float]]] | None = None,
        guard: ReadGuard | None = None,
    ):
        super().__init__()
        self.guard = guard or ReadGuard()
        self.urls, self.counts, self.batch_size, self.mode, self.seed = urls, counts, batch_size, mode, seed
        self.shuffle, self.shuffle_buffer, self.rank, self.world_size = shuffle, shuffle_buffer, rank, world_size
        self.num_workers, self.with_meta, self.drop_last = num_workers, with_meta, drop_last
        self.start, self.rotation, self.image_size, self.epoch_limit = start, rotation, image_size, epoch_limit
        self.decode, self.ring, self.encoding = decode, ring, encoding
        self.parts, self.first_parts = parts, first_parts or {}
        self.dealt = 1  # shards dealt by sample to this many slots (fewer shards than slots): see __iter__
        self._open: dict[str, Shard | None] = {}  # shards of the current windows (None: unreadable)
        self._unreadable: dict[str, str] = {}  # why, per unreadable shard
        self._checked: set[int] = set()  # shards whose losses this epoch has counted
        # A resumed epoch's losses before its position were counted by the run that read them (the
        # state's ``skipped``): shards opened while replaying up to it are not counted again.
        self._resume_at, self._quiet = 0, False
        self._indexes = IndexCache()  # shards opened again in later epochs are not indexed again
        self.plan = plan  # resampled mode with source weights: (shard probabilities, keep per source)

    # --- the sample order of one slot in one epoch -------------------------------------------------
    def slot_shards(self, epoch: int, slot: int, total: int) -> Deal:
        """Indices into ``urls`` this slot reads, in order, and (slot, total) when samples are dealt instead."""
        n = len(self.urls)
        if self.mode == "resampled":
            rng = random.Random(_seed(self.seed, epoch, slot, 1))
            if self.plan is not None:  # shards drawn by their sources' weights (shards.balance)
                return rng.choices(range(n), weights=self.plan[0], k=max(1, n // total)), None
            return [rng.randrange(n) for _ in range(max(1, n // total))], None
        return deal(n, self.seed, epoch, self.shuffle, slot, total)

    def _slot_total(self, epoch: int, slot: int, total: int) -> int | None:
        """Samples this slot reads in ``epoch`` (from the manifest; None without one)."""
        if self.counts is None:
            return None
        return dealt_samples(self.counts, *self.slot_shards(epoch, slot, total))

    def _count(self, u: int, counts: Counter) -> int:
        if self.counts is not None:
            return self.counts[u]
        shard = self._shard(u, counts)
        return 0 if shard is None else len(shard)

    def windows(self, epoch: int, slot: int, total: int, counts: Counter) -> Iterator[_Window]:
        """The slot's epoch stream, window by window (shards are opened only to count them without a manifest)."""
        mine, modulo = self.slot_shards(epoch, slot, total)
        size = self.shuffle_buffer if self.shuffle and self.shuffle_buffer > 1 else max(self.batch_size, 1024)
        parts_s: list[np.ndarray] = []
        parts_m: list[np.ndarray] = []
        pending, start, w, seen = 0, 0, 0, 0
        coin = random.Random(_seed(self.seed, epoch, slot, 3)) if self.plan is not None else None
        for u in mine:
            self._quiet = start < self._resume_at  # building a window the resumed run read before
            n = self._count(u, counts)
            members = np.arange(n, dtype=np.int64)
            if modulo is not None:
                members = members[(seen + members) % modulo[1] == modulo[0]]
                seen += n
            if self.plan is not None and len(self.plan[1][u]) > 1:
                members = self._thin(u, members, coin, counts)
            self._quiet = False
            parts_s.append(np.full(len(members), u, np.int64))
            parts_m.append(members)
            pending += len(members)
            while pending >= size:
                shard_ids, member_ids = np.concatenate(parts_s), np.concatenate(parts_m)
                yield self._window(epoch, slot, w, start, shard_ids[:size], member_ids[:size])
                parts_s, parts_m = [shard_ids[size:]], [member_ids[size:]]
                pending, start, w = pending - size, start + size, w + 1
        if pending:
            yield self._window(epoch, slot, w, start, np.concatenate(parts_s), np.concatenate(parts_m))

    def _thin(self, u: int, members: np.ndarray, coin: random.Random, counts: Counter) -> np.ndarray:
        """A shard mixing sources: keep each sample with its source's probability (shards.balance);
        the sources come from the members' JSON, read only for such shards (the few at source
        boundaries), and the coins from the slot's seeded generator, so the order stays a pure
        function of (seed, epoch, slot)."""
        shard = self._shard(u, counts)
        if shard is None:
            return members[:0]
        keep = self.plan[1][u]  # type: ignore[index]
        ok = [coin.random() < keep.get(str(shard.meta(int(m)).get("source", "")), 0.0) for m in members]
        return members[np.asarray(ok, bool)] if len(members) else members

    def _window(self, epoch: int, slot: int, w: int, start: int, shard: np.ndarray, member: np.ndarray) -> _Window:
        if self.shuffle and self.shuffle_buffer > 1:
            perm = np.random.default_rng(_seed(self.seed, epoch, slot, 2, w)).permutation(len(shard))
            shard, member = shard[perm], member[perm]
        return _Window(start, shard, member)

    def _shard(self, u: int, counts: Counter) -> Shard | None:
        url = self.urls[u]
        if url not in self._open:
            try:
                self._open[url] = self._indexes.open(url)
                self.guard.ok()
            except ShardUnreadable as exc:
                self._open[url] = None
                self._unreadable[url] = str(exc)
        shard = self._open[url]
        if u not in self._checked:  # what a shard loses counts once per epoch (it may stay open across one)
            self._checked.add(u)
            if self._quiet:
                return shard
            if shard is None:
                counts["unreadable_shard"] += 1
                share = self._share(self.counts[u]) if self.counts is not None else None
                self.guard.failed(url, self._unreadable[url], share)
            else:
                self._check_length(u, shard, counts)
        return shard

    def _share(self, samples: int) -> int:
        """This slot's part of ``samples`` of one shard (all of them unless shards are dealt by sample)."""
        return -(-samples // self.dealt)

    def _check_length(self, u: int, shard: Shard, counts: Counter) -> None:
        """A truncated shard, or one holding another number of samples than the manifest says (rebuilt
        or replaced under an old manifest): what it does not give is lost, counted and guarded."""
        expected = self.counts[u] if self.counts is not None else None
        if not shard.index.complete:
            counts["bad_shard"] += 1  # truncated/damaged: the samples before the damage are used
            if expected is not None and expected > len(shard):
                why = f"truncated after {len(shard)} of {expected} samples"
                self.guard.lost(self.urls[u], why, self._share(expected - len(shard)), "truncated")
        elif expected is not None and expected != len(shard):
            counts["shard_mismatch"] += 1
            why = f"holds {len(shard)} samples, the manifest {expected}: rebuilt or replaced after the manifest"
            self.guard.lost(self.urls[u], why, self._share(abs(expected - len(shard))), "mismatch")

    def _keep_open(self, window: _Window) -> None:
        """Drop the shards the current window does not use (bounded memory: about one window of shards)."""
        needed = {self.urls[u] for u in np.unique(window.shard).tolist()}
        for url in [u for u in self._open if u not in needed]:
            del self._open[url]

    # --- filling a batch ----------------------------------------------------------------------------
    def _fill(
        self, window: _Window, p: int, out: np.ndarray | None, need: int, counts: Counter, meta: list
    ) -> tuple[int, list]:
        """Decode/copy samples from ``window[p:]`` into the batch until ``need`` more are in.

        Returns the next position and what was filled (``None`` for rows written into ``out``,
        arrays when there is no ``out`` yet, JPEG bytes for ``decode="device"``); skipped samples
        are counted by reason.
        """
        filled: list = []
        n = len(window)
        raw = self.encoding == "raw" and out is not None and self.decode == "worker"
        if raw and window.raw_offset is None:
            self._plan_raw(window, counts)
        while len(filled) < need and p < n:
            take = min(n - p, need - len(filled))
            if raw:
                filled += self._copy_raw(window, p, take, out, len(filled), counts, meta)
            else:
                us, ms = window.shard[p : p + take], window.member[p : p + take]
                filled += self._decode(us, ms, out, len(filled), counts, meta)
            p += take
        return p, filled

    # Codes in _Window.raw_offset besides byte offsets (>= 0).
    _MISSING, _BAD_RAW, _NOT_RAW = -1, -2, -3

    def _plan_raw(self, window: _Window, counts: Counter) -> None:
        """Per window position, where its pixels start in its shard, found for the whole window at
        once so that copying a raw sample costs one slice copy and nothing else."""
        size = self.image_size
        offs = np.full(len(window), self._MISSING, np.int64)
        for u in np.unique(window.shard).tolist():
            shard = self._shard(u, counts)
            if shard is None:
                continue
            sel = np.flatnonzero(window.shard == u)
            m = window.member[sel]
            inside = m < len(shard)
            sel, m = sel[inside], m[inside]
            is_raw = shard.index.image_ext[m] == _NPY_CODE
            good = is_raw & shard.raw_ok(size)[m]
            offs[sel] = np.where(
                good,
                shard.index.image_offset[m] + _npy_header_len(size),
                np.where(is_raw, self._BAD_RAW, self._NOT_RAW),
            )
            window.buffers[u] = shard.buf
        window.raw_offset = offs

    def _copy_raw(
        self, window: _Window, p: int, take: int, out: np.ndarray, j: int, counts: Counter, meta: list
    ) -> list:
        """Raw samples ``window[p : p + take]`` straight into ``out[j:]``, one slice copy each.

        Bad raw members are counted; members of another encoding (a mixed set) are decoded in order."""
        offs = window.raw_offset[p : p + take]
        us = window.shard[p : p + take]
        flat = out.reshape(out.shape[0], -1)
        hw = self.image_size**2
        bufs = window.buffers
        if offs.min(initial=0) >= 0:  # the common case
            for k, (u, o) in enumerate(zip(us.tolist(), offs.tolist()), start=j):
                flat[k] = bufs[u][o : o + hw]
            if self.with_meta:
                for u, m in zip(us.tolist(), window.member[p : p + take].tolist()):
                    self._meta(u, m, counts, meta)
            return [None] * take
        filled: list = []
        for i, (u, o) in enumerate(zip(us.tolist(), offs.tolist())):
            m = int(window.member[p + i])
            if o >= 0:
                flat[j + len(filled)] = bufs[u][o : o + hw]
                filled.append(None)
                if self.with_meta:
                    self._meta(u, m, counts, meta)
            elif o == self._BAD_RAW:
                self._bad_size(u, counts, "a raw member that is not")
            elif o == self._NOT_RAW:
                filled += self._decode(np.array([u]), np.array([m]), out, j + len(filled), counts, meta)
        return filled

    def _decode(
        self, us: np.ndarray, ms: np.ndarray, out: np.ndarray | None, j: int, counts: Counter, meta: list
    ) -> list:
        filled: list = []
        for u, m in zip(us.tolist(), ms.tolist()):
            shard = self._shard(u, counts)
            if shard is None or m >= len(shard):
                continue  # unreadable/truncated shard: counted once per shard
            enc = shard.index.encoding(m)
            if enc is None:
                counts["missing_image"] += 1
                continue
            if self.decode == "device":
                if enc != "jpeg":
                    counts["not_jpeg"] += 1
                    self.guard.lost(self.urls[u], f"a {enc} member: decode='device' reads JPEG shards", 1, "not_jpeg")
                    continue
                filled.append(torch.from_numpy(shard.image(m).copy()))
            else:
                try:
                    arr = decode_gray(shard.image(m), enc)
                except CorruptSample as exc:
                    counts[exc.reason] += 1
                    continue
                if self.image_size is None:
                    self.image_size = arr.shape[0]
                if arr.shape != (self.image_size, self.image_size):
                    self._bad_size(u, counts, f"a {arr.shape[1]}x{arr.shape[0]} image, not")
                    continue
                if out is None:
                    filled.append(arr)
                else:
                    out[j + len(filled), 0] = arr
                    filled.append(None)
            if self.with_meta:
                self._meta(u, m, counts, meta)
        return filled

    def _bad_size(self, u: int, counts: Counter, what: str) -> None:
        counts["bad_size"] += 1
        size = self.image_size
        why = f"{what} {size}x{size}, the loader's image size (shards of one loader share one size)"
        self.guard.lost(self.urls[u], why, 1, "size")

    def _meta(self, u: int, m: int, counts: Counter, meta: list) -> None:
        shard = self._shard(u, counts)
        meta.append((str(shard.meta(m).get("source", "")), shard.key(m)))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info else 0
        workers = max(1, self.num_workers)
        logical = (worker + self.rotation) % workers
        slot, total = self.rank * workers + logical, self.world_size * workers
        self.dealt = total if self.mode != "resampled" and len(self.urls) < total else 1
        epoch, skip = self.start[logical]
        counts: Counter = Counter()
        # A resumed slot first finishes the item it was in the middle of, so items stay aligned.
        item = _Item(self, worker, self.first_parts.get(logical, self.parts))
        consumed = skip
        while self.epoch_limit is None or epoch < self.epoch_limit:
            consumed, read, planned = 0, 0, 0
            self.guard.new_epoch(self._slot_total(epoch, slot, total))
            self._checked, before, self._resume_at = set(), Counter(counts), skip
            for window in self.windows(epoch, slot, total, counts):
                end = window.start + len(window)
                planned = end
                if end <= skip:  # resume: a whole window before the position, read (and counted) before
                    consumed = end
                    self._checked.update(np.unique(window.shard).tolist())
                    continue
                self._keep_open(window)
                p = max(0, skip - window.start)
                # opened before the position: the samples before it, or the whole window when raw copies
                # were planned for it at its first fill (_plan_raw)
                planned_raw = self.encoding == "raw" and self.decode == "worker" and item.out() is not None
                self._checked.update(np.unique(window.shard if p and planned_raw else window.shard[:p]).tolist())
                while p < len(window):
                    p, filled = self._fill(window, p, item.out(), self.batch_size - item.n, counts, item.meta)
                    item.add(filled)
                    read += len(filled)
                    consumed = window.start + p
                    if item.n == self.batch_size:
                        item.close(epoch, consumed, counts)
                        if item.full:
                            yield item.emit(logical)
                            item = _Item(self, worker, self.parts)
            if skip == 0:  # a resumed epoch's first part was read before
                mine = self.slot_shards(epoch, slot, total)[0]
                held = sum(self._count(u, counts) for u in mine) if not read else 1
                self.guard.epoch_end(read, planned, [self.urls[u] for u in mine], held, dict(counts - before))
            skip = self._resume_at = 0
            if self.mode == "epoch":
                break
            epoch += 1
        if item.n and not self.drop_last:
            item.close(epoch, consumed, counts)
        if item.records or counts:
            # The last item may be short; with no batch left it still carries the final skip counts.
            yield item.emit(logical, (epoch, consumed, dict(counts)))


class _Item:
    """What a worker hands to the main process at once: up to ``parts`` consecutive batches of its slot.

    The DataLoader's fixed cost per item — queues, pickling, a feeder thread, and waking the main
    process (~80 µs of worker and 300-600 µs of main-thread CPU per item on the development VM) —
    is a sixth of making a 64-image raw batch and 2-4 % of a 64-image JPEG batch, so batches
    travel several to an item (``ITEM_IMAGES``): the fixed cost is paid once per 256-512 images.
    Rows are written straight into a shared-memory ring slot when there is one (:mod:`shards.handoff`).
    """

    def __init__(self, stream: _SlotStream, worker: int, parts: int) -> None:
        self.stream, self.worker, self.parts = stream, worker, parts
        self.slot: int | None = None
        self.buf: np.ndarray | None = None  # [parts * batch, 1, S, S]
        self.items: list = []  # current batch's arrays / JPEG bytes when there is no buffer
        self.payload: list = []  # closed batches' stacked arrays / JPEG bytes (no buffer)
        self.records: list[tuple[int, int, int, dict]] = []  # (epoch, consumed, images, skipped) per batch
        self.meta: list[tuple[str, str]] = []
        self.n = 0  # images in the current batch
        self.done = 0  # images in closed batches

    @property
    def full(self) -> bool:
        return len(self.records) == self.parts

    def out(self) -> np.ndarray | None:
        """Where the current batch's next rows go (None: collect arrays, the size is not known yet)."""
        s = self.stream
        if s.decode == "device" or s.image_size is None or (self.buf is None and (self.n or self.payload)):
            return None
        if self.buf is None:
            got = s.ring.acquire(self.worker) if s.ring is not None else None
            if got is not None:
                self.slot, self.buf = got
            else:
                rows = self.parts * s.batch_size
                self.buf = np.empty((rows, 1, s.image_size, s.image_size), np.uint8)
        # From the current batch's next free row: a batch may be filled across windows and epochs.
        return self.buf[self.done + self.n : self.done + s.batch_size]

    def add(self, filled: list) -> None:
        self.items.extend(filled)
        self.n += len(filled)

    def close(self, epoch: int, consumed: int, counts: Counter) -> None:
        """The current batch is complete (or the last one): record its position."""
        if self.stream.decode == "device":
            sizes = [len(t) for t in self.items]
            flat = torch.cat(self.items) if self.items else torch.empty(0, dtype=torch.uint8)
            self.payload.append((flat, torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.int64)))
        elif self.buf is None and self.items:
            self.payload.append(np.stack(self.items)[:, None])
        self.records.append((epoch, consumed, self.n, dict(counts)))
        self.done += self.n
        self.items, self.n = [], 0

    def emit(self, logical: int, final: tuple[int, int, dict] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"__slot__": logical, "__parts__": self.records}
        if final is not None:
            out["__final__"] = final
        if self.stream.decode == "device":
            out["jpeg"] = [p[0] for p in self.payload]
            out["jpeg_offsets"] = [p[1] for p in self.payload]
        elif self.slot is not None:
            out["__ring__"] = (self.worker, self.slot)
        elif self.buf is not None:
            out["image"] = torch.from_numpy(self.buf[: self.done])
        elif self.payload:
            out["image"] = torch.from_numpy(np.concatenate(self.payload))
        if self.stream.with_meta:
            out["source"] = [m[0] for m in self.meta]
            out["key"] = [m[1] for m in self.meta]
        return out


def skipped_counts(skipped: dict[str, int]) -> tuple[int, int]:
    """(shards, samples) of a :attr:`ShardLoader.skipped` dict: its keys count one or the other."""
    shards = sum(n for k, n in skipped.items() if k in SHARD_SKIPS)
    return shards, sum(skipped.values()) - shards


def decode_on_device(batch: dict, device: str | torch.device) -> torch.Tensor:
    """uint8 ``[B,1,H,W]`` on ``device`` from a ``decode="device"`` batch (nvJPEG on CUDA devices)."""
    flat, offs = batch["jpeg"], batch["jpeg_offsets"].tolist()
    blobs = [flat[a:b] for a, b in zip(offs[:-1], offs[1:])]
    return decode_jpeg_batch(blobs, device)


def _no_hang(loader: DataLoader, seconds: float, urls: list[str], answer_stop: bool = True) -> Iterator[dict]:
    """The loader's items; a worker that hands over nothing for ``seconds`` ends the run in one line.

    The loader waits in slices of ``loader.timeout`` (:data:`STALL_POLL_S`): with ``answer_stop`` (one
    process: no peer waits in a collective for this one) a stop signal that comes while a store
    stalls raises :class:`sonodistill.stop.Stopped` at once, so the command keeps its work and exits
    75 within a launcher's grace time instead of failing after ``seconds``."""
    it = iter(loader)
    waited = 0.0
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except RuntimeError as exc:
            if "timed out" not in str(exc):
                raise
            waited += loader.timeout
            received = stop_requested() if answer_stop else None
            if received:
                raise Stopped(f"{received} received while waiting {waited:.0f} s for a batch") from None
            if waited < seconds:
                continue  # the same iterator goes on waiting: nothing of it was lost
            where = f"{len(urls)} shards (the first {urls[0]})" if len(urls) > 1 else urls[0]
            raise UserError(
                f"data.shards: no batch from the shard readers for {seconds:.0f} s (data.stall_timeout_s; a store "
                f"that stopped answering?), reading {where}"
            ) from None
        waited = 0.0
        yield item


class ShardLoader:
    """Batches of uint8 single-channel images from shards, split over ranks and workers.

    ``shards``: a folder with ``manifest.json`` (local or a remote URL), a manifest, a brace
    pattern or a list of shard paths/URLs; any encoding (``shards.codec``). ``decode="device"``
    (JPEG only) yields undecoded JPEG members for :func:`decode_on_device`. ``batches_per_item``:
    batches a worker hands over at once (default: enough for 256 images, 512 raw; see ``_Item``).
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str],
        batch_size: int,
        mode: str = "loop",
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        num_workers: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        with_meta: bool = False,
        pin_memory: bool = False,
        drop_last: bool = True,
        prefetch_factor: int = 4,
        decode: str = "worker",
        batches_per_item: int | None = None,
        source_weights: str | dict | None = None,
        max_skipped_share: float = MAX_SKIPPED_SHARE,
        stall_timeout_s: float = STALL_TIMEOUT_S,
    ):
        if mode not in MODES:
            raise UserError(f"shard loader mode '{mode}': expected one of {', '.join(MODES)}")
        flags = {"shuffle": shuffle, "with_meta": with_meta, "pin_memory": pin_memory, "drop_last": drop_last}
        check_loader_args(
            batch_size=batch_size,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            max_skipped_share=max_skipped_share,
            stall_timeout_s=stall_timeout_s,
            flags=flags,
            rank=rank,
            world_size=world_size,
        )
        if decode not in DECODE:
            raise UserError(f"shard loader decode '{decode}': expected one of {', '.join(DECODE)}")
        self.urls, self.manifest, missing = _resolve(shards, max_skipped_share)
        self.encoding = encoding_of(self.manifest)
        if decode == "device" and self.encoding not in (None, "jpeg"):
            raise UserError(
                f"shard loader decode 'device': needs JPEG shards, these are {self.encoding} "
                "(build them with `python -m shards.build --encoding jpeg`)"
            )
        r, w = default_rank_world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise UserError(f"shard loader: rank {self.rank} outside world size {self.world_size}")
        self.batch_size, self.mode, self.seed = batch_size, mode, seed
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.num_workers, self.with_meta, self.drop_last = num_workers, with_meta, drop_last
        self.pin_memory, self.prefetch_factor, self.decode = pin_memory, prefetch_factor, decode
        self.image_size = (self.manifest or {}).get("settings", {}).get("size") or _first_size(self.urls, decode)
        self.counts = _manifest_counts(self.manifest)
        self.plan = _source_plan(source_weights, mode, self.manifest)
        self.max_skipped_share, self.stall_timeout_s = max_skipped_share, stall_timeout_s
        # Batches travel several per DataLoader item (see _Item); the queue holds >= 2 items.
        if batches_per_item is not None and batches_per_item < 1:
            raise UserError(f"shard loader batches_per_item {batches_per_item}: expected at least 1")
        if decode == "device":
            self.parts = 1
        elif batches_per_item is not None:
            self.parts = batches_per_item
        else:
            per_item = ITEM_IMAGES["raw" if self.encoding == "raw" else "decoded"]
            self.parts = max(1, -(-per_item // batch_size))
        self._prefetch = max(2, -(-prefetch_factor // self.parts))
        self._check_batch_fits()
        self._slots: dict[int, tuple[int, int]] = {}
        self._skipped: dict[int, dict[str, int]] = {}  # per slot, this iter() session
        # earlier sessions and loaded states; a listed shard not found counts once, as the run skips it
        self._skipped_before: Counter = Counter({"unreadable_shard": len(missing)} if missing else {})
        self._items = 0  # DataLoader items received (all slots)
        self._pending: tuple[int, int] | None = None  # (slot, batches of its current item still to come)
        self._pass = 0  # epoch mode: which pass the next iter() makes
        self._pass_done = False

    def _check_batch_fits(self) -> None:
        """A batch is cut from one worker's stream: one larger than what a worker reads per epoch
        gives no batch in an ``epoch`` pass (``drop_last``) and repeats images within a batch in a
        ``loop``; said up front (from the manifest's counts, epoch 0's deal) instead of in silence."""
        if self.counts is None or self.mode == "resampled":
            return
        workers, n = max(1, self.num_workers), len(self.counts)
        totals = []
        for w in range(workers):
            slot, total = self.rank * workers + w, self.world_size * workers
            totals.append(dealt_samples(self.counts, *deal(n, self.seed, 0, self.shuffle, slot, total)))
        if self.batch_size <= min(totals):
            return
        what = (
            f"shard loader batch_size {self.batch_size}: more than the {min(totals)}"
            + (f"-{max(totals)}" if max(totals) != min(totals) else "")
            + f" samples each of this rank's {workers} loader worker(s) reads per epoch (a batch comes from one worker)"
        )
        if self.mode == "epoch" and self.drop_last and self.batch_size > max(totals):
            raise UserError(f"{what}: an epoch pass with drop_last gives no batch; lower batch_size or num_workers")
        if self.mode == "loop":
            effect = "a batch repeats images of the worker's next epoch"
        elif self.drop_last:
            effect = "the workers holding fewer give no batch"
        else:
            effect = "those workers' batches come short"
        log.warning(f"{what}: {effect}; lower batch_size or num_workers")

    @property
    def ring_slots(self) -> int:
        """Shared-memory slots per worker of the hand-over ring (:mod:`shards.handoff`), each
        ``parts * batch_size`` images: the items the DataLoader keeps in flight, plus two."""
        return self._prefetch + 2

    @property
    def num_samples(self) -> int | None:
        return None if self.manifest is None else int(self.manifest["num_samples"])

    @property
    def skipped(self) -> dict[str, int]:
        total: Counter = Counter(self._skipped_before)
        for c in self._skipped.values():
            total.update(c)
        return dict(total)

    def __iter__(self) -> Iterator[dict]:
        workers = max(1, self.num_workers)
        self._skipped_before, self._skipped = Counter(self.skipped), {}
        if self.mode == "epoch" and self._pass_done:
            self._pass += 1
            self._slots, self._items, self._pending, self._pass_done = {}, 0, None, False
        first = self._pass if self.mode == "epoch" else 0
        start = {s: (first if self.mode == "epoch" else e, c) for s, (e, c) in self._slots.items()}
        start.update({s: (first, 0) for s in range(workers) if s not in start})
        # Items go round-robin over the workers: continue with the slot whose item is next, or
        # with the one that was in the middle of an item (it first sends that item's remainder).
        rotation, first_parts = self._items % workers, {}
        if self._pending is not None:
            rotation, first_parts = self._pending[0], {self._pending[0]: self._pending[1]}
            self._items -= 1  # that remainder arrives as an item of its own: count the item once
        ring = None
        if self.num_workers > 0 and self.image_size and self.decode == "worker":
            rows = self.parts * self.batch_size
            ring = BatchRing(self.num_workers, self.ring_slots, rows, int(self.image_size))
        ds = _SlotStream(
            self.urls,
            self.counts,
            self.batch_size,
            self.mode,
            self.seed,
            self.shuffle,
            self.shuffle_buffer,
            self.rank,
            self.world_size,
            self.num_workers,
            self.with_meta,
            self.drop_last,
            start,
            rotation,
            self.image_size,
            self._pass + 1 if self.mode == "epoch" else None,
            self.decode,
            ring,
            self.encoding,
            self.parts,
            first_parts,
            self.plan,
            ReadGuard(self.max_skipped_share, self.stall_timeout_s),
        )
        kwargs: dict[str, Any] = {"multiprocessing_context": worker_context()} if self.num_workers > 0 else {}
        if self.num_workers > 0:
            poll = min(self.stall_timeout_s, STALL_POLL_S)  # a worker stuck in a read: waited on in slices, _no_hang
            kwargs.update(prefetch_factor=self._prefetch, persistent_workers=False, timeout=poll)
        loader = DataLoader(
            ds,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            worker_init_fn=ignore_stop_signals,  # a signal to the process group stops the run, not a worker
            **kwargs,
        )
        pin = self.pin_memory and torch.cuda.is_available()
        for item in _no_hang(loader, self.stall_timeout_s, self.urls, self.world_size == 1):
            slot, parts = item["__slot__"], item["__parts__"]
            self._items += 1  # DataLoader items, for the worker round-robin on resume
            images = ring.tensor(*item["__ring__"]) if "__ring__" in item else item.get("image")
            row = 0
            for i, (epoch, consumed, n, skipped) in enumerate(parts):
                self._slots[slot], self._skipped[slot] = (epoch, consumed), skipped
                self._pending = (slot, len(parts) - i - 1) if i < len(parts) - 1 else None
                batch: dict[str, Any] = {}
                if self.decode == "device":
                    batch["jpeg"], batch["jpeg_offsets"] = item["jpeg"][i], item["jpeg_offsets"][i]
                else:
                    batch["image"] = images[row : row + n]
                    if pin and "__ring__" in item:
                        batch["image"] = batch["image"].pin_memory()
                if self.with_meta:
                    batch["source"], batch["key"] = item["source"][row : row + n], item["key"][row : row + n]
                row += n
                yield batch
            if "__final__" in item:
                epoch, consumed, skipped = item["__final__"]
                self._slots[slot], self._skipped[slot] = (epoch, consumed), skipped
        self._pass_done = True

    # --- exact position -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "mode": self.mode,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "encoding": self.encoding,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "shuffle_buffer": self.shuffle_buffer,
            "shuffle": self.shuffle,
            "parts": self.parts,
            "pass": self._pass,
            "pass_done": self._pass_done,
            "items": self._items,
            "pending": list(self._pending) if self._pending else None,
            "slots": {str(k): list(v) for k, v in self._slots.items()},
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        keys = ("mode", "seed", "rank", "world_size", "encoding", "num_workers", "batch_size", "shuffle_buffer")
        keys += ("parts", "shuffle")
        # keys recorded later are compared when recorded (older states keep resuming exactly)
        later = ("shuffle", "rank", "encoding")
        differs = [
            f"{k} {state.get(k)!r} -> {getattr(self, k)!r}"
            for k in keys
            if state.get(k) != getattr(self, k) and (k in state or k not in later)
        ]
        if state.get("version") != STATE_VERSION:
            differs.append(f"loader version {state.get('version')} -> {STATE_VERSION}")
        slots = {int(k): (int(v[0]), int(v[1])) for k, v in state.get("slots", {}).items()}
        if differs:
            # A different layout cannot continue the same sample order; restart at the earliest
            # epoch any slot was in so nothing of it is skipped, and say so.
            first = min((e for e, _ in slots.values()), default=0)
            shown = "; ".join(d.replace("parts ", "batches per item ", 1) for d in differs)
            log.warning(
                f"shard loader: its position was saved with other settings ({shown}); resuming at the start "
                f"of epoch {first} instead of the exact position (that epoch's samples seen so far are seen again)"
            )
            workers = max(1, self.num_workers)
            self._slots = {s: (first, 0) for s in range(workers)}
            self._items, self._pending = 0, None
            self._pass, self._pass_done = first if self.mode == "epoch" else 0, False
            return
        self._slots = slots
        self._skipped, self._skipped_before = {}, Counter(state.get("skipped", {}))
        self._items = int(state.get("items", 0))
        self._pending = tuple(state["pending"]) if state.get("pending") else None
        self._pass = int(state.get("pass", 0))
        self._pass_done = bool(state.get("pass_done", False))


def _resolve(shards: str | Path | Sequence[str], max_share: float = 1.0) -> tuple[list[str], dict | None, list[str]]:
    """(shard URLs, manifest, listed shards not found): a list or pattern without a manifest loses
    its missing shards before the deal, each warned about once; more of them than ``max_share`` of
    the list (a pattern's typo, a range past the last shard) is an error, as lost samples are."""
    urls, manifest = resolve_shards(shards)
    if manifest is not None:
        return urls, manifest, []
    listed = len(urls)
    urls, missing = present_shards(urls, "data.shards")
    if urls and len(missing) > max_share * listed:
        raise UserError(
            f"data.shards: {len(missing)} of {listed} listed shards ({len(missing) / listed:.0%}) not found, more "
            f"than data.max_skipped_share={max_share:g}; e.g. {missing[0]} (check the list or its brace range)"
        )
    for url in missing[:3]:
        log.warning(f"{url}: shard skipped, not found")
    if len(missing) > 3:
        log.warning(f"data.shards: {len(missing)} listed shards not found in all (the first 3 named above)")
    return urls, None, missing


def _first_size(urls: list[str], decode: str) -> int | None:
    """The image size of a shard list without a manifest, from its first local shard's first image,
    so that every worker holds the same size (None: remote lists, and decode='device', learn it
    from their first sample)."""
    local = [u for u in urls if u.startswith("file://") or ("://" not in u and not u.startswith("pipe:"))]
    if decode != "worker" or not local:
        return None
    try:
        shard = open_shard(local[0])
    except ShardUnreadable:
        return None
    for m in range(len(shard)):
        enc = shard.index.encoding(m)
        if enc is None:
            continue
        try:
            return int(decode_gray(shard.image(m), enc).shape[0])
        except CorruptSample:
            continue
    return None


def _source_plan(weights: str | dict | None, mode: str, manifest: dict | None):
    """The resampled-mode shard plan for ``weights`` (None when every sample is equally likely)."""
    from shards.balance import parse_weights, shard_plan, source_probabilities

    if parse_weights(weights) == "proportional":
        return None
    if mode != "resampled":
        raise UserError(f"source_weights {weights!r}: applies in resampled mode only (mode is '{mode}')")
    if manifest is None or "shard_sources" not in manifest:
        raise UserError("source_weights: needs a shard folder whose manifest lists shard_sources (rebuild the shards)")
    return shard_plan(manifest["shard_sources"], source_probabilities(weights, manifest["sources"]))


def _manifest_counts(manifest: dict | None) -> list[int] | None:
    """Samples per shard in manifest order (None when unknown)."""
    if manifest is None:
        return None
    counts = manifest.get("shard_samples")
    if not isinstance(counts, list) or len(counts) != len(manifest["shards"]):
        return None
    return [int(c) for c in counts]
