"""Shard builds in parts: ``python -m shards.build ... --part I/N`` on N nodes at once, then one merge.

A part does the expensive work -- read, decode, clean, encode (:func:`shards.extract.extract_item`) --
for its slice of the inputs and spools the outcomes. The merge, the same command without ``--part``,
then judges every input in input order exactly as a one-process build does (near-identical clip
frames, global duplicates, per-source caps, shards, rejects, manifest), taking each outcome from the
spool instead of extracting it, so its output is byte-identical to a one-process build's.

- **Slices.** The inputs of every source, in input order, are dealt to the N parts by file size,
  largest first (:func:`sonodistill.parts.assign`; a dataset source's items count its mean size):
  decoding follows the bytes, and a source of long clips spreads over every part. A part extracts
  every input of its slice: whether a capped source (``max_images``) is full is only known in the
  merge, which then skips the outcome as a one-process build skips the input.
- **The spool**, in the output folder: ``.parts/build.json`` (the build identity, N and the sources'
  modification-time stamps, created once: a part with other settings, sources or N refuses to join,
  and so do a part and the merge that find files modified since), ``.parts/part-I-of-N/chunk-<first>-<last>.pkl``
  (the outcomes of up to :data:`CHUNK_ITEMS` inputs, written atomically: a part stopped by a signal
  writes what it has done and exits 75, a killed one loses at most one chunk; either resumes after its
  last chunk) and ``done.json`` when the part is complete, listing its chunks and their sizes. The
  spool holds the encoded samples: about the size of the shards.
- **The merge** refuses to start until every part is done and its chunks are there at their sizes
  (a part run again redoes a chunk that went missing or was cut short), replays the chunks in input
  order (one chunk per part in memory), and removes the spool once ``manifest.json`` is written.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import pickle
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from shards.extract import ExtractSettings, ItemOutcome, extract_job
from shards.identity import describe_difference, modified_sources, same_build, source_stamps
from shards.ordered_pool import ordered_map
from shards.sources import Item, Source, items_from
from sonodistill.atomic import json_text, write_bytes, write_json, write_once
from sonodistill.errors import UserError
from sonodistill.lock import holder
from sonodistill.logs import progress as progress_bar
from sonodistill.parts import Part, assign
from sonodistill.stop import check_stop, stop_requested

log = logging.getLogger(__name__)

SPOOL = ".parts"
CHUNK_ITEMS = 256  # inputs per chunk file: what a killed part redoes at most
CHUNK_BYTES = 64 << 20  # and a chunk's encoded samples at most (memory of the merge: one chunk per part)
CHUNK_RE = re.compile(r"^chunk-(\d{9})-(\d{9})\.pkl$")
DONE = "done.json"
Entry = tuple[int, str, str, ItemOutcome]  # (input index, source, relative path, outcome)


def part_inputs(sources: Sequence[Source], part: Part) -> list[int]:
    """The input indices (over every source, in input order) of ``part``'s slice, ascending."""
    sizes = [size for s in sources for size in s.sizes()]
    owner = assign(sizes, part.count)
    return [i for i, p in enumerate(owner) if p == part.index]


def _chunks(folder: Path) -> list[tuple[int, int, Path]]:
    """A part's chunk files as (first, last, path), in input order."""
    found = [(CHUNK_RE.match(p.name), p) for p in folder.glob("chunk-*.pkl")] if folder.is_dir() else []
    return sorted((int(m.group(1)), int(m.group(2)), p) for m, p in found if m)


