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
is written last and marks the build complete."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import webdataset as wds

from shards.catalogue import SourceConfig, load_catalogue
from shards.clean import Cleaned
from shards.codec import ENCODINGS, JPEG_QUALITY, Codec
from shards.dedup import DuplicateIndex
from shards.extract import ExtractSettings, ItemOutcome, extract_item
from shards.journal import Journal
from shards.manifest import MANIFEST
from shards.options import SourceOptions
from shards.ordered_pool import ordered_map
from shards.sources import Item, Source, open_source, parse_source
from sonodistill.atomic import write_json
from sonodistill.errors import UserError, cli_main
from sonodistill.logs import progress as progress_bar

log = logging.getLogger(__name__)

BUILD_FORMAT = 2
SHARD_PATTERN = "shard-{:06d}.tar"
REJECTS = "rejects.jsonl"
REJECTS_PARTIAL = ".rejects-partial.jsonl"


@dataclass
class BuildSettings:
    size: int = 256  # output side in pixels (square, see shards.clean's aspect rule)
    samples_per_shard: int = 1000
    workers: int = max(1, (os.cpu_count() or 1))
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
        if self.size < 32:
            raise UserError(f"--size {self.size}: expected at least 32")
        if self.samples_per_shard < 1:
            raise UserError(f"--samples-per-shard {self.samples_per_shard}: expected at least 1")
        if self.workers < 1:
            raise UserError(f"--workers {self.workers}: expected at least 1")
        if self.encoding not in ENCODINGS:
            raise UserError(f"--encoding {self.encoding}: expected one of {', '.join(ENCODINGS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"--jpeg-quality {self.jpeg_quality}: expected 1-100")


def _process(args: tuple[Item, SourceOptions, ExtractSettings, bool]) -> tuple[Item, ItemOutcome]:
    item, opts, settings, skip = args
    if skip:
        return item, ItemOutcome(skipped=True)
    return item, extract_item(item, opts, settings)


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


def _identity(opened: list[Source], settings: BuildSettings) -> dict:
    return {
        "settings": settings.identity(),
        "sources": [
            {
                "name": s.name,
                "spec": s.spec,
                "items": len(s),
                "fingerprint": s.fingerprint(),
                "options": s.options.identity(),
            }
            for s in opened
        ],
    }


def _describe_difference(old: dict, new: dict) -> str:
    if old.get("settings") != new.get("settings"):
        keys = [k for k in new["settings"] if old.get("settings", {}).get(k) != new["settings"][k]]
        return (
            "settings differ ("
            + ", ".join(f"{k}: {old.get('settings', {}).get(k)} -> {new['settings'][k]}" for k in keys)
            + ")"
        )
    oldn = [s["name"] for s in old.get("sources", [])]
    newn = [s["name"] for s in new["sources"]]
    if oldn != newn:
        return f"sources differ ({', '.join(oldn)} -> {', '.join(newn)})"
    for o, n in zip(old.get("sources", []), new["sources"]):
        if o.get("options") != n.get("options"):
            return f"options of source '{n['name']}' differ"
    return "the input files differ"


def _new_stats() -> dict:
    return {"files": 0, "clips": 0, "frames": 0, "kept": 0, "rejected": Counter(), "crop": Counter()}


def _merge_stats(into: dict, delta: dict) -> None:
    for src, d in delta.items():
        t = into.setdefault(src, _new_stats())
        for k in ("files", "clips", "frames", "kept"):
            t[k] += d.get(k, 0)
        t["rejected"].update(d.get("rejected", {}))
        t["crop"].update(d.get("crop", {}))


def _plain_stats(stats: dict) -> dict:
    return {
        src: {**{k: d[k] for k in ("files", "clips", "frames", "kept")},
              "rejected": dict(sorted(d["rejected"].items())), "crop": dict(sorted(d["crop"].items()))}
        for src, d in stats.items()
    }  # fmt: skip


def _resolve(sources: dict[str, str] | list[SourceConfig]) -> list[SourceConfig]:
    if isinstance(sources, dict):
        return [SourceConfig(name=k, path=v) for k, v in sources.items()]
    return list(sources)


def build_shards(
    sources: dict[str, str] | list[SourceConfig],
    out: str | Path,
    settings: BuildSettings | None = None,
    progress: bool = True,
) -> dict:
    """Build (or resume, or confirm) the shard set in ``out``; returns the manifest.

    ``sources`` is ``{name: path}`` (default reading options) or a catalogue's source list.
    """
    settings = settings or BuildSettings()
    settings.validate()
    configs = _resolve(sources)
    if not configs:
        raise UserError("no --source given")
    opened = [open_source(c.name, c.path, c.options) for c in configs]
    identity = _identity(opened, settings)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    manifest_path = out / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("identity") != identity:
            raise UserError(
                f"--out {out}: holds a different build "
                f"({_describe_difference(manifest.get('identity', {}), identity)}); use another --out or delete it"
            )
        if progress:
            log.info(f"{out}: already built ({manifest['num_samples']} samples); nothing to do")
        return manifest

    journal = Journal(out)
    records: list[dict] = []
    if journal.exists():
        old, records = journal.read()
        if old != identity:
            raise UserError(
                f"--out {out}: holds a different, unfinished build ({_describe_difference(old, identity)}); "
                "use another --out or delete it"
            )
        # Keep only records whose shard file is intact.
        for i, r in enumerate(records):
            p = out / r["shard"]
            if not p.exists() or p.stat().st_size != r["bytes"]:
                records = records[:i]
                journal.rewrite(identity, records)
                break
    else:
        foreign = [p.name for p in out.iterdir() if not p.name.endswith(".tmp") and p.name != REJECTS_PARTIAL]
        if foreign:
            raise UserError(f"--out {out}: not empty and not a shard build (found {foreign[0]}); use an empty folder")
        journal.start(identity)
    for tmp in out.glob("*.tmp"):
        tmp.unlink()

    index = DuplicateIndex(settings.near_duplicate_distance)
    kept: Counter = Counter()
    rejected: Counter = Counter()
    stats: dict = {o.name: _new_stats() for o in opened}
    shard_names: list[str] = []
    shard_sizes: list[int] = []
    shard_sources: list[dict] = []  # kept samples per source in each shard (source balance)
    for r in records:
        for sha, ph in r["hashes"]:
            index.add(sha, int(ph, 16))
        kept.update(r["sources"])
        rejected.update(r["rejected"])
        _merge_stats(stats, r["stats"])
        shard_names.append(r["shard"])
        shard_sizes.append(r["samples"])
        shard_sources.append(r["sources"])
    consumed = records[-1]["consumed"] if records else 0
    # rejects.jsonl grows as the build goes; on resume it is cut back to the last finished shard.
    partial = out / REJECTS_PARTIAL
    with open(partial, "ab") as fh:
        fh.truncate(records[-1]["rejects_bytes"] if records else 0)
    rejects_fh = open(partial, "ab")  # noqa: SIM115 (closed below, also on error)
    total_items = sum(len(o) for o in opened)
    n_done = sum(shard_sizes)

    buffer: list[tuple[str, bytes, dict]] = []
    hashes: list[list[str]] = []
    kept_delta: Counter = Counter()
    rej_delta: Counter = Counter()
    stats_delta: dict = {}
    bar = progress_bar(total=total_items, initial=consumed, desc="build", unit="file", main=progress, logger=log)
    t0, n0 = time.time(), consumed
    extract = ExtractSettings(settings.size, settings.codec)
    last: dict = {"group": None, "phash": 0}  # the previous kept frame's clip (or folder) and hash
    if records:
        group, ph = records[-1]["last"]
        last.update(group=tuple(group) if group else None, phash=int(ph, 16))
    caps = {o.name: o.options.max_images for o in opened}
    anatomy = {o.name: o.options.anatomy for o in opened}

    def flush(done_items: int) -> None:
        nonlocal buffer, hashes, kept_delta, rej_delta, stats_delta, n_done
        n_done += len(buffer)
        name = SHARD_PATTERN.format(len(shard_names))
        data = tar_bytes(buffer, settings.codec.ext)
        _write_shard(out / name, data)
        rejects_fh.flush()
        journal.append(
            {
                "shard": name,
                "samples": len(buffer),
                "bytes": len(data),
                "sha1": hashlib.sha1(data).hexdigest(),
                "consumed": done_items,
                "sources": dict(kept_delta),
                "rejected": dict(rej_delta),
                "stats": _plain_stats(stats_delta),
                "rejects_bytes": rejects_fh.tell(),
                "last": [list(last["group"]) if last["group"] else None, f"{last['phash']:064x}"],
                "hashes": hashes,
            }
        )
        shard_names.append(name)
        shard_sizes.append(len(buffer))
        shard_sources.append(dict(kept_delta))
        buffer, hashes, kept_delta, rej_delta, stats_delta = [], [], Counter(), Counter(), {}

    def reject(item: Item, frame: int | None, reason: str, values: dict) -> None:
        rec = {"source": item.source, "path": item.relpath, "reason": reason, "values": values}
        if frame is not None:
            rec["frame"] = frame
        rejects_fh.write((json.dumps(rec, sort_keys=True) + "\n").encode())
        rej_delta[reason] += 1
        rejected[reason] += 1
        stats_delta.setdefault(item.source, _new_stats())["rejected"][reason] += 1
        stats[item.source]["rejected"][reason] += 1

    def items() -> Iterator[tuple[Item, SourceOptions, ExtractSettings, bool]]:
        start = consumed
        for o in opened:
            n = len(o)
            if start >= n:
                start -= n
                continue
            for it in o.items(start):
                # Past its cap a source's items are not read. Safe for determinism: an item pulled
                # after the cap was reached (in input order) lies past the point where it was reached.
                cap = caps[it.source]
                yield it, o.options, extract, cap is not None and kept[it.source] >= cap
            start = 0

    def count(src: str, key: str, n: int = 1) -> None:
        stats_delta.setdefault(src, _new_stats())[key] += n
        stats[src][key] += n

    try:
        for item, res in ordered_map(_process, items(), settings.workers):
            src = item.source
            cap = caps[src]
            if res.skipped or (cap is not None and kept[src] >= cap):
                consumed += 1
                bar.update(1)
                continue
            candidates = [f for f in res.frames if isinstance(f.result, Cleaned)]
            if buffer and len(buffer) + len(candidates) > settings.samples_per_shard:
                flush(consumed)  # keep a clip's frames in one shard
            consumed += 1
            count(src, "files")
            count(src, "clips", int(res.multi))
            count(src, "frames", res.decoded)
            for f in res.frames:
                r = f.result
                if not isinstance(r, Cleaned):
                    reject(item, f.frame, r.reason, r.values)
                    continue
                if cap is not None and kept[src] >= cap:
                    reject(item, f.frame, "over_max_images", {})
                    continue
                group = (src, item.relpath if res.multi else os.path.dirname(item.relpath))
                if group == last["group"] and settings.clip_duplicate_distance >= 0:
                    d = (r.phash ^ last["phash"]).bit_count()
                    if d <= settings.clip_duplicate_distance:
                        reject(item, f.frame, "clip_near_duplicate", {"distance": d})
                        continue
                found = index.find(r.pixel_sha1, r.phash)
                if found:
                    reason, idx, dist = found
                    reject(item, f.frame, reason, {"distance": dist, "kept": f"{idx:08d}"})
                    continue
                index.add(r.pixel_sha1, r.phash)
                last["group"], last["phash"] = group, r.phash
                key = f"{n_done + len(buffer):08d}"
                meta = {"source": src, "path": item.relpath, "phash": f"{r.phash:064x}", **r.meta}
                if anatomy[src]:
                    meta["anatomy"] = anatomy[src]
                buffer.append((key, r.data, meta))
                hashes.append([r.pixel_sha1, f"{r.phash:064x}"])
                kept_delta[src] += 1
                kept[src] += 1
                count(src, "kept")
                stats_delta[src]["crop"][r.meta["crop_source"]] += 1
                stats[src]["crop"][r.meta["crop_source"]] += 1
            if len(buffer) >= settings.samples_per_shard:
                flush(consumed)
            bar.update(1)
            if bar.n % 64 == 0:
                rate = (consumed - n0) / max(time.time() - t0, 1e-9)
                bar.set_postfix(kept=sum(kept.values()), rejected=sum(rejected.values()), files_s=f"{rate:.0f}")
        if buffer:
            flush(consumed)
    finally:
        rejects_fh.close()
        bar.close()

    manifest = {
        "format": BUILD_FORMAT,
        "encoding": settings.encoding,
        "num_samples": n_done,
        "sources": {o.name: kept.get(o.name, 0) for o in opened},
        "rejected": dict(sorted(rejected.items())),
        "inputs": total_items,
        "per_source": {
            name: {**d, "anatomy": anatomy[name]} if anatomy[name] else d for name, d in _plain_stats(stats).items()
        },
        "rejects": REJECTS,
        "shards": shard_names,
        "shard_samples": shard_sizes,
        "shard_sources": shard_sources,
        "settings": settings.identity(),
        "source_specs": {o.name: o.spec for o in opened},
        "identity": identity,
    }
    if not shard_names:
        journal.remove()
        partial.unlink(missing_ok=True)
        raise UserError(
            f"--out {out}: every input was rejected ({', '.join(f'{k}={v}' for k, v in sorted(rejected.items()))})"
        )
    os.replace(partial, out / REJECTS)
    write_json(manifest_path, manifest)
    journal.remove()
    return manifest


def summary_line(manifest: dict) -> str:
    rej = ", ".join(f"{k} {v}" for k, v in manifest["rejected"].items()) or "none"
    src = ", ".join(f"{k} {v}" for k, v in manifest["sources"].items())
    n, shards = manifest["num_samples"], len(manifest["shards"])
    return f"{n} samples in {shards} shards | kept per source: {src} | rejected: {rej}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m shards.build", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME=DIR|NAME=hf:ID[:SPLIT]",
        help="a source dataset (repeat); folders are scanned recursively",
    )
    ap.add_argument("--corpus", metavar="YAML", help="a catalogue of sources with per-source options (see docs)")
    ap.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    d = BuildSettings()
    ap.add_argument("--size", type=int, default=d.size, help="output side in pixels (default %(default)s)")
    ap.add_argument("--samples-per-shard", type=int, default=d.samples_per_shard)
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
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    _main(args)


@cli_main
def _main(args: argparse.Namespace) -> None:
    configs: list[SourceConfig] = load_catalogue(args.corpus) if args.corpus else []
    names = {c.name for c in configs}
    for s in args.source:
        name, spec = parse_source(s)
        if name in names:
            raise UserError(f"--source {s}: source name '{name}' given twice")
        names.add(name)
        configs.append(SourceConfig(name=name, path=spec))
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
    manifest = build_shards(configs, args.out, settings, progress=not args.quiet)
    print(summary_line(manifest))


if __name__ == "__main__":
    main()
