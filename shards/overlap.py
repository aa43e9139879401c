"""Which samples of an existing shard set copy an evaluation image (``python -m shards.inspect --overlap``).

For a shard set built without ``--exclude``, or by someone else: every sample is matched against
the exclusion sets exactly as the build matches frames (:mod:`shards.copyindex`), shard by shard in
worker processes. The result is a count per set, the matched pairs (``overlap.jsonl``: shard,
key, source, path, frame, matched image, set, inliers, correlation, mirrored) and a contact sheet
of the pairs, sample beside matched image.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from shards.codec import CorruptSample, decode_gray
from shards.copyindex import loaded
from shards.decode import to_gray
from shards.exclusions import Exclusions, read_reference
from shards.match import resized
from shards.ordered_pool import ordered_map
from shards.read_guard import Coverage
from shards.shardfile import ShardUnreadable, open_shard
from sonodistill.atomic import write_text
from sonodistill.errors import UserError
from sonodistill.figures import image_sheet, sheet_tile

SHEET_PAIRS = 60  # at most this many pairs drawn (all are listed in the JSONL)


@dataclass
class Pair:
    shard: str
    key: str
    source: str
    path: str
    frame: int | None
    set: str
    matched: str  # the evaluation image, relative to its set's root
    ref: int  # its index among all excluded images
    inliers: int
    ncc: float
    flipped: bool


def short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def _shard_job(job: tuple[str, str]) -> tuple[int, int, bool, str | None, list[tuple[dict, np.ndarray]]]:
    """In a worker: (samples read, corrupt samples, shard complete, why it did not open, [(pair fields,
    sample tile)]) of one shard."""
    url, folder = job
    try:
        shard = open_shard(url)
    except ShardUnreadable as exc:
        return 0, 0, False, str(exc), []
    index, out, n, corrupt = loaded(folder), [], 0, 0
    for i in range(len(shard)):
        encoding = shard.index.encoding(i)
        if encoding is None:
            corrupt += 1
            continue
        try:
            pixels = decode_gray(shard.image(i), encoding)
        except CorruptSample:
            corrupt += 1
            continue
        n += 1
        found = index.find(resized(pixels), limit=1)
        if found:
            f, meta = found[0], shard.meta(i)
            fields = {"shard": Path(url).name, "key": shard.key(i), "source": str(meta.get("source", "")),
                      "path": str(meta.get("path", "")), "frame": meta.get("frame"), "matched": f.name,
                      "ref": f.ref, "inliers": f.verdict.inliers, "ncc": round(f.verdict.ncc, 3),
                      "flipped": f.flipped}  # fmt: skip
            out.append((fields, sheet_tile(pixels)))
    return n, corrupt, shard.index.complete, None, out


def find_overlap(urls: list[str], exclusions: Exclusions, coverage: Coverage, workers: int = 1) -> tuple[list, list]:
    """(matched pairs, their sample tiles) of a shard set against the exclusion sets; what could
    not be read is tallied in ``coverage`` (which stops the pass when shards keep failing)."""
    with tempfile.TemporaryDirectory(prefix="overlap-index-") as tmp:
        exclusions.build_index(tmp, workers)
        pairs, tiles = [], []
        jobs = ordered_map(_shard_job, [(u, tmp) for u in urls], workers, chunk=1)
        for u, (n, corrupt, complete, failure, found) in enumerate(jobs):
            coverage.shard(u, urls[u], n, failure, complete, corrupt)
            for fields, t in found:
                pairs.append(Pair(set=exclusions.set_of(fields["ref"]).name, **fields))
                tiles.append(t)
    if not coverage.read:
        raise UserError(f"{coverage.what}: no sample could be read, nothing was compared: {coverage.gaps()}")
    return pairs, tiles


def overlap_sheet(pairs: list[Pair], tiles: list, exclusions: Exclusions, path: str | Path) -> None:
    """Sample beside matched image, three pairs to a row."""
    cells = []
    for p, t in list(zip(pairs, tiles))[:SHEET_PAIRS]:
        s = exclusions.set_of(p.ref)
        ref = sheet_tile(to_gray(read_reference(str(s.root / p.matched))))
        frame = f" #{p.frame}" if p.frame is not None else ""
        how = f"{p.inliers} inliers, ncc {p.ncc:.2f}" + (" mirrored" if p.flipped else "")
        cells += [(t, f"{p.source}: {short(p.path)}{frame}"), (ref, f"{p.set}: {short(p.matched)}\n{how}")]
    rows = [cells[i : i + 6] for i in range(0, len(cells), 6)] or [[]]
    image_sheet(rows, path)


def report(pairs: list[Pair], exclusions: Exclusions, coverage: Coverage) -> str:
    lines = []
    for s in exclusions.sets:
        mine = [p for p in pairs if p.set == s.name]
        copied = len({p.matched for p in mine})
        head = f"overlap with {s.name} ({len(s.images)} images)"
        lines.append(f"{head}: {len(mine)} of {coverage.read} samples copy {copied} of its images")
    gaps = coverage.gaps()
    if gaps:
        lines.append(f"incomplete: {gaps}; the counts above are a lower bound")
    return "\n".join(lines)


def write_pairs(pairs: list[Pair], path: str | Path) -> None:
    write_text(path, "".join(json.dumps(asdict(p), sort_keys=True) + "\n" for p in pairs))


def inspect_overlap(
    urls: list[str], exclusions: Exclusions, sheet: str | Path, workers: int = 1, coverage: Coverage | None = None
) -> str:
    """Match a shard set against exclusion sets; write ``<sheet>.jsonl`` and, when a pair matched, the
    sheet; the report.
    ``coverage`` (with the manifest's counts, when there is one) says afterwards what was not read."""
    coverage = coverage if coverage is not None else Coverage("shards")
    pairs, tiles = find_overlap(urls, exclusions, coverage, workers)
    sheet = Path(sheet)
    write_pairs(pairs, sheet.with_suffix(".jsonl"))
    if not pairs:  # no sheet of nothing: the (empty) list says so
        earlier = f" ({sheet} is an earlier run's)" if sheet.exists() else ""
        listed = sheet.with_suffix(".jsonl")
        return report(pairs, exclusions, coverage) + f"\nno matched pairs: no sheet drawn{earlier}; {listed} is empty"
    overlap_sheet(pairs, tiles, exclusions, sheet)
    return report(pairs, exclusions, coverage) + f"\nmatched pairs: {sheet} (sheet), {sheet.with_suffix('.jsonl')}"
