"""Build cleaned, fixed-resolution WebDataset shards from image folders and datasets.

    python -m shards.build --source breast=/data/busi --source thyroid=hf:/data/ddti_ds \
        --out /data/shards --size 256 --workers 8

Every input goes through :func:`shards.clean.clean_image` in worker processes; results come back in
input order, are de-duplicated across all sources (:mod:`shards.dedup`) and written as
``shard-000000.tar``, ... each holding ``<key>.png`` (8-bit grayscale) and ``<key>.json`` (source,
original relative path, original size and mode, SHA-1 of the original bytes, crop box). Output is
byte-identical for any ``--workers``; memory holds one shard, never the corpus. Shards are written
under a temporary name and renamed; ``.build-journal.jsonl`` lets an interrupted build resume
without redoing finished shards; ``manifest.json`` is written last and marks the build complete.
"""

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

from shards.clean import Cleaned, Rejected, clean_image
from shards.decode import IMAGE_EXTENSIONS
from shards.dedup import DuplicateIndex
from shards.journal import Journal
from shards.manifest import MANIFEST
from shards.ordered_pool import ordered_map
from shards.sources import Item, Source, open_source, parse_source
from sonodistill.atomic import write_json
from sonodistill.errors import UserError, cli_main
from sonodistill.logs import progress as progress_bar

log = logging.getLogger(__name__)

BUILD_FORMAT = 1
SHARD_PATTERN = "shard-{:06d}.tar"


@dataclass
class BuildSettings:
    size: int = 256  # output side in pixels (square, see shards.clean's aspect rule)
    samples_per_shard: int = 1000
    workers: int = max(1, (os.cpu_count() or 1))
    near_duplicate_distance: int = 16  # max Hamming distance of 256-bit pHashes; -1: exact only
    png_level: int = 1  # zlib level: 1 decodes as fast as 9 and builds ~3x faster

    def identity(self) -> dict:
        """The settings that change the output (the worker count does not)."""
        d = asdict(self)
        d.pop("workers")
        d["format"] = BUILD_FORMAT
        return d

    def validate(self) -> None:
        if self.size < 32:
            raise UserError(f"--size {self.size}: expected at least 32")
        if self.samples_per_shard < 1:
            raise UserError(f"--samples-per-shard {self.samples_per_shard}: expected at least 1")
        if self.workers < 1:
            raise UserError(f"--workers {self.workers}: expected at least 1")


def _process(args: tuple[Item, int, int]) -> tuple[Item, Cleaned | Rejected]:
    item, size, level = args
    if item.path is not None and not item.relpath.lower().endswith(IMAGE_EXTENSIONS):
        return item, Rejected("not_image")
    try:
        data = item.read()
    except OSError:
        return item, Rejected("unreadable")
    return item, clean_image(data, size, level)


def _tar_bytes(samples: list[tuple[str, bytes, dict]]) -> bytes:
    buf = io.BytesIO()
    # Fixed mtime/owner so the same samples always give the same bytes.
    with wds.TarWriter(buf, mtime=0, user="sonodistill", group="sonodistill", encoder=False) as tw:
        for key, png, meta in samples:
            tw.write({"__key__": key, "png": png, "json": json.dumps(meta, sort_keys=True).encode()})
    return buf.getvalue()


