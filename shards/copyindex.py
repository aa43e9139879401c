"""An index of reference images (an evaluation split, a dataset) that finds the copies of a frame.

Every reference image is stored as its ORB keypoints and a thumbnail (:mod:`shards.match`). A
query is answered for the frame and for its mirror image, in three steps:

1. *votes*: a multi-index hash over the 256-bit descriptors (the idea of :mod:`shards.dedup`'s
   index, here over many codes per image and with probabilistic keys): ``TABLES`` tables, each
   keyed by a seeded draw of bits from the ``BALANCED_BITS`` bits nearest 50/50 over the
   references (ORB bits of B-mode are far from it: an unbalanced bit keys nothing), the key width
   growing with the index (:func:`key_width`); a reference descriptor that shares a key with a
   query descriptor and lies within ``VOTE_HAMMING`` bits of it votes for its image, weighted by
   the key's idf; keys shared by more than ``MAX_BUCKET`` descriptors are skipped (stop words);
2. the ``MAX_CANDIDATES`` best-voted images: those whose voting correspondences already agree on a
   map (``PRECHECK_INLIERS``) get the full check (:func:`shards.match.verify` on mutual nearest
   descriptors);
3. the verified copies, in the order found.

Written here because OpenCV's matchers compare one image with another, or search an in-memory
FLANN index that build workers cannot share; what is needed is which of many images a frame
copies, from one index every worker maps. Sorted key arrays (NumPy ``searchsorted``): lookups
are vectorised and the index saves to ``.npy`` files that worker processes map read-only
(:meth:`CopyIndex.save`, :meth:`CopyIndex.load`), sharing one copy in the page cache. Memory:
~220 bytes per keypoint, ``N_FEATURES`` keypoints and a 16 KiB thumbnail per image (20,000
images: ~1.6 GB).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from shards.match import MAX_HAMMING, Features, Verdict, canonical, features, fit_map, hamming, thumbnail, verify
from shards.ordered_pool import ordered_map

TABLES = 16
BALANCED_BITS = 128  # keys draw their bits from the most balanced half of the 256
MAX_BUCKET = 32  # a key shared by more descriptors than this says little: skipped ("stop words")
VOTE_HAMMING = 24  # a descriptor this close to a query descriptor votes for its image
MAX_CANDIDATES = 8  # best-voted references per query view
PRECHECK_INLIERS = 4  # voting correspondences that must agree on a map before the full check
T = TypeVar("T")
ARRAYS = ("owner", "xy", "desc", "start", "bits", "keys", "order", "idf", "thumbs")


@dataclass(frozen=True)
class Found:
    ref: int  # index of the reference image
    name: str  # its name (a path relative to the set's root)
    flipped: bool  # the frame matched mirrored
    verdict: Verdict


@dataclass(frozen=True)
class View:
    """A canonical frame as the index queries it (one orientation)."""

    feats: Features
    thumb: np.ndarray


def view(canon: np.ndarray) -> View:
    return View(features(canon), thumbnail(canon))


def _unpacked(desc: np.ndarray) -> np.ndarray:
    return np.unpackbits(desc, axis=1)


def key_width(n: int) -> int:
    """Bits per key for ``n`` reference descriptors: about four descriptors per key when spread evenly."""
    return int(np.clip(np.ceil(np.log2(max(n, 1))) - 2, 12, 28))


def choose_bits(desc: np.ndarray, seed: int = 0) -> np.ndarray:
    """[TABLES, width] bit positions, each table a seeded draw from the ``BALANCED_BITS`` bits whose
    mean over the reference descriptors is nearest 1/2 (ORB bits of B-mode are far from 50/50)."""
    nbits = desc.shape[1] * 8
    balance = np.abs(_unpacked(desc).mean(axis=0) - 0.5) if len(desc) else np.zeros(nbits)
    pool = np.argsort(balance, kind="stable")[:BALANCED_BITS]
    rng = np.random.default_rng(seed)
    width = key_width(len(desc))
    return np.stack([np.sort(rng.choice(pool, width, replace=False)) for _ in range(TABLES)])


def keys(desc: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """[tables, n] uint32 keys of ``n`` descriptors."""
    unpacked = _unpacked(desc).astype(np.uint32)
    weights = (np.uint32(1) << np.arange(bits.shape[1], dtype=np.uint32)).astype(np.uint32)
    return np.stack([unpacked[:, b] @ weights for b in bits]).astype(np.uint32)


def _idf(sorted_keys: np.ndarray, owner_sorted: np.ndarray, n_refs: int) -> np.ndarray:
    """Per descriptor (in key order): log(1 + images / images sharing its key), the weight of its vote."""
    pairs = np.unique(np.stack([sorted_keys.astype(np.int64), owner_sorted.astype(np.int64)]), axis=1)
    ukeys, df = np.unique(pairs[0], return_counts=True)
    per = df[np.searchsorted(ukeys, sorted_keys)]
    return np.log1p(max(n_refs, 1) / per).astype(np.float16)


class CopyIndex:
    def __init__(self, names: list[str], arrays: dict[str, np.ndarray]):
        self.names = names
        for k in ARRAYS:
            setattr(self, k, arrays[k])

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def build(cls, names: list[str], views: list[View]) -> CopyIndex:
        """The index of reference images ``names`` with their canonical views (in that order)."""
        counts = [len(v.feats.desc) for v in views]
        desc = np.concatenate([v.feats.desc for v in views]) if views else np.zeros((0, 32), np.uint8)
        xy = np.concatenate([v.feats.xy for v in views]) if views else np.zeros((0, 2), np.float32)
        owner = np.repeat(np.arange(len(views), dtype=np.int32), counts)
        bits = choose_bits(desc)
        k = keys(desc, bits)
        order = np.argsort(k, axis=1, kind="stable").astype(np.int32)
        sorted_keys = np.take_along_axis(k, order, axis=1)
        arrays = {
            "owner": owner,
            "xy": xy.astype(np.float32),
            "desc": desc,
            "start": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            "bits": bits.astype(np.int16),
            "keys": sorted_keys,
            "order": order,
            "idf": np.stack([_idf(sk, owner[o], len(views)) for sk, o in zip(sorted_keys, order)]),
            "thumbs": np.stack([v.thumb for v in views]) if views else np.zeros((0, 1, 1), np.uint8),
        }
        return cls(list(names), arrays)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for k in ARRAYS:
            np.save(folder / f"{k}.npy", getattr(self, k))
        (folder / "names.json").write_text(json.dumps(self.names), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> CopyIndex:
        """Memory-mapped, read-only: worker processes share the pages."""
        folder = Path(folder)
        names = json.loads((folder / "names.json").read_text(encoding="utf-8"))
        return cls(names, {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in ARRAYS})

    def _hits(self, feats: Features) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query keypoint, reference descriptor, weight) for every key a query descriptor shares
        with a reference descriptor, over all tables (buckets over ``MAX_BUCKET`` skipped)."""
        qk = keys(feats.desc, np.asarray(self.bits))
        q_idx, pos, table = [], [], []
        for t in range(len(qk)):
            lo = np.searchsorted(self.keys[t], qk[t], "left")
            n = np.searchsorted(self.keys[t], qk[t], "right") - lo
            n = np.where(n > MAX_BUCKET, 0, n)
            total = int(n.sum())
            q_idx.append(np.repeat(np.arange(len(n)), n))
            pos.append(np.repeat(lo - np.cumsum(n) + n, n) + np.arange(total))
            table.append(np.full(total, t))
        q, p, t = np.concatenate(q_idx), np.concatenate(pos), np.concatenate(table)
        return q, np.asarray(self.order)[t, p], np.asarray(self.idf)[t, p]

    def candidates(self, feats: Features) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(reference, query points, reference points) of the references the frame's descriptors vote
        for, best first (ties: lower index): votes are descriptors within ``VOTE_HAMMING`` bits,
        weighted by idf; the points are the voting correspondences, for a quick geometric check."""
        if len(feats.desc) == 0 or len(self.desc) == 0:
            return []
        q, r, w = self._hits(feats)
        close = hamming(feats.desc[q], np.asarray(self.desc)[r]) <= VOTE_HAMMING
        q, r, w = q[close], r[close], w[close]
        owner = np.asarray(self.owner)[r]
        total = np.bincount(owner, weights=w, minlength=len(self.names))
        refs = np.flatnonzero(total > 0)
        ranked = refs[np.lexsort((refs, -total[refs]))][:MAX_CANDIDATES]
        pairs = np.unique(np.stack([owner, q, r]), axis=1)  # one per (reference, query point, descriptor)
        out = []
        for ref in ranked:
            _, qi, ri = pairs[:, pairs[0] == ref]
            out.append((int(ref), feats.xy[qi], np.asarray(self.xy)[ri]))
        return out

    def check(self, v: View, ref: int) -> Verdict:
        """The full check of a frame's view against one reference image."""
        import cv2

        lo, hi = int(self.start[ref]), int(self.start[ref + 1])
        rdesc = np.asarray(self.desc[lo:hi])
        if len(v.feats.desc) < 2 or len(rdesc) < 2:
            return Verdict(0, 0.0, 0.0, None)
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)  # mutual nearest descriptors
        pairs = [m for m in matcher.match(v.feats.desc, rdesc) if m.distance <= MAX_HAMMING]
        p = v.feats.xy[[m.queryIdx for m in pairs]].reshape(-1, 2)
        q = np.asarray(self.xy[lo:hi])[[m.trainIdx for m in pairs]].reshape(-1, 2)
        return verify(p, q, v.thumb, np.asarray(self.thumbs[ref]))

    def search(self, query: tuple[View, View], limit: int = 1, skip: int | None = None) -> list[Found]:
        """Verified copies of a frame given as its two views (:func:`query_views`), in the order
        found (best-voted candidates first, the frame as it is before its mirror image), at most
        ``limit``; ``skip`` leaves one reference out (the frame itself). A candidate gets the full
        check only when its voting correspondences already agree on a map (``PRECHECK_INLIERS``)."""
        found: list[Found] = []
        for flipped, v in enumerate(query):
            for ref, p, q in self.candidates(v.feats):
                if ref == skip or any(f.ref == ref for f in found) or fit_map(p, q)[0] < PRECHECK_INLIERS:
                    continue
                verdict = self.check(v, ref)
                if verdict.copy:
                    found.append(Found(ref, self.names[ref], bool(flipped), verdict))
                    if len(found) >= limit:
                        return found
        return found

    def find(self, canon: np.ndarray, limit: int = 1, skip: int | None = None) -> list[Found]:
        """:meth:`search` for a canonical frame."""
        return self.search(query_views(canon), limit, skip)


