"""One shard opened for random access: its bytes (memory-mapped when local) and its sample index.

Local shards are memory-mapped (the page cache is shared by every worker and nothing is copied
until a sample is); remote shards (:mod:`shards.remote`) are fetched whole, with retries; ``pipe:``
URLs go through webdataset's ``gopen``. :func:`open_shard` raises :class:`ShardUnreadable` when a
shard cannot be read at all; a damaged or truncated archive opens with the samples before the
damage (``index.complete`` is False).
"""

from __future__ import annotations

import json
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from shards import remote
from shards.codec import npy_header
from shards.tarindex import IMAGE_EXTS, TarIndex, index_tar

NPY_CODE = IMAGE_EXTS.index("npy")


class ShardUnreadable(Exception):
    """The shard's bytes could not be read (missing file, remote read failed after retries)."""


@dataclass
class Shard:
    url: str
    buf: np.ndarray  # uint8, the whole archive
    index: TarIndex
    _raw_ok: dict[int, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def image(self, i: int) -> np.ndarray | None:
        """Sample ``i``'s image member bytes (a view), or None when it has none."""
        off = int(self.index.image_offset[i])
        return None if off < 0 else self.buf[off : off + int(self.index.image_size[i])]

    def key(self, i: int) -> str:
        return self.index.keys[i].decode("utf-8", "replace")

    def meta(self, i: int) -> dict:
        off = int(self.index.json_offset[i])
        if off < 0:
            return {}
        try:
            out = json.loads(self.buf[off : off + int(self.index.json_size[i])].tobytes())
        except ValueError:
            return {}
        return out if isinstance(out, dict) else {}

    def raw_ok(self, size: int) -> np.ndarray:
        """Per sample: a ``.npy`` member holding exactly a ``size x size`` uint8 array (vectorised check)."""
        ok = self._raw_ok.get(size)
        if ok is None:
            header = np.frombuffer(npy_header((size, size)), np.uint8)
            idx = self.index
            ok = (idx.image_ext == NPY_CODE) & (idx.image_size == len(header) + size * size)
            rows = np.flatnonzero(ok)
            if len(rows):
                starts = idx.image_offset[rows]
                heads = self.buf[starts[:, None] + np.arange(len(header))]
                ok[rows] = (heads == header).all(axis=1)
            self._raw_ok[size] = ok
        return ok


def read_local(path: str) -> np.ndarray:
    """The file's bytes as a uint8 array over a private (copy-on-write) memory map; empty files: empty array."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return np.empty(0, np.uint8)
        # Copy-on-write: writable views (torch takes them without a copy) over shared page-cache pages.
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    if hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_WILLNEED)  # start read-ahead for the whole shard now
    return np.frombuffer(mm, np.uint8)


def read_shard_bytes(url: str) -> np.ndarray:
    try:
        if url.startswith("pipe:"):
            import webdataset as wds

            with wds.gopen(url) as stream:
                return np.frombuffer(bytearray(stream.read()), np.uint8)
        if remote.is_remote(url):
            return np.frombuffer(bytearray(remote.read_bytes(url)), np.uint8)
        return read_local(url[len("file://") :] if url.startswith("file://") else url)
    except (OSError, remote.RemoteReadError) as exc:
        raise ShardUnreadable(str(exc)) from None


def open_shard(url: str) -> Shard:
    buf = read_shard_bytes(url)
    return Shard(url, buf, index_tar(buf))


class IndexCache:
    """Opens shards, reusing the index (and raw-member checks) of a shard opened before.

    A loader drops a shard's bytes once its window is done and maps it again the next epoch;
    indexing it again costs as much as copying its raw samples (a few hundred µs per shard, ~40 small
    NumPy operations over its headers). Shards do not change during a run, so each worker keeps
    what it found, keyed by URL and checked against the shard's length, for up to ``max_samples``
    samples (least recently opened dropped first; ~100 bytes per sample).
    """

    def __init__(self, max_samples: int = 250_000) -> None:
        self.max_samples = max_samples
        self._entries: OrderedDict[str, tuple[int, TarIndex, dict[int, np.ndarray]]] = OrderedDict()
        self._samples = 0

    def open(self, url: str) -> Shard:
        buf = read_shard_bytes(url)
        entry = self._entries.get(url)
        if entry is not None and entry[0] == len(buf):
            self._entries.move_to_end(url)
            return Shard(url, buf, entry[1], entry[2])
        shard = Shard(url, buf, index_tar(buf))
        if entry is not None:
            self._samples -= len(entry[1])
        self._entries[url] = (len(buf), shard.index, shard._raw_ok)  # raw checks made later land here too
        self._samples += len(shard)
        while self._samples > self.max_samples and len(self._entries) > 1:
            _, (_, index, _) = self._entries.popitem(last=False)
            self._samples -= len(index)
        return shard
