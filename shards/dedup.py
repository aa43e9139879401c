"""Exact and near-duplicate detection over a stream of cleaned images, across all sources.

Exact: identical cleaned pixels (SHA-1). Near: 256-bit perceptual hashes (imagehash.phash of the
decoded frame) within ``max_distance`` bits. Calibrated on the synthetic corpus: JPEG re-encodes,
brightness changes and 1-2 % rescales of a frame lie within 6 bits of it, distinct frames of the
same anatomy at least 50 bits apart; the default 16 sits between. The near search uses multi-index
hashing — split the hash into ``max_distance + 1`` bit blocks; two hashes within the distance agree
exactly on at least one block (pigeonhole) — so each lookup touches a few candidates instead of
every kept image. Hand-written because imagehash only computes hashes; it has no index. Memory is a
few dozen bytes per kept image.
"""

from __future__ import annotations

from collections import defaultdict


def _blocks(nbits: int, nblocks: int) -> list[tuple[int, int]]:
    """(shift, mask) of ``nblocks`` contiguous bit blocks covering ``nbits`` bits."""
    out, start = [], 0
    for i in range(nblocks):
        width = nbits // nblocks + (1 if i < nbits % nblocks else 0)
        out.append((start, (1 << width) - 1))
        start += width
    return out


HASH_BITS = 256  # the perceptual hashes' length


class DuplicateIndex:
    def __init__(self, max_distance: int = 16, nbits: int = HASH_BITS):
        self.max_distance = max_distance
        self._blocks = _blocks(nbits, max_distance + 1)
        self._tables: list[dict[int, list[int]]] = [defaultdict(list) for _ in self._blocks]
        self._exact: dict[str, int] = {}
        self._hashes: list[int] = []

    def __len__(self) -> int:
        return len(self._hashes)

    def check(self, pixel_sha1: str, phash: int) -> str | None:
        """``duplicate`` / ``near_duplicate`` if seen before, else None (does not insert)."""
        found = self.find(pixel_sha1, phash)
        return found[0] if found else None

    def find(self, pixel_sha1: str, phash: int) -> tuple[str, int, int] | None:
        """(reason, index of the kept image it repeats, pHash distance) or None; does not insert.

        Indices count kept images in insertion order (the build's sample keys)."""
        if pixel_sha1 in self._exact:
            idx = self._exact[pixel_sha1]
            return "duplicate", idx, (self._hashes[idx] ^ phash).bit_count()
        if self.max_distance < 0:
            return None
        seen: set[int] = set()
        best: tuple[int, int] | None = None
        for (shift, mask), table in zip(self._blocks, self._tables):
            for idx in table.get((phash >> shift) & mask, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                d = (self._hashes[idx] ^ phash).bit_count()
                if d <= self.max_distance and (best is None or (d, idx) < best):
                    best = (d, idx)
        return ("near_duplicate", best[1], best[0]) if best else None

    def add(self, pixel_sha1: str, phash: int) -> None:
        idx = len(self._hashes)
        self._hashes.append(phash)
        self._exact.setdefault(pixel_sha1, idx)
        for (shift, mask), table in zip(self._blocks, self._tables):
            table[(phash >> shift) & mask].append(idx)
