"""Build cleaned, fixed-resolution WebDataset shards from image, DICOM, video, volume and array files.

    python -m shards.build --source breast=/data/busi --source thyroid=hf:/data/ddti_ds \
        --out /data/shards --size 256 --workers 8
    python -m shards.build --corpus corpus.yaml --out /data/shards --workers 16

Every input item is read by content (:mod:`shards.readers`), its frames sampled and cleaned in
worker processes (:mod:`shards.extract`); results come back in input order, are de-duplicated across
all sources (:mod:`shards.dedup`) and written as ``shard-000000.tar``, ... each holding the image —
``<key>.png`` (8-bit grayscale, default), ``<key>.jpg`` (``--encoding jpeg``) or ``<key>.npy``
(``--encoding raw``: the uint8 array, no decode on read; see :mod:`shards.codec`) — and
``<key>.json`` (source, relative path, ``clip``/``frame`` for frames of a clip, original size and
mode, SHA-1 of the original file, crop box and its source, spacing, the DICOM allow-list). The
frames of one clip are never split over two shards (a shard closes early instead, or holds one clip
longer than ``--samples-per-shard``). Every rejection is a line of ``rejects.jsonl`` (source, path,
frame, reason, measured values). Output is byte-identical for any ``--workers``; memory holds one
shard, never the corpus. Shards are written under a temporary name and renamed; ``.build-
journal.jsonl`` lets an interrupted build resume without redoing finished shards; ``manifest.json``
is written last and marks the build complete. ``--part I/N`` reads and cleans one slice of the inputs
for N processes or nodes at once; the command without it then only merges, byte-identically
(:mod:`shards.build_parts`)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, get_args, get_type_hints

import webdataset as wds

from shards.build_parts import SPOOL, Spool, finished_spool, replay, run_part
from shards.catalogue import SourceConfig, load_corpus, with_default
from shards.clean import Cleaned
from shards.codec import ENCODINGS, JPEG_QUALITY, Codec, decode_gray
from shards.copyindex import Found, loaded
from shards.dedup import HASH_BITS, DuplicateIndex
from shards.exclusions import Exclusions, ExclusionSet, load_exclusions
from shards.exclusions import add_argument as add_exclusion_argument
from shards.extract import ExtractSettings, FrameOutcome, ItemOutcome, extract_item
from shards.identity import build_identity, describe_difference, modified_sources, same_build, source_stamps
from shards.journal import JOURNAL, Journal
from shards.manifest import MANIFEST
from shards.match import resized
from shards.options import SourceOptions
from shards.ordered_pool import ordered_map
from shards.sources import Item, Source, items_from, open_source, parse_source, source_root
from sonodistill.atomic import write_json
from sonodistill.cli_parser import CommandParser
from sonodistill.errors import UserError, cli_main
from sonodistill.lock import exclusive, holder
from sonodistill.logs import progress as progress_bar
from sonodistill.outdir import make_folder
from sonodistill.parts import Part
from sonodistill.stop import StopRequest, check_stop
from sonodistill.workers import available_cores

log = logging.getLogger(__name__)

BUILD_FORMAT = 4  # 3: one scan area per clip, new colour/no-tissue rules, annotations found and acted on; 4: grain rule
SHARD_PATTERN = "shard-{:06d}.tar"
REJECTS = "rejects.jsonl"
REJECTS_PARTIAL = ".rejects-partial.jsonl"
ANNOTATION_TALLY = {"keep": "kept", "inpaint": "inpainted", "drop": "dropped"}  # per_source.annotations
EXCLUSION_INDEX = ".exclusion-index"  # the exclusion sets' index while the build runs
LOCK = ".lock"  # held by the build writing into the folder (sonodistill.lock)


MAX_SIZE = 2048  # pixels; above a scanner's native resolution, every sample an upsampled copy


@dataclass
class BuildSettings:
    size: int = 256  # output side in pixels, 32 to MAX_SIZE (square, see shards.clean's aspect rule)
    samples_per_shard: int = 1000
    workers: int = field(default_factory=available_cores)  # its CPU affinity: a cpuset, srun's cores
    near_duplicate_distance: int = 16  # max Hamming distance of 256-bit pHashes; -1: exact only
    # Consecutive frames of a clip (or consecutive images of a folder: frames exported from a video)
    # within this distance of the previous kept one look identical (docs/data.md); -1: off.
    clip_duplicate_distance: int = 32
    png_level: int = 1  # zlib level: 1 decodes as fast as 9 and builds ~3x faster
    encoding: str = "png"  # png | jpeg | raw (shards.codec)
    jpeg_quality: int = JPEG_QUALITY

    @property
    def codec(self) -> Codec:
        return Codec(self.encoding, self.png_level, self.jpeg_quality)

    def identity(self) -> dict:
        """The settings that change the output (the worker count does not)."""
        d = asdict(self)
        d.pop("workers")
        if d["encoding"] == "png":  # as before encodings existed: older PNG builds stay resumable
            d.pop("encoding")
        if self.encoding != "jpeg":
            d.pop("jpeg_quality")
        d["format"] = BUILD_FORMAT
        return d

    def validate(self) -> None:
        if not 32 <= self.size <= MAX_SIZE:  # a typo of 100000 would fill memory before the first shard
            raise UserError(f"--size {self.size}: expected 32-{MAX_SIZE} (pixels per side of the square samples)")
        if self.samples_per_shard < 1:
            raise UserError(f"--samples-per-shard {self.samples_per_shard}: expected at least 1")
        if self.workers < 1:
            raise UserError(f"--workers {self.workers}: expected at least 1")
        if self.encoding not in ENCODINGS:
            raise UserError(f"--encoding {self.encoding}: expected one of {', '.join(ENCODINGS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"--jpeg-quality {self.jpeg_quality}: expected 1-100")
        for flag, value in (("near-dup", self.near_duplicate_distance), ("clip-dup", self.clip_duplicate_distance)):
            if not -1 <= value <= HASH_BITS // 2:  # past half the bits, unrelated images match
                raise UserError(f"--{flag}-distance {value}: expected -1 (exact copies only) to {HASH_BITS // 2}")


def _process(
    args: tuple[Item, SourceOptions, ExtractSettings, bool, str | None],
) -> tuple[Item, ItemOutcome, dict[int, Found]]:
    """In a worker: read and clean one item; with an exclusion index, find the evaluation image each
    cleaned frame copies (by the frame's position in the outcome)."""
    item, opts, settings, skip, index = args
    if skip:
        return item, ItemOutcome(skipped=True), {}
    outcome = extract_item(item, opts, settings)
    return item, outcome, _overlaps(outcome, index, settings.codec.encoding) if index else {}


def _overlaps(outcome: ItemOutcome, index: str, encoding: str) -> dict[int, Found]:
    """The cleaned frames that copy an excluded image, matched as the shards will hold them."""
    out = {}
    for pos, f in enumerate(outcome.frames):
        if isinstance(f.result, Cleaned):
            found = loaded(index).find(resized(decode_gray(f.result.data, encoding)), limit=1)
            if found:
                out[pos] = found[0]
    return out


def tar_bytes(samples: list[tuple[str, bytes, dict]], ext: str) -> bytes:
    """One shard's bytes: per sample ``<key>.<ext>`` (the image) and ``<key>.json``, deterministic."""
    buf = io.BytesIO()
    # Fixed mtime/owner so the same samples always give the same bytes.
    with wds.TarWriter(buf, mtime=0, user="sonodistill", group="sonodistill", encoder=False) as tw:
        for key, image, meta in samples:
            tw.write({"__key__": key, ext: image, "json": json.dumps(meta, sort_keys=True).encode()})
    return buf.getvalue()


def _write_shard(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


COUNTS = ("files", "clips", "frames", "kept")
TALLIES = ("rejected", "crop", "annotations")  # by reason; by crop source; frames by annotation action


def _new_stats() -> dict:
    return {**{k: 0 for k in COUNTS}, **{k: Counter() for k in TALLIES}}


def _merge_stats(into: dict, delta: dict) -> None:
    for src, d in delta.items():
        t = into.setdefault(src, _new_stats())
        for k in COUNTS:
            t[k] += d.get(k, 0)
        for k in TALLIES:
            t[k].update(d.get(k, {}))


def _plain_stats(stats: dict) -> dict:
    return {
        src: {**{k: d[k] for k in COUNTS}, **{k: dict(sorted(d[k].items())) for k in TALLIES}}
        for src, d in stats.items()
    }


@dataclass
class _Shard:
    """The shard being filled: its samples and what they add to the counts (journalled when it closes)."""

    samples: list[tuple[str, bytes, dict]] = field(default_factory=list)  # (key, image, metadata)
    hashes: list[list[str]] = field(default_factory=list)  # [pixel SHA-1, pHash]: the duplicate index on resume
    kept: Counter = field(default_factory=Counter)  # per source
    rejected: Counter = field(default_factory=Counter)  # per reason
    stats: dict = field(default_factory=dict)  # per source, as in the manifest's per_source
    overlap: Counter = field(default_factory=Counter)  # frames removed per exclusion set


@dataclass
class _State:
    """What the steps of one build share: where it writes and everything decided so far. Rebuilt from
    the journal on resume, advanced item by item in input order, journalled with every shard."""

    out: Path
    settings: BuildSettings
    sources: list[Source]  # in input order
    options: dict[str, SourceOptions]  # by source name
    journal: Journal
    index: DuplicateIndex
    exclusions: Exclusions
    kept: Counter = field(default_factory=Counter)  # samples per source
    rejected: Counter = field(default_factory=Counter)  # rejections per reason
    stats: dict = field(default_factory=dict)  # per source: files, clips, frames, kept, rejected, crop
    shards: list[str] = field(default_factory=list)  # closed shards: file names,
    shard_samples: list[int] = field(default_factory=list)  # their sample counts,
    shard_sources: list[dict] = field(default_factory=list)  # and their samples per source
    overlap: Counter = field(default_factory=Counter)  # frames removed per exclusion set
    exclusion_index: str | None = None  # folder of the exclusion sets' index (None: no sets)
    consumed: int = 0  # input items judged
    written: int = 0  # samples in closed shards
    last_group: tuple | None = None  # the previous kept frame's clip (or folder)
    last_phash: int = 0  # and its pHash: consecutive near-identical frames are dropped
    shard: _Shard = field(default_factory=_Shard)
    rejects: BinaryIO = field(init=False)  # .rejects-partial.jsonl, appended to as items are judged


def _resolve(sources: dict[str, str] | list[SourceConfig]) -> list[SourceConfig]:
    if isinstance(sources, dict):
        return [SourceConfig(name=k, path=v) for k, v in sources.items()]
    return list(sources)


def _open_sources(sources: dict[str, str] | list[SourceConfig], out: Path) -> list[Source]:
    configs = _resolve(sources)
    if not configs:
        raise UserError("no --source given")
    for c in configs:
        if not c.path.startswith("hf:") and os.path.realpath(source_root(c.path)) == os.path.realpath(out):
            where = c.where or f"--source {c.name}={c.path}"
            raise UserError(f"{where}: is the --out folder; write the shards elsewhere")
    # --out inside a source folder: its shards, manifest and rejects are never read back as inputs
    return [open_source(c.name, c.path, c.options, skip=(out,), where=c.where) for c in configs]


def _built(out: Path, identity: dict, progress: bool) -> dict | None:
    """The manifest of a finished build of the same identity in ``out`` (None: not built yet)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    make_folder(out)
    manifest_path = out / MANIFEST
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest["shards"], manifest["num_samples"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{manifest_path}: unreadable manifest of a finished build; build into a new --out") from None
    if not same_build(manifest.get("identity"), identity):
        raise UserError(
            f"--out {out}: holds a different build "
            f"({describe_difference(manifest.get('identity', {}), identity)}); use another --out or delete it"
        )
    missing = [name for name in manifest["shards"] if not (out / name).is_file()]
    if missing:
        raise UserError(
            f"--out {out}: a finished build whose manifest lists {len(missing)} shard(s) no longer there "
            f"(e.g. {missing[0]}); build into a new --out (this folder's shards cannot be trusted)"
        )
    if progress:
        log.info(f"{out}: already built ({manifest['num_samples']} samples); nothing to do")
    _tidy_finished(out)
    return manifest


def _tidy_finished(out: Path) -> None:
    """Remove what a build stopped right after writing its manifest left beside it (the journal, the
    parts' spool, the exclusion index, the lock): a finished folder holds the build's files only."""
    left = [p for p in (out / JOURNAL, out / REJECTS_PARTIAL, out / SPOOL, out / EXCLUSION_INDEX) if p.exists()]
    if not left and not (out / LOCK).exists():
        return
    if holder(out / LOCK) is not None or Spool(out).running():
        return  # the process holding it tidies up itself
    try:
        with exclusive(out / LOCK, f"--out {out}"):
            for p in left:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            (out / LOCK).unlink()
    except OSError as e:  # a read-only copy of a finished build: nothing to tidy there
        log.debug(f"{out}: left as it is ({e})")


def _unfinished(out: Path, identity: dict, stamps: dict[str, str]) -> tuple[Journal, list[dict]] | None:
    """The journal of an unfinished build of ``identity`` in ``out`` and its records (None: no build
    started there); :class:`UserError` when ``out`` holds another build, files modified since, or
    files that are not a build's."""
    journal = Journal(out)
    if not journal.exists():
        ours = (REJECTS_PARTIAL, SPOOL, REJECTS, LOCK)  # rejects.jsonl alone: a build that kept nothing
        foreign = [p.name for p in out.iterdir() if not p.name.endswith(".tmp") and p.name not in ours]
        if foreign:
            raise UserError(f"--out {out}: not empty and not a shard build (found {foreign[0]}); use an empty folder")
        return None
    old, records = journal.read()
    if not same_build(old, identity):
        raise UserError(
            f"--out {out}: holds a different, unfinished build ({describe_difference(old, identity)}); "
            "use another --out or delete it"
        )
    changed = modified_sources(journal.stamps, stamps)
    if changed:
        raise UserError(
            f"--out {out}: holds an unfinished build of files modified since (source {', '.join(changed)}: "
            "modification times differ); use another --out or delete it"
        )
    return journal, records


def _journal(out: Path, identity: dict, stamps: dict[str, str]) -> tuple[Journal, list[dict]]:
    """The journal and its records of finished shards, cut back to the last intact one (a fresh build
    starts a journal in an empty folder)."""
    found = _unfinished(out, identity, stamps)
    if found is None:
        journal, records = Journal(out), []
        journal.start(identity, stamps)
    else:
        journal, records = found
        # Keep only records whose shard file is intact.
        for i, r in enumerate(records):
            p = out / r["shard"]
            if not p.exists() or p.stat().st_size != r["bytes"]:
                records = records[:i]
                journal.rewrite(identity, records)
                break
    for tmp in out.glob("*.tmp"):
        tmp.unlink()
    return journal, records


def _restore(
    out: Path,
    settings: BuildSettings,
    sources: list[Source],
    exclusions: list[ExclusionSet],
    journal: Journal,
    records: list[dict],
) -> _State:
    """The state after the journalled shards; opens the partial rejects file cut back to the last of them."""
    partial = out / REJECTS_PARTIAL
    if not partial.exists() and (out / REJECTS).exists():
        os.replace(out / REJECTS, partial)  # stopped between renaming the rejects and writing the manifest
    have = partial.stat().st_size if partial.exists() else 0
    if records and have < records[-1]["rejects_bytes"]:
        log.warning(f"{out}: the rejects of the finished shards are gone; building again from the first input")
        records = []
        journal.rewrite(journal.read()[0], records)
    state = _State(
        out=out,
        settings=settings,
        sources=sources,
        options={s.name: s.options for s in sources},
        journal=journal,
        index=DuplicateIndex(settings.near_duplicate_distance),
        exclusions=Exclusions.of(exclusions),
        stats={s.name: _new_stats() for s in sources},
    )
    for r in records:
        for sha, ph in r["hashes"]:
            state.index.add(sha, int(ph, 16))
        state.kept.update(r["sources"])
        state.rejected.update(r["rejected"])
        _merge_stats(state.stats, r["stats"])
        state.overlap.update(r.get("overlap", {}))
        state.shards.append(r["shard"])
        state.shard_samples.append(r["samples"])
        state.shard_sources.append(r["sources"])
    state.written = sum(state.shard_samples)
    if records:
        state.consumed = records[-1]["consumed"]
        group, ph = records[-1]["last"]
        state.last_group, state.last_phash = (tuple(group) if group else None), int(ph, 16)
    # rejects.jsonl grows as the build goes; on resume it is cut back to the last finished shard.
    with open(partial, "ab") as fh:
        fh.truncate(records[-1]["rejects_bytes"] if records else 0)
    state.rejects = open(partial, "ab")  # noqa: SIM115 (closed by _process_items, also on error)
    return state


def _plan(
    state: _State, extract: ExtractSettings
) -> Iterator[tuple[Item, SourceOptions, ExtractSettings, bool, str | None]]:
    """The work for the workers: every item not yet judged, in input order, flagged when its source is full."""
    for it in items_from(state.sources, state.consumed):
        # Past its cap a source's items are not read. Safe for determinism: an item pulled
        # after the cap was reached (in input order) lies past the point where it was reached.
        cap = state.options[it.source].max_images
        full = cap is not None and state.kept[it.source] >= cap
        yield it, state.options[it.source], extract, full, state.exclusion_index


def _count(state: _State, src: str, key: str, n: int = 1) -> None:
    state.shard.stats.setdefault(src, _new_stats())[key] += n
    state.stats[src][key] += n


def _reject(state: _State, item: Item, frame: int | None, reason: str, values: dict) -> None:
    rec = {"source": item.source, "path": item.relpath, "reason": reason, "values": values}
    if frame is not None:
        rec["frame"] = frame
    state.rejects.write((json.dumps(rec, sort_keys=True) + "\n").encode())
    state.shard.rejected[reason] += 1
    state.rejected[reason] += 1
    _tally(state, item.source, "rejected", reason)
    if reason == "annotated":
        _tally(state, item.source, "annotations", "dropped")


def _tally(state: _State, src: str, key: str, value: str) -> None:
    state.shard.stats.setdefault(src, _new_stats())[key][value] += 1
    state.stats[src][key][value] += 1


def _keep(state: _State, item: Item, r: Cleaned) -> None:
    src, shard = item.source, state.shard
    meta = {"source": src, "path": item.relpath, "phash": f"{r.phash:064x}", **r.meta}
    anatomy = state.options[src].anatomy
    if anatomy:
        meta["anatomy"] = anatomy
    shard.samples.append((f"{state.written + len(shard.samples):08d}", r.data, meta))
    shard.hashes.append([r.pixel_sha1, f"{r.phash:064x}"])
    shard.kept[src] += 1
    state.kept[src] += 1
    _count(state, src, "kept")
    _tally(state, src, "crop", r.meta["crop_source"])
    action = state.options[src].annotations
    none = "none" if r.meta.get("grey_marks_searched", True) else "grey_unsearched"  # shards.annotations
    _tally(state, src, "annotations", none if not r.meta["annotations"] else ANNOTATION_TALLY[action])


def _judge_frame(state: _State, item: Item, multi: bool, f: FrameOutcome, copied: Found | None) -> None:
    """One frame: rejected with its reason (cleaning, a copy of an excluded image, cap, near-identical
    to the previous, duplicate) or kept."""
    src, r, settings = item.source, f.result, state.settings
    cap = state.options[src].max_images
    if not isinstance(r, Cleaned):
        _reject(state, item, f.frame, r.reason, r.values)
        return
    if copied is not None:
        name = state.exclusions.set_of(copied.ref).name
        v = copied.verdict
        values = {
            "set": name,
            "matched": copied.name,
            "inliers": v.inliers,
            "ncc": round(v.ncc, 3),
            "flipped": copied.flipped,
        }
        _reject(state, item, f.frame, "eval_overlap", values)
        state.shard.overlap[name] += 1
        state.overlap[name] += 1
        return
    if cap is not None and state.kept[src] >= cap:
        _reject(state, item, f.frame, "over_max_images", {})
        return
    group = (src, item.relpath if multi else os.path.dirname(item.relpath))
    if group == state.last_group and settings.clip_duplicate_distance >= 0:
        d = (r.phash ^ state.last_phash).bit_count()
        if d <= settings.clip_duplicate_distance:
            _reject(state, item, f.frame, "clip_near_duplicate", {"distance": d})
            return
    found = state.index.find(r.pixel_sha1, r.phash)
    if found:
        reason, idx, dist = found
        _reject(state, item, f.frame, reason, {"distance": dist, "kept": f"{idx:08d}"})
        return
    state.index.add(r.pixel_sha1, r.phash)
    state.last_group, state.last_phash = group, r.phash
    _keep(state, item, r)


def _judge_item(state: _State, item: Item, res: ItemOutcome, copies: dict[int, Found]) -> bool:
    """One item's frames, in order, into the shard being filled; False when skipped (its source was full)."""
    src = item.source
    cap = state.options[src].max_images
    if res.skipped or (cap is not None and state.kept[src] >= cap):
        state.consumed += 1
        _reject(state, item, None, "over_max_images", {"read": False})  # which recordings were never read
        return False
    candidates = [f for f in res.frames if isinstance(f.result, Cleaned)]
    if state.shard.samples and len(state.shard.samples) + len(candidates) > state.settings.samples_per_shard:
        _close_shard(state)  # keep a clip's frames in one shard
    state.consumed += 1
    _count(state, src, "files")
    _count(state, src, "clips", int(res.multi))
    _count(state, src, "frames", res.decoded)
    for pos, f in enumerate(res.frames):
        _judge_frame(state, item, res.multi, f, copies.get(pos))
    if len(state.shard.samples) >= state.settings.samples_per_shard:
        _close_shard(state)
    return True


def _close_shard(state: _State) -> None:
    """Write the shard being filled, then journal it (a crash in between only means it is written again)."""
    shard = state.shard
    name = SHARD_PATTERN.format(len(state.shards))
    state.written += len(shard.samples)
    data = tar_bytes(shard.samples, state.settings.codec.ext)
    _write_shard(state.out / name, data)
    state.rejects.flush()
    state.journal.append(
        {
            "shard": name,
            "samples": len(shard.samples),
            "bytes": len(data),
            "sha1": hashlib.sha1(data).hexdigest(),
            "consumed": state.consumed,
            "sources": dict(shard.kept),
            "rejected": dict(shard.rejected),
            "overlap": dict(shard.overlap),
            "stats": _plain_stats(shard.stats),
            "rejects_bytes": state.rejects.tell(),
            "last": [list(state.last_group) if state.last_group else None, f"{state.last_phash:064x}"],
            "hashes": shard.hashes,
        }
    )
    state.shards.append(name)
    state.shard_samples.append(len(shard.samples))
    state.shard_sources.append(dict(sorted(shard.kept.items())))  # as a resumed build reads it back from the journal
    state.shard = _Shard()


def _outcomes(state: _State, spool: Spool | None) -> Iterator[tuple[Item, ItemOutcome, dict[int, Found]]]:
    """Every remaining item with its outcome and its copies of excluded images, in input order: extracted
    now, or from the parts' spool (matched here, in the workers, against the exclusion index)."""
    workers, encoding = state.settings.workers, state.settings.codec.encoding
    if spool is None:
        extract = ExtractSettings(state.settings.size, state.settings.codec)
        return ordered_map(_process, _plan(state, extract), workers)
    spooled = replay(spool, state.sources, state.consumed)
    if not state.exclusion_index:
        return ((item, outcome, {}) for item, outcome in spooled)
    jobs = ((item, outcome, state.exclusion_index, encoding) for item, outcome in spooled)
    return ordered_map(_match_spooled, jobs, workers)


def _match_spooled(job: tuple[Item, ItemOutcome, str, str]) -> tuple[Item, ItemOutcome, dict[int, Found]]:
    item, outcome, index, encoding = job
    return item, outcome, _overlaps(outcome, index, encoding)


def _process_items(state: _State, progress: bool, spool: Spool | None = None) -> None:
    """Read and clean the remaining items in the workers (or replay what the parts did); judge and write
    their frames here, in input order."""
    total = sum(len(s) for s in state.sources)
    bar = progress_bar(total=total, initial=state.consumed, desc="build", unit="file", main=progress, logger=log)
    if state.consumed:
        log.info(f"resuming: {state.consumed} of {total} inputs judged, {len(state.shards)} shards written")
    t0, files, frames = time.perf_counter(), 0, 0  # this run's (a file may be a clip of many frames)

    def counts() -> dict:
        rate = frames / max(time.perf_counter() - t0, 1e-9)
        return {"kept": sum(state.kept.values()), "rejected": sum(state.rejected.values()), "frames_s": f"{rate:.1f}"}

    try:
        for item, res, copies in _outcomes(state, spool):
            judged = _judge_item(state, item, res, copies)
            files, frames = files + 1, frames + res.decoded
            bar.update(1)
            check_stop(f"{len(state.shards)} finished shards are journaled in {state.out}")
            if judged and bar.n % 64 == 0:  # the bar itself shows files/s
                bar.set_postfix(**counts())
        bar.set_postfix(**counts())  # the final counts
        if state.shard.samples:
            _close_shard(state)
    finally:
        state.rejects.close()
        bar.close()
    took = time.perf_counter() - t0
    if progress:
        log.info(
            f"built in {took:.1f} s: {files} files, {frames} frames decoded ({frames / max(took, 1e-9):.1f} frames/s)"
        )


def _manifest(state: _State, identity: dict) -> dict:
    sources, settings = state.sources, state.settings
    anatomy = {s.name: s.options.anatomy for s in sources}
    return {
        "format": BUILD_FORMAT,
        "encoding": settings.encoding,
        "num_samples": state.written,
        "sources": {s.name: state.kept.get(s.name, 0) for s in sources},
        "rejected": dict(sorted(state.rejected.items())),
        "annotations": dict(sorted(sum((d["annotations"] for d in state.stats.values()), Counter()).items())),
        "inputs": sum(len(s) for s in sources),
        "per_source": {
            name: {**d, "anatomy": anatomy[name]} if anatomy[name] else d
            for name, d in _plain_stats(state.stats).items()
        },
        "rejects": REJECTS,
        "shards": state.shards,
        "shard_samples": state.shard_samples,
        "shard_sources": state.shard_sources,
        "settings": settings.identity(),
        "source_specs": {s.name: s.spec for s in sources},
        "exclusions": [x.record(state.overlap.get(x.name, 0)) for x in state.exclusions.sets],
        "identity": identity,
    }


def _finish(state: _State, identity: dict) -> dict:
    """Rename the rejects into place and write the manifest, which marks the build complete."""
    partial, out = state.out / REJECTS_PARTIAL, state.out
    shutil.rmtree(out / EXCLUSION_INDEX, ignore_errors=True)
    if not state.shards:
        state.journal.remove()
        os.replace(partial, out / REJECTS)  # why, file by file
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(state.rejected.items()))
        raise UserError(f"--out {out}: every input was rejected ({rejected}); each file's reason is in {REJECTS}")
    manifest = _manifest(state, identity)
    os.replace(partial, out / REJECTS)
    write_json(out / MANIFEST, manifest)
    state.journal.remove()
    return manifest


def _prepare(
    sources: dict[str, str] | list[SourceConfig],
    out: Path,
    settings: BuildSettings,
    progress: bool,
    exclusions: list[ExclusionSet],
) -> tuple[list[Source], dict, dict | None]:
    """The opened sources, the build identity and the manifest of a finished build of it in ``out``."""
    settings.validate()
    opened = _open_sources(sources, out)
    identity = build_identity(opened, settings.identity(), exclusions)
    return opened, identity, _built(out, identity, progress)


def _index_exclusions(state: _State, progress: bool) -> None:
    """Index the exclusion sets' images in the output folder (kept there until the build finishes, so
    a resumed build reuses it: the sets are part of the identity, so they are the same)."""
    if not state.exclusions.sets:
        return
    folder = state.out / EXCLUSION_INDEX
    if not (folder / "names.json").is_file():
        partial = state.out / (EXCLUSION_INDEX + "-partial")
        shutil.rmtree(partial, ignore_errors=True)
        n = sum(len(x.images) for x in state.exclusions.sets)
        if progress:
            log.info(f"indexing {n} excluded images ({', '.join(x.name for x in state.exclusions.sets)})")
        state.exclusions.build_index(partial, state.settings.workers)
        os.replace(partial, folder)
    state.exclusion_index = str(folder)


def build_shards(
    sources: dict[str, str] | list[SourceConfig],
    out: str | Path,
    settings: BuildSettings | None = None,
    progress: bool = True,
    exclusions: list[ExclusionSet] | None = None,
) -> dict:
    """Build (or resume, or confirm) the shard set in ``out``; returns the manifest.

    ``sources`` is ``{name: path}`` (default options) or a catalogue's source list; ``exclusions``
    the evaluation images no sample may copy (:mod:`shards.exclusions`). The steps: open the sources
    and compute the build identity; return a finished build of the same identity; resume the journal
    (or start one); index the exclusion sets; judge every remaining item in input order while writing
    shards (the outcomes come from the parts' spool when :func:`build_part` ran for every part); write
    the rejects and the manifest.
    """
    settings, out = settings or BuildSettings(), Path(out)
    exclusions = list(exclusions or [])
    opened, identity, manifest = _prepare(sources, out, settings, progress, exclusions)
    if manifest is not None:
        return manifest
    lock, fresh = out / LOCK, not (out / LOCK).exists()
    with exclusive(lock, f"--out {out}"):
        try:
            manifest = _build_locked(out, settings, opened, identity, exclusions, progress)
        except UserError:
            if fresh and not Journal(out).exists():
                lock.unlink()  # refused before starting: leave the folder as it was
            raise
        lock.unlink()  # a finished folder holds the build's files only
    return manifest


def _build_locked(
    out: Path,
    settings: BuildSettings,
    opened: list[Source],
    identity: dict,
    exclusions: list[ExclusionSet],
    progress: bool,
) -> dict:
    manifest = _built(out, identity, progress=False)  # finished by the process that held the lock before
    if manifest is not None:
        return manifest
    stamps = source_stamps(opened)
    spool = finished_spool(out, identity, stamps)
    journal, records = _journal(out, identity, stamps)
    state = _restore(out, settings, opened, exclusions, journal, records)
    _index_exclusions(state, progress)
    _process_items(state, progress, spool)
    manifest = _finish(state, identity)
    if spool is not None:
        spool.remove()
    return manifest


def build_part(
    sources: dict[str, str] | list[SourceConfig],
    out: str | Path,
    settings: BuildSettings,
    part: Part,
    progress: bool = True,
    exclusions: Sequence[ExclusionSet] = (),
) -> dict:
    """Read, clean and encode ``part``'s slice of the inputs into the spool of ``out``
    (:mod:`shards.build_parts`); :func:`build_shards` merges once every part is done, matching the
    frames against ``exclusions`` there. A summary."""
    out = Path(out)
    opened, identity, manifest = _prepare(sources, out, settings, progress, list(exclusions))
    if manifest is not None:
        return {"part": str(part), "inputs": 0, "extracted": 0, "built": True}
    extract = ExtractSettings(settings.size, settings.codec)
    _refuse_part_beside_build(out, part)
    _unfinished(out, identity, source_stamps(opened))  # checked before the work, as a build without --part does
    spool = Spool(out)
    had_spool = spool.root.exists()
    with exclusive(spool.lock(part), f"--out {out} --part {part}"):
        try:  # again, holding the part's lock: a build that started meanwhile sees this part running
            _refuse_part_beside_build(out, part)
        except UserError:
            spool.lock(part).unlink()
            if not had_spool:
                with contextlib.suppress(OSError):  # another part may have started meanwhile
                    spool.root.rmdir()
            raise
        return run_part(out, identity, opened, extract, settings.workers, part, progress)


def _refuse_part_beside_build(out: Path, part: Part) -> None:
    pid = holder(out / LOCK)
    if pid is not None:
        raise UserError(
            f"--out {out} --part {part}: a build without --part (pid {pid}) is writing to it; "
            "parts run before that merge, not beside it"
        )


def summary_line(manifest: dict) -> str:
    rej = ", ".join(f"{k} {v}" for k, v in manifest["rejected"].items()) or "none"
    src = ", ".join(f"{k} {v}" for k, v in manifest["sources"].items())
    n, shards = manifest["num_samples"], len(manifest["shards"])
    line = f"{n} samples in {shards} shards | kept per source: {src} | rejected: {rej}"
    sets = manifest.get("exclusions", [])
    if sets:
        line += " | excluded: " + ", ".join(f"{x['name']} ({x['images']} images) {x['frames_removed']}" for x in sets)
    return line


def part_line(summary: dict, out: str) -> str:
    if summary.get("built"):
        return f"part {summary['part']}: {out} is built already; nothing to do"
    return (
        f"part {summary['part']}: {summary['inputs']} inputs cleaned and spooled ({summary['extracted']} now); "
        "when every part is done, the same command without --part merges them"
    )


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = CommandParser(prog="python -m shards.build", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME=DIR|NAME=GLOB|NAME=hf:ID[:SPLIT]",
        help="a source dataset (repeat); folders are scanned recursively, a glob (/data/**/*.nii.gz) picks files",
    )
    ap.add_argument("--corpus", metavar="YAML", help="a catalogue of sources with per-source options (see docs)")
    add_exclusion_argument(ap, "--exclude", "evaluation images no sample may copy; copies are rejected as eval_overlap")
    ap.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    d = BuildSettings()
    ap.add_argument("--size", type=int, default=d.size, help="output side in pixels (default %(default)s)")
    ap.add_argument(
        "--samples-per-shard", type=int, default=d.samples_per_shard, help="samples per shard (default 1000)"
    )
    ap.add_argument("--workers", type=int, default=d.workers, help="processes (default: all cores)")
    ap.add_argument(
        "--near-dup-distance",
        type=int,
        default=d.near_duplicate_distance,
        help="pHash Hamming distance counted as a near duplicate (-1: exact only)",
    )
    ap.add_argument(
        "--clip-dup-distance",
        type=int,
        default=d.clip_duplicate_distance,
        help="within a clip, pHash distance to the previous kept frame dropped as near-identical (-1: off)",
    )
    ap.add_argument("--png-level", type=int, default=d.png_level, choices=range(10), metavar="0-9")
    ap.add_argument(
        "--encoding",
        default=d.encoding,
        choices=ENCODINGS,
        help="sample image format: png (lossless), jpeg (smallest), raw (uint8 .npy, no decode); default %(default)s",
    )
    ap.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="JPEG quality (default %(default)s)")
    ap.add_argument(
        "--annotations",
        choices=get_args(get_type_hints(SourceOptions)["annotations"]),
        help="annotations inside the scan area: keep, inpaint or drop the frame (default: inpaint); "
        "for the --source sources and the catalogue sources that do not set it",
    )
    ap.add_argument(
        "--part",
        metavar="I/N",
        help="only read and clean the I-th (from 0) of N slices of the inputs, for N processes or nodes at once; "
        "afterwards the command without --part merges (docs/cluster.md)",
    )
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    _main(args)


def _main(args: argparse.Namespace) -> None:
    if "://" in args.out:
        raise UserError(f"--out {args.out}: shards are written to a local folder (copy them to object storage after)")
    corpus = load_corpus(args.corpus) if args.corpus else None
    configs: list[SourceConfig] = corpus.sources if corpus else []
    if args.annotations:
        configs = [with_default(c, "annotations", args.annotations) for c in configs]
    names = {c.name for c in configs}
    for s in args.source:
        name, spec = parse_source(s)
        if name in names:
            raise UserError(f"--source {s}: source name '{name}' given twice")
        names.add(name)
        configs.append(
            SourceConfig(name=name, path=spec, options=SourceOptions(annotations=args.annotations or "inpaint"))
        )
    if not configs:
        raise UserError("no source given: use --source NAME=PATH (repeat) or --corpus corpus.yaml")
    settings = BuildSettings(
        size=args.size,
        samples_per_shard=args.samples_per_shard,
        workers=args.workers,
        near_duplicate_distance=args.near_dup_distance,
        clip_duplicate_distance=args.clip_dup_distance,
        png_level=args.png_level,
        encoding=args.encoding,
        jpeg_quality=args.jpeg_quality,
    )
    listed = corpus.exclude if corpus else []
    exclusions = load_exclusions([*listed, *args.exclude], [f"--corpus {args.corpus}: exclude"] * len(listed))
    # SIGTERM/SIGINT/SIGUSR1: a part stops after the current file (its chunks kept), the merge after
    # the current file too (its finished shards kept); the same command continues.
    with StopRequest():
        if args.part is not None:  # --part "" (an empty shell variable) is refused, not a whole build
            part = Part.parse(args.part, "--part")
            done = build_part(configs, args.out, settings, part, progress=not args.quiet, exclusions=exclusions)
            print(part_line(done, args.out))
            return
        manifest = build_shards(configs, args.out, settings, progress=not args.quiet, exclusions=exclusions)
    print(summary_line(manifest))


if __name__ == "__main__":
    main()