class Spool:
    """The parts' spool of ``out`` (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.root = Path(out) / SPOOL

    def folder(self, part: Part) -> Path:
        return self.root / part.tag

    def lock(self, part: Part) -> Path:
        """Held by the process running ``part`` (:func:`sonodistill.lock.exclusive`)."""
        return self.root / f".lock-{part.tag}"

    def running(self) -> list[str]:
        """The parts a live process is running now, as ``I/N (pid P)``."""
        found = []
        for path in sorted(self.root.glob(".lock-part-*")) if self.root.is_dir() else []:
            pid = holder(path)
            if pid is not None:
                found.append(f"{path.name.removeprefix('.lock-part-').replace('-of-', '/')} (pid {pid})")
        return found

    def exists(self) -> bool:
        return (self.root / "build.json").is_file()

    def _meta(self) -> dict:
        path = self.root / "build.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            int(meta["parts"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(
                f"{path}: unreadable record of the parts' build; delete {self.root} to run the parts again"
            ) from None
        return meta

    @property
    def count(self) -> int:
        """N, the number of parts this spool was started for."""
        return int(self._meta()["parts"])

    def join(self, identity: dict, count: int, stamps: dict[str, str], part: str = "") -> None:
        """Record (or check) the build this spool belongs to; :class:`UserError` when it is another, or
        when its files were modified since the first part started (their stamps differ)."""
        write_once(self.root / "build.json", json_text({"identity": identity, "parts": count, "stamps": stamps}))
        meta = self._meta()
        if not same_build(meta.get("identity"), identity):
            raise UserError(
                f"--out {self.root.parent}: holds parts of a different build "
                f"({describe_difference(meta.get('identity', {}), identity)}); use another --out or delete {self.root}"
            )
        changed = modified_sources(meta.get("stamps"), stamps)
        if changed:
            raise UserError(
                f"--out {self.root.parent}: holds parts of a build whose files were modified since (source "
                f"{', '.join(changed)}: modification times differ; parts and the merge must read the same files, "
                f"copies keep their times with rsync -a or cp -p); use another --out or delete {self.root}"
            )
        if meta.get("parts") != count:
            raise UserError(
                f"--part {part or f'?/{count}'}: {self.root.parent} holds a build in {meta.get('parts')} parts; "
                f"use --part I/{meta.get('parts')} or delete {self.root}"
            )

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def damaged(self, part: Part) -> list[str]:
        """The chunks of a done ``part`` that are missing or not at the size its ``done.json`` lists."""
        folder = self.folder(part)
        try:
            listed = json.loads((folder / DONE).read_text(encoding="utf-8")).get("chunks")
        except (OSError, ValueError, AttributeError):
            return [DONE]
        if listed is None:  # written before done.json listed its chunks
            return []
        return [name for name, size in listed if not _has_size(folder / name, size)]


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def run_part(
    out: Path,
    identity: dict,
    sources: Sequence[Source],
    extract: ExtractSettings,
    workers: int,
    part: Part,
    progress: bool,
) -> dict:
    """Extract and spool ``part``'s inputs not spooled yet; a summary of what it did."""
    spool = Spool(out)
    spool.join(identity, part.count, source_stamps(sources), str(part))
    folder = spool.folder(part)
    mine = part_inputs(sources, part)
    if (folder / DONE).is_file():
        damaged = spool.damaged(part)
        if not damaged:
            log.info(f"build part {part}: done before ({len(mine)} inputs spooled in {folder}); nothing to do")
            return {"part": str(part), "inputs": len(mine), "extracted": 0}
        log.warning(f"build part {part}: {len(damaged)} spool file(s) missing or cut short ({damaged[0]}); redone")
        for name in damaged:
            (folder / name).unlink(missing_ok=True)
        (folder / DONE).unlink(missing_ok=True)
    chunks = _chunks(folder)
    done = {i for i in mine if any(first <= i <= last for first, last, _ in chunks)}
    todo = [i for i in mine if i not in done]  # after the last chunk, or where a chunk went missing
    position = {i: k for k, i in enumerate(mine)}
    for tmp in folder.glob(".*.tmp"):  # a chunk being written when the part was stopped
        tmp.unlink()
    initial = len(mine) - len(todo)
    bar = progress_bar(total=len(mine), initial=initial, desc=f"part {part}", unit="file", main=progress, logger=log)
    wanted, options = set(todo), {s.name: s.options for s in sources}
    jobs = ((it, options[it.source], extract) for i, it in enumerate(items_from(sources)) if i in wanted)
    chunk: list[Entry] = []
    size = 0
    try:
        for index, (item, outcome) in zip(todo, ordered_map(extract_job, jobs, workers)):
            if chunk and position[index] != position[chunk[-1][0]] + 1:
                _write_chunk(folder, chunk)  # a chunk never spans inputs another chunk holds
                chunk, size = [], 0
            chunk.append((index, item.source, item.relpath, outcome))
            size += sum(len(getattr(f.result, "data", b"")) for f in outcome.frames)
            bar.update(1)
            stopping = stop_requested() is not None  # keep the inputs done so far, then stop
            if len(chunk) >= CHUNK_ITEMS or size >= CHUNK_BYTES or stopping:
                _write_chunk(folder, chunk)
                chunk, size = [], 0
            check_stop(f"{bar.n} of {len(mine)} inputs of part {part} are spooled in {folder}")
        if chunk:
            _write_chunk(folder, chunk)
    finally:
        bar.close()
    chunks_done = [[path.name, path.stat().st_size] for _, _, path in _chunks(folder)]
    write_json(folder / DONE, {"part": str(part), "inputs": len(mine), "chunks": chunks_done})
    return {"part": str(part), "inputs": len(mine), "extracted": len(todo)}


