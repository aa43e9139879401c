"""Groups of exact and near-duplicate images in a dataset, by the shards' copy matching.

Two images are exact duplicates when their decoded pixels are identical, near duplicates when one
is a copy of the other under :mod:`shards.match` (re-encoded, resized, mirrored, cropped
differently, frames of one clip that look alike): the same rule that keeps evaluation images out
of a pretraining corpus. Every image is indexed (:class:`shards.copyindex.CopyIndex`) and queried
against the others; matches are joined transitively (union-find), so a group is a connected set.
Splits keep a group on one side (:mod:`downstream.splits`); the audit reports them
(:mod:`downstream.audit`). A group whose images carry different labels is a label conflict.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from downstream.data.record import Catalog, ImageSource, describe_source, open_source
from shards.copyindex import CopyIndex, read_queries, search_all
from shards.decode import read_pixels
from sonodistill.errors import UserError
from sonodistill.stop import check_stop

MATCHES_PER_IMAGE = 8  # verified matches kept per image (a group is joined through any of them)
IMAGES_PER_WORKER = 50  # fewer images than this per process: starting the process costs more
NOTHING_KEPT = "the duplicate search was stopped before any split or audit of this dataset was written"


@dataclass(frozen=True)
class DuplicateGroup:
    ids: tuple[str, ...]  # record ids, in catalogue order
    exact: bool  # every image has the same pixels
    labels: tuple[int | None, ...]  # per id

    @property
    def label_conflict(self) -> bool:
        return len({x for x in self.labels if x is not None}) > 1


def image_pixels(src: ImageSource) -> np.ndarray:
    """Pixels of a record that is not a file (a `datasets` row, a label map), grey when all equal."""
    try:
        with open_source(src) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{describe_source(src)}: cannot read image ({exc})") from None
    same = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    return np.ascontiguousarray(rgb[..., 0]) if same else rgb


def roots(n: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Each of ``n`` items' component under ``pairs`` (union-find), named by its smallest index."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


def match_pairs(catalog: Catalog, workers: int = 1) -> tuple[list[str], list[tuple[int, int]]]:
    """(pixel hash per record, matched record pairs ``(i, j)``, ``i < j``): exact and near. Files are
    read by the shards' decoder (worker processes then import no downstream code)."""
    files = all(isinstance(r.image, str) for r in catalog.records)
    workers = max(1, min(workers, len(catalog.records) // IMAGES_PER_WORKER))
    read = read_queries(read_pixels if files else image_pixels, [r.image for r in catalog.records], workers)
    check_stop(NOTHING_KEPT)  # the search can take minutes on a large dataset: answer a stop between phases
    digests = [d for d, _ in read]
    first: dict[str, int] = {}
    pairs = {(first.setdefault(d, i), i) for i, d in enumerate(digests) if first.setdefault(d, i) != i}
    with tempfile.TemporaryDirectory(prefix="duplicates-index-") as tmp:
        CopyIndex.build(catalog.ids(), [q[0] for _, q in read]).save(tmp)
        found = search_all(tmp, [q for _, q in read], MATCHES_PER_IMAGE, self_index=True, workers=workers)
    check_stop(NOTHING_KEPT)
    pairs |= {(min(i, f.ref), max(i, f.ref)) for i, fs in enumerate(found) for f in fs}
    return digests, sorted(pairs)


def duplicate_groups(catalog: Catalog, workers: int = 1) -> list[DuplicateGroup]:
    """The dataset's groups of two or more matching images, in catalogue order of their first image."""
    digests, pairs = match_pairs(catalog, workers)
    members: dict[int, list[int]] = {}
    for i, root in enumerate(roots(len(catalog.records), pairs)):
        members.setdefault(root, []).append(i)
    groups = []
    for idx in (m for m in members.values() if len(m) > 1):
        recs = [catalog.records[i] for i in idx]
        exact = len({digests[i] for i in idx}) == 1
        groups.append(DuplicateGroup(tuple(r.id for r in recs), exact, tuple(r.label for r in recs)))
    return groups
