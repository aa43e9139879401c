"""Stream WebDataset shards to many ranks and DataLoader workers, with an exact, resumable position.

    loader = ShardLoader("/data/shards", batch_size=64, mode="loop", seed=0, num_workers=8)
    for batch in loader:            # {"image": uint8 [B, 1, H, W]} (+ "source", "key")
        ...
        state = loader.state_dict()  # store in the checkpoint; load_state_dict() continues after it

Each (rank, worker) pair is a *slot*. Per epoch, the shard list is permuted with ``(seed, epoch)``
— the same permutation on every rank — and dealt to the slots (when there are fewer shards than
slots, every slot reads all shards and keeps every ``total``-th sample), so each sample is seen
exactly once per epoch across all ranks and workers. Samples are shuffled inside each slot with a
buffer seeded by ``(seed, epoch, slot)``, still undecoded; decoding happens after, in the worker.

Modes: ``epoch`` (one pass per ``iter()``, finite), ``loop`` (epoch after epoch, infinite: the
pretraining default) and ``resampled`` (shards drawn with replacement, infinite).

Position = for every slot, (epoch, samples taken from that epoch's shuffled stream). A slot's
stream is a pure function of (seed, epoch, slot), so resuming skips that many *undecoded* samples
(cheap: no image decode) and the DataLoader's worker round-robin is rotated to continue with the
slot that was next. Written here because webdataset's loaders have no resumable position and
``accelerate.skip_first_batches`` would decode everything it skips.
"""

from __future__ import annotations

import io
import os
import random
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.manifest import resolve_shards
from sonodistill.errors import UserError