def _write_chunk(folder: Path, chunk: list[Entry]) -> None:
    name = f"chunk-{chunk[0][0]:09d}-{chunk[-1][0]:09d}.pkl"
    write_bytes(folder / name, pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))


def finished_spool(out: Path, identity: dict, stamps: dict[str, str]) -> Spool | None:
    """The spool of ``out`` when every part is done (None: no parts were run); :class:`UserError` when
    it belongs to another build or a part is unfinished."""
    spool = Spool(out)
    running = spool.running()
    if running:  # also before a part wrote build.json: a merge must not race a starting part
        raise UserError(f"--out {out}: build part(s) {', '.join(running)} running; merge once every part is done")
    if not spool.exists():
        return None
    count = spool.count
    spool.join(identity, count, stamps)
    missing = [str(Part(i, count)) for i in range(count) if not (spool.folder(Part(i, count)) / DONE).is_file()]
    if missing:
        named = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise UserError(
            f"--out {out}: build part(s) {named} not finished; run them (--part I/{count}) first, "
            f"or delete {spool.root} to build in one process"
        )
    for i in range(count):
        damaged = spool.damaged(Part(i, count))
        if damaged:
            raise UserError(
                f"--out {out}: the spool of build part {i}/{count} is damaged ({damaged[0]} missing or cut short); "
                f"run --part {i}/{count} again (it redoes what is damaged), then this command"
            )
    return spool


def replay(spool: Spool, sources: Sequence[Source], start: int) -> Iterator[tuple[Item, ItemOutcome]]:
    """Every input from the ``start``-th on with its spooled outcome, in input order (what the merge judges)."""
    count = spool.count
    streams = [_stream(spool.folder(Part(i, count)), start, Part(i, count)) for i in range(count)]
    merged = heapq.merge(*streams, key=lambda e: e[0])
    missing = (None, "", "", None)
    for expected, (item, entry) in enumerate(itertools.zip_longest(items_from(sources, start), merged), start):
        index, source, rel, outcome = entry or missing
        if item is None or index != expected or (source, rel) != (item.source, item.relpath):
            where = f"input {expected} ({item.source}/{item.relpath})" if item is not None else f"entry {index}"
            raise UserError(f"{spool.root}: the spool does not match the inputs at {where}; delete it and rebuild")
        yield item, outcome


def _stream(folder: Path, start: int, part: Part) -> Iterator[Entry]:
    for _, last, path in _chunks(folder):
        if last < start:
            continue
        try:
            entries = pickle.loads(path.read_bytes())  # noqa: S301 (this build's own spool)
        except Exception as e:  # a damaged pickle raises any of several errors
            raise UserError(
                f"{path}: unreadable ({type(e).__name__}); delete it, run --part {part} again, then this command"
            ) from None
        for entry in entries:
            if entry[0] >= start:
                yield entry