def query_views(canon: np.ndarray) -> tuple[View, View]:
    """A canonical frame as a query: its view and its mirror image's (a mirrored copy matches that)."""
    return view(canon), view(np.ascontiguousarray(canon[:, ::-1]))


_LOADED: dict[str, CopyIndex] = {}


def loaded(folder: str | Path) -> CopyIndex:
    """The index saved in ``folder``, loaded once per process (worker processes query it)."""
    key = str(folder)
    if key not in _LOADED:
        _LOADED[key] = CopyIndex.load(folder)
    return _LOADED[key]


def _view_job(job: tuple[Callable[[T], np.ndarray], T]) -> View:
    read, item = job
    return view(canonical(read(item)))


def reference_views(read: Callable[[T], np.ndarray], items: Sequence[T], workers: int = 1) -> list[View]:
    """The view of each item's canonical frame (pixels by ``read``, a module-level function so that
    worker processes can call it), in order, computed in ``workers`` processes."""
    return list(ordered_map(_view_job, [(read, x) for x in items], workers))


def _query_job(job: tuple[Callable[[T], np.ndarray], T]) -> tuple[str, tuple[View, View]]:
    read, item = job
    pixels = read(item)
    digest = hashlib.sha1(f"{pixels.shape}".encode() + np.ascontiguousarray(pixels).tobytes()).hexdigest()
    return digest, query_views(canonical(pixels))


def read_queries(
    read: Callable[[T], np.ndarray], items: Sequence[T], workers: int = 1
) -> list[tuple[str, tuple[View, View]]]:
    """As :func:`reference_views`, for frames that are both references and queries: each item's pixel
    digest (exact copies share it) and its two query views (:func:`query_views`)."""
    return list(ordered_map(_query_job, [(read, x) for x in items], workers))


def _search_job(job: tuple[str, tuple[View, View], int, int | None]) -> list[Found]:
    folder, query, limit, skip = job
    return loaded(folder).search(query, limit, skip)


def search_all(
    folder: str | Path, queries: Sequence[tuple[View, View]], limit: int, self_index: bool, workers: int = 1
) -> list[list[Found]]:
    """:meth:`CopyIndex.search` of every query against the index saved in ``folder``, in order, in
    ``workers`` processes; with ``self_index`` query ``i`` is reference ``i`` and is left out."""
    jobs = [(str(folder), q, limit, i if self_index else None) for i, q in enumerate(queries)]
    return list(ordered_map(_search_job, jobs, workers))