MODES = ("epoch", "loop", "resampled")
TAGS = ("__slot__", "__epoch__", "__consumed__", "__skipped__")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class _SlotStream(IterableDataset):
    """The per-worker side: undecoded samples -> skip -> decode -> fixed-size uint8 batches."""

    def __init__(
        self,
        urls: list[str],
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
    ):
        super().__init__()
        self.urls, self.batch_size, self.mode, self.seed = urls, batch_size, mode, seed
        self.shuffle, self.shuffle_buffer, self.rank, self.world_size = shuffle, shuffle_buffer, rank, world_size
        self.num_workers, self.with_meta, self.drop_last = num_workers, with_meta, drop_last
        self.start, self.rotation, self.image_size, self.epoch_limit = start, rotation, image_size, epoch_limit

    # --- the undecoded sample stream of one slot in one epoch -------------------------------------
    def epoch_samples(self, epoch: int, slot: int, total: int, counts: Counter) -> Iterator[dict]:
        def on_error(exn: Exception) -> bool:
            counts["bad_shard"] += 1
            return True  # skip the rest of a broken shard, keep going

        n = len(self.urls)
        modulo = None
        if self.mode == "resampled":
            rng = random.Random(_seed(self.seed, epoch, slot, 1))
            mine = [self.urls[rng.randrange(n)] for _ in range(max(1, n // total))]
        else:
            order = list(self.urls)
            if self.shuffle:
                random.Random(_seed(self.seed, epoch, 0)).shuffle(order)
            if n >= total:
                mine = order[slot::total]
            else:
                mine, modulo = order, (slot, total)
        # Skip reading the JSON members unless metadata is wanted.
        select = None if self.with_meta else (lambda name: name.endswith(".png"))
        src = wds.tarfile_samples([{"url": u} for u in mine], handler=on_error, select_files=select)
        if modulo is not None:
            src = (s for i, s in enumerate(src) if i % modulo[1] == modulo[0])
        if self.shuffle and self.shuffle_buffer > 1:
            src = wds.filters.shuffle(
                self.shuffle_buffer, initial=self.shuffle_buffer, seed=_seed(self.seed, epoch, slot, 2)
            )(iter(src))
        return iter(src)

    def _decode(self, sample: dict, counts: Counter) -> np.ndarray | None:
        data = sample.get("png")
        if data is None:
            counts["missing_image"] += 1
            return None
        try:
            img = Image.open(io.BytesIO(data))
            if img.mode != "L":
                img = img.convert("L")
            arr = np.frombuffer(img.tobytes(), np.uint8).reshape(img.height, img.width)
        except Exception:
            counts["corrupt_image"] += 1
            return None
        if self.image_size is None:
            self.image_size = arr.shape[0]
        if arr.shape != (self.image_size, self.image_size):
            counts["bad_size"] += 1
            return None
        return arr

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers = max(1, self.num_workers)
        logical = ((info.id if info else 0) + self.rotation) % workers
        slot, total = self.rank * workers + logical, self.world_size * workers
        epoch, skip = self.start[logical]
        counts: Counter = Counter()
        images: list[np.ndarray] = []
        meta: list[tuple[str, str]] = []
        consumed = skip
        while self.epoch_limit is None or epoch < self.epoch_limit:
            consumed = 0
            for sample in self.epoch_samples(epoch, slot, total, counts):
                consumed += 1
                if consumed <= skip:
                    continue
                arr = self._decode(sample, counts)
                if arr is None:
                    continue
                images.append(arr)
                if self.with_meta:
                    meta.append((self._source(sample), sample["__key__"]))
                if len(images) == self.batch_size:
                    yield self._batch(images, meta, logical, epoch, consumed, counts)
                    images, meta = [], []
            skip = 0
            if self.mode == "epoch":
                break
            epoch += 1
        if images and not self.drop_last:
            yield self._batch(images, meta, logical, epoch, consumed, counts)
        elif counts:
            # No batch left to carry them: send the final skip counts on their own.
            yield {
                "__slot__": logical,
                "__epoch__": epoch,
                "__consumed__": consumed,
                "__skipped__": dict(counts),
                "__final__": True,
            }

    @staticmethod
    def _source(sample: dict) -> str:
        import json

        try:
            return json.loads(sample["json"])["source"]
        except Exception:
            return ""

    def _batch(self, images, meta, logical, epoch, consumed, counts) -> dict[str, Any]:
        arr = np.stack(images)[:, None]
        out: dict[str, Any] = {
            "image": torch.from_numpy(arr),
            "__slot__": logical,
            "__epoch__": epoch,
            "__consumed__": consumed,
            "__skipped__": dict(counts),
        }
        if self.with_meta:
            out["source"] = [m[0] for m in meta]
            out["key"] = [m[1] for m in meta]
        return out


class ShardLoader:
    """Batches of uint8 single-channel images from shards, split over ranks and workers."""

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
    ):
        if mode not in MODES:
            raise UserError(f"shard loader mode '{mode}': expected one of {', '.join(MODES)}")
        if batch_size < 1:
            raise UserError(f"shard loader batch_size {batch_size}: expected at least 1")
        self.urls, self.manifest = resolve_shards(shards)
        r, w = default_rank_world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise UserError(f"shard loader: rank {self.rank} outside world size {self.world_size}")
        self.batch_size, self.mode, self.seed = batch_size, mode, seed
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.num_workers, self.with_meta, self.drop_last = num_workers, with_meta, drop_last
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.image_size = (self.manifest or {}).get("settings", {}).get("size")
        self._slots: dict[int, tuple[int, int]] = {}
        self._skipped: dict[int, dict[str, int]] = {}  # per slot, this iter() session
        self._skipped_before: Counter = Counter()  # earlier sessions and loaded states
        self._batches = 0
        self._pass = 0  # epoch mode: which pass the next iter() makes
        self._pass_done = False

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
            self._slots, self._batches, self._pass_done = {}, 0, False
        first = self._pass if self.mode == "epoch" else 0
        start = {s: (first if self.mode == "epoch" else e, c) for s, (e, c) in self._slots.items()}
        start.update({s: (first, 0) for s in range(workers) if s not in start})
        ds = _SlotStream(
            self.urls,
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
            self._batches % workers,
            self.image_size,
            self._pass + 1 if self.mode == "epoch" else None,
        )
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs.update(prefetch_factor=self.prefetch_factor, persistent_workers=False)
        loader = DataLoader(ds, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory, **kwargs)
        for batch in loader:
            slot = batch.pop("__slot__")
            self._slots[slot] = (batch.pop("__epoch__"), batch.pop("__consumed__"))
            self._skipped[slot] = batch.pop("__skipped__")
            self._batches += 1  # DataLoader items, for the worker round-robin on resume
            if not batch.pop("__final__", False):
                yield batch
        self._pass_done = True

    # --- exact position -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": 1,
            "mode": self.mode,
            "seed": self.seed,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "pass": self._pass,
            "pass_done": self._pass_done,
            "batches": self._batches,
            "slots": {str(k): list(v) for k, v in self._slots.items()},
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        same = all(
            state.get(k) == getattr(self, k) for k in ("mode", "seed", "world_size", "num_workers", "batch_size")
        )
        slots = {int(k): (int(v[0]), int(v[1])) for k, v in state.get("slots", {}).items()}
        if not same:
            # A different layout cannot continue the same sample order; restart at the earliest
            # epoch any slot was in so nothing of it is skipped, and say so.
            first = min((e for e, _ in slots.values()), default=0)
            warnings.warn(
                "shard loader state was saved with a different mode/seed/world size/workers/batch; "
                f"resuming at the start of epoch {first} instead of the exact position",
                stacklevel=2,
            )
            workers = max(1, self.num_workers)
            self._slots = {s: (first, 0) for s in range(workers)}
            self._batches, self._pass, self._pass_done = 0, first if self.mode == "epoch" else 0, False
            return
        self._slots = slots
        self._skipped, self._skipped_before = {}, Counter(state.get("skipped", {}))
        self._batches = int(state.get("batches", 0))
        self._pass = int(state.get("pass", 0))
        self._pass_done = bool(state.get("pass_done", False))