def _write_shard(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _identity(sources: list[Source], settings: BuildSettings) -> dict:
    return {
        "settings": settings.identity(),
        "sources": [{"name": s.name, "spec": s.spec, "items": len(s), "fingerprint": s.fingerprint()} for s in sources],
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
    return "the input files differ"


def _all_items(sources: list[Source], start: int) -> Iterator[Item]:
    for s in sources:
        n = len(s)
        if start >= n:
            start -= n
            continue
        yield from s.items(start)
        start = 0


def build_shards(
    sources: dict[str, str], out: str | Path, settings: BuildSettings | None = None, progress: bool = True
) -> dict:
    """Build (or resume, or confirm) the shard set in ``out``; returns the manifest."""
    settings = settings or BuildSettings()
    settings.validate()
    if not sources:
        raise UserError("no --source given")
    opened = [open_source(name, spec) for name, spec in sources.items()]
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
        foreign = [p.name for p in out.iterdir() if not p.name.endswith(".tmp")]
        if foreign:
            raise UserError(f"--out {out}: not empty and not a shard build (found {foreign[0]}); use an empty folder")
        journal.start(identity)
    for tmp in out.glob("*.tmp"):
        tmp.unlink()

    index = DuplicateIndex(settings.near_duplicate_distance)
    kept: Counter = Counter()
    rejected: Counter = Counter()
    shard_names: list[str] = []
    shard_sizes: list[int] = []
    for r in records:
        for sha, ph in r["hashes"]:
            index.add(sha, int(ph, 16))
        kept.update(r["sources"])
        rejected.update(r["rejected"])
        shard_names.append(r["shard"])
        shard_sizes.append(r["samples"])
    consumed = records[-1]["consumed"] if records else 0
    total_items = sum(len(s) for s in opened)
    n_done = sum(shard_sizes)

    buffer: list[tuple[str, bytes, dict]] = []
    hashes: list[list[str]] = []
    kept_delta: Counter = Counter()
    rej_delta: Counter = Counter()
    bar = progress_bar(total=total_items, initial=consumed, desc="build", unit="img", main=progress, logger=log)
    t0, n0 = time.time(), consumed

    def flush() -> None:
        nonlocal buffer, hashes, kept_delta, rej_delta
        name = SHARD_PATTERN.format(len(shard_names))
        data = _tar_bytes(buffer)
        _write_shard(out / name, data)
        journal.append(
            {
                "shard": name,
                "samples": len(buffer),
                "bytes": len(data),
                "sha1": hashlib.sha1(data).hexdigest(),
                "consumed": consumed,
                "sources": dict(kept_delta),
                "rejected": dict(rej_delta),
                "hashes": hashes,
            }
        )
        shard_names.append(name)
        shard_sizes.append(len(buffer))
        buffer, hashes, kept_delta, rej_delta = [], [], Counter(), Counter()

    work = ((it, settings.size, settings.png_level) for it in _all_items(opened, consumed))
    for item, res in ordered_map(_process, work, settings.workers):
        consumed += 1
        bar.update(1)
        if isinstance(res, Cleaned):
            dup = index.check(res.pixel_sha1, res.phash)
            if dup:
                rej_delta[dup] += 1
                rejected[dup] += 1
            else:
                index.add(res.pixel_sha1, res.phash)
                key = f"{n_done + len(buffer):08d}"
                meta = {"source": item.source, "path": item.relpath, "phash": f"{res.phash:064x}", **res.meta}
                buffer.append((key, res.png, meta))
                hashes.append([res.pixel_sha1, f"{res.phash:064x}"])
                kept_delta[item.source] += 1
                kept[item.source] += 1
                if len(buffer) == settings.samples_per_shard:
                    n_done += len(buffer)
                    flush()
        else:
            rej_delta[res.reason] += 1
            rejected[res.reason] += 1
        if bar.n % 64 == 0:
            rate = (consumed - n0) / max(time.time() - t0, 1e-9)
            bar.set_postfix(kept=sum(kept.values()), rejected=sum(rejected.values()), img_s=f"{rate:.0f}")
    if buffer:
        n_done += len(buffer)
        flush()
    bar.close()

    manifest = {
        "format": BUILD_FORMAT,
        "num_samples": n_done,
        "sources": {s.name: kept.get(s.name, 0) for s in opened},
        "rejected": dict(sorted(rejected.items())),
        "inputs": total_items,
        "shards": shard_names,
        "shard_samples": shard_sizes,
        "settings": settings.identity(),
        "source_specs": {s.name: s.spec for s in opened},
        "identity": identity,
    }
    if not shard_names:
        journal.remove()
        raise UserError(
            f"--out {out}: every input was rejected ({', '.join(f'{k}={v}' for k, v in sorted(rejected.items()))})"
        )
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
    ap.add_argument("--png-level", type=int, default=d.png_level, choices=range(10), metavar="0-9")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    _main(args)


@cli_main
def _main(args: argparse.Namespace) -> None:
    sources: dict[str, str] = {}
    for s in args.source:
        name, spec = parse_source(s)
        if name in sources:
            raise UserError(f"--source {s}: source name '{name}' given twice")
        sources[name] = spec
    settings = BuildSettings(
        size=args.size,
        samples_per_shard=args.samples_per_shard,
        workers=args.workers,
        near_duplicate_distance=args.near_dup_distance,
        png_level=args.png_level,
    )
    manifest = build_shards(sources, args.out, settings, progress=not args.quiet)
    print(summary_line(manifest))


if __name__ == "__main__":
    main()
