"""Summarise a shard set, draw a contact sheet of random samples per source, and of rejects per reason.

    python -m shards.inspect /data/shards --sheet /data/shards_sheet.png [--per-source 8] [--seed 0] [--boxes]
    python -m shards.inspect /data/shards --rejects /data/rejects_sheet.png [--per-reason 8]
    python -m shards.inspect https://host/us-shards        # a remote set (s3://, gs:// too)
    python -m shards.inspect /data/shards --overlap runs/busi/splits.json [--overlap-sheet overlap.png]

Prints the manifest summary (samples, shards, encoding, kept per source, rejections by reason). The sheet
has one row per source dataset; shards are visited in a seeded random order and reading stops as
soon as every row is full, so it stays cheap on a large corpus (only the chosen images are decoded).
With ``--boxes`` each sample shows the annotations found in it (the ``annotations`` boxes of its JSON,
removed or kept as its source said), outlined in colour.
The rejects sheet has one row per rejection reason: a seeded random choice of ``rejects.jsonl``
lines, each re-read from its source file (the frame as decoded, before cleaning) and captioned
with the rule's measured values, so the decisions can be audited by eye. ``--overlap`` counts the
samples that copy an evaluation image (a splits.json or a folder, as ``shards.build --exclude``
takes it; :mod:`shards.overlap`) and draws the matched pairs.
"""

from __future__ import annotations

import json
import logging
import random
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shards.codec import CorruptSample, decode_gray
from shards.exclusions import add_argument as add_exclusion_argument
from shards.manifest import encoding_of, resolve_shards
from shards.read_guard import Coverage
from shards.shardfile import ShardUnreadable, open_shard
from sonodistill.cli_parser import CommandParser
from sonodistill.errors import UserError, cli_main
from sonodistill.outdir import make_writable_folder

log = logging.getLogger(__name__)


def summary(manifest: dict) -> str:
    lines = [
        f"samples: {manifest['num_samples']} in {len(manifest['shards'])} shards "
        f"(from {manifest.get('inputs', '?')} inputs, size {manifest['settings'].get('size')} px, "
        f"{encoding_of(manifest)})"
    ]
    width = max(map(len, [*manifest["sources"], *manifest["rejected"]]), default=0)
    lines.append("kept per source:")
    lines += [f"  {k:<{width}}  {v}" for k, v in manifest["sources"].items()]
    lines.append("rejected:" + ("" if manifest["rejected"] else " none"))
    lines += [f"  {k:<{width}}  {v}" for k, v in manifest["rejected"].items()]
    return "\n".join(lines)


def pick_samples(
    urls: list[str], sources: list[str], per_source: int, seed: int, coverage: Coverage | None = None
) -> dict[str, list[tuple[np.ndarray, list[dict]]]]:
    """Up to ``per_source`` (decoded frame, its annotations) per source, from shards visited in a
    seeded random order (failures tallied in ``coverage``, which stops when shards keep failing)."""
    order = list(range(len(urls)))
    random.Random(seed).shuffle(order)
    coverage = coverage if coverage is not None else Coverage("shards")
    picked: dict[str, list[tuple[np.ndarray, list[dict]]]] = {s: [] for s in sources}
    for u in order:
        try:
            shard = open_shard(urls[u])
        except ShardUnreadable as exc:
            coverage.shard(u, urls[u], 0, str(exc))
            continue
        corrupt = 0
        for i in range(len(shard)):
            meta = shard.meta(i)
            row = picked.setdefault(str(meta.get("source", "")), [])
            encoding = shard.index.encoding(i)
            if len(row) < per_source and encoding is not None:
                try:
                    row.append((decode_gray(shard.image(i), encoding), meta.get("annotations", [])))
                except CorruptSample:
                    corrupt += 1
        coverage.shard(u, urls[u], len(shard) - corrupt, None, shard.index.complete, corrupt)
        if all(len(v) >= per_source for v in picked.values()):
            break
    return picked


def with_boxes(gray: np.ndarray, annotations: list[dict], tile: int) -> np.ndarray:
    """The frame at ``tile`` px, RGB, with each annotation box outlined (colour by kind)."""
    img = Image.fromarray(gray).convert("RGB")
    scale = tile / gray.shape[1]
    img = img.resize((tile, tile))
    draw = ImageDraw.Draw(img)
    for a in annotations:
        x0, y0, x1, y1 = (v * scale for v in a["box"])
        draw.rectangle([x0 - 1, y0 - 1, x1, y1], outline=BOX_COLOURS.get(a["kind"], (255, 0, 0)))
    return np.asarray(img)


BOX_COLOURS = {
    "caliper": (255, 64, 64),
    "dotted_line": (255, 160, 0),
    "text": (64, 160, 255),
    "arrow": (255, 0, 255),
    "body_mark": (0, 220, 120),
    "line": (255, 255, 0),
}


def contact_sheet(
    picked: dict[str, list[tuple[np.ndarray, list[dict]]]], out: str | Path, tile: int = 128, boxes: bool = False
) -> None:
    from sonodistill.figures import pyplot, save_figure

    plt = pyplot()

    rows = [k for k, v in picked.items() if v]
    if not rows:
        raise UserError(f"--sheet {out}: no sample could be read for the contact sheet")
    cols = max(len(picked[k]) for k in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 1.4, len(rows) * 1.5), squeeze=False)
    for r, src in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(picked[src]):
                gray, annotations = picked[src][c]
                if boxes:
                    ax.imshow(with_boxes(gray, annotations, tile))
                else:
                    ax.imshow(np.asarray(Image.fromarray(gray).resize((tile, tile))), cmap="gray", vmin=0, vmax=255)
            if c == 0:
                ax.set_title(src, loc="left", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)


# The measured values that decided each reason (the rest stay in rejects.jsonl).
SHOWN = {
    "colour": ["colour_fraction", "colour_outside"],
    "no_tissue": ["lit_fraction", "near_structure", "deep_structure", "band_r2", "near_bands", "lateral_ratio", "std"],
    "not_ultrasound": ["scan_side", "scan_pixels", "bright_fraction", "speckle_cv", "std"],
    "too_small": ["scan_side", "scan_pixels"],
    "annotated": ["kinds"],
}


def rejects_lines(shards: str) -> tuple[str, list[str]]:
    """(where, the lines of) the ``rejects.jsonl`` beside a local or remote shard set's manifest
    (no lines when there is none)."""
    from shards import remote

    if remote.is_remote(shards):
        root = shards.rstrip("/").removesuffix("/manifest.json")
        url = remote.join(root, "rejects.jsonl")
        try:
            return url, remote.read_bytes(url).decode("utf-8").splitlines()
        except remote.RemoteReadError as exc:
            if str(exc).endswith("not found"):
                return url, []
            raise UserError(f"--rejects: {exc}") from None
    root = Path(shards) if Path(shards).is_dir() else Path(shards).parent
    path = root / "rejects.jsonl"
    return str(path), path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def pick_rejects(lines: list[str], per_reason: int, seed: int, where: str = "rejects.jsonl") -> dict[str, list[dict]]:
    """Up to ``per_reason`` records of ``rejects.jsonl`` per reason (reservoir sampling, one pass);
    :class:`UserError` naming ``where`` and the line when one is not a record."""
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    picked: dict[str, list[dict]] = {}
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            r = str(rec["reason"])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{where}:{n}: not a rejects record (expected a JSON object with a reason)") from None
        seen[r] = seen.get(r, 0) + 1
        row = picked.setdefault(r, [])
        if len(row) < per_reason:
            row.append(rec)
        else:
            j = rng.randrange(seen[r])
            if j < per_reason:
                row[j] = rec
    return dict(sorted(picked.items()))


READ_OPTIONS = ("array_key", "array_layout", "volume", "volume_axis")  # how the build read a source's files


def reread_frame(manifest: dict, rec: dict, opened: dict | None = None) -> np.ndarray | None:
    """The rejected frame as the reader decoded it, read with its source's options (None when the
    file cannot be read from here). ``opened`` caches dataset sources between calls."""
    from shards.frames import Sampling
    from shards.options import SourceOptions
    from shards.readers import ReadError, open_media
    from shards.sources import open_source, source_root

    name = rec["source"]
    spec = manifest.get("source_specs", {}).get(name)
    if spec is None:
        return None
    recorded = next(
        (s.get("options", {}) for s in manifest.get("identity", {}).get("sources", []) if s["name"] == name), {}
    )
    want = rec.get("frame", 0)
    # frames 0 and `want` only: the others are decoded (a video must be) but not converted
    sampling = Sampling(mode="every", every=max(1, want), max=2)
    opts = SourceOptions(
        frames=sampling, max_frames_per_clip=None, **{k: recorded[k] for k in READ_OPTIONS if k in recorded}
    )
    if spec.startswith("hf:"):
        opened = {} if opened is None else opened
        try:
            src = opened[name] if name in opened else opened.setdefault(name, open_source(name, spec))
        except Exception:  # the dataset moved or cannot be opened any more: nothing to show
            return None
        item = next(src.items(int(rec["path"].split("/")[1])))
        data, relpath = item.data, item.relpath
    else:
        path = source_root(spec) / rec["path"]
        if not path.is_file():
            return None
        data, relpath = str(path), rec["path"]
    try:
        for fr in open_media(data, relpath, opts).frames:
            if fr.index == want:
                return fr.pixels if fr.reject is None else None
    except ReadError:
        return None
    return None


CAPTION_PT = 6  # a tile's caption: about 9 px tall at the sheet's 110 dpi


def tile_caption(rec: dict, reason: str) -> str:
    """A rejected frame's caption: its file (the folder above it too, the middle cut when long), the
    frame, and the values its reason is judged on."""
    parts = Path(rec["path"]).parts[-2:]
    name = "/".join(parts)
    if len(name) > 34:
        name = name[:15] + "..." + name[-16:]
    name += f" #{rec['frame']}" if "frame" in rec else ""
    vals = rec.get("values", {})
    keys = SHOWN.get(reason) or [k for k in vals if k not in ("detail", "crop")][:3]
    items = [f"{k}={vals[k]}" for k in keys if k in vals]
    return "\n".join([name, *(", ".join(items[i : i + 2]) for i in range(0, len(items), 2))])


def rejects_sheet(manifest: dict, picked: dict[str, list[dict]], out: str | Path, tile: int = 160) -> None:
    from shards.sources import source_root
    from sonodistill.figures import pyplot, save_figure

    plt = pyplot()
    rows = list(picked)
    cols = max(len(v) for v in picked.values())
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 2.2, len(rows) * 2.9), squeeze=False)
    counts, opened = manifest.get("rejected", {}), {}
    for spec in sorted({manifest.get("source_specs", {}).get(rec["source"], "") for v in picked.values() for rec in v}):
        if spec and not spec.startswith("hf:") and not source_root(spec).exists():
            how = (
                " (a relative path: run this from the folder the build ran in)" if not Path(spec).is_absolute() else ""
            )
            log.warning(f"source {spec} not found from here{how}: its rejected frames are not shown")
    for r, reason in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(picked[reason]):
                continue
            rec = picked[reason][c]
            px = reread_frame(manifest, rec, opened)
            if px is not None:
                img = Image.fromarray(px)
                img.thumbnail((tile, tile))
                ax.imshow(np.asarray(img), cmap="gray", vmin=0, vmax=255)
            else:
                why = textwrap.fill(str(rec.get("values", {}).get("detail", "")), 30, max_lines=3) or "no detail"
                ax.text(0.5, 0.5, f"(file not readable)\n{why}", ha="center", va="center", fontsize=CAPTION_PT)
            caption = tile_caption(rec, reason)
            ax.set_title(caption, fontsize=CAPTION_PT)
            if c == 0:  # the reason above the first tile's caption, clear of it
                lift = 6 + (caption.count("\n") + 1) * CAPTION_PT * 1.3
                heading = f"{reason} ({counts.get(reason, len(picked[reason]))})"
                ax.annotate(heading, (0, 1), xycoords="axes fraction", xytext=(0, lift), textcoords="offset points",
                            fontsize=9, weight="bold")  # fmt: skip
    fig.tight_layout(h_pad=2.5)  # room above each row for its reason heading
    save_figure(fig, out, dpi=110)


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = CommandParser(prog="python -m shards.inspect", description=__doc__.split("\n\n")[0])
    ap.add_argument("shards", help="shard folder (with manifest.json), its manifest, or a remote folder URL")
    ap.add_argument("--sheet", help="write a contact sheet PNG here")
    ap.add_argument("--per-source", type=int, default=8)
    ap.add_argument("--boxes", action="store_true", help="outline the annotations found in each sample on the sheet")
    ap.add_argument("--rejects", metavar="FILE.png", help="write a contact sheet of rejected frames, a row per reason")
    ap.add_argument("--per-reason", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    add_exclusion_argument(ap, "--overlap", "count the samples that copy these evaluation images")
    ap.add_argument(
        "--overlap-sheet", help="with --overlap: contact sheet of the matched pairs (+ .jsonl; default overlap.png)"
    )
    ap.add_argument("--workers", type=int, default=1, help="processes for --overlap")
    args = ap.parse_args(argv)
    for flag in ("per_source", "per_reason", "workers"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected at least 1")
    if args.overlap_sheet and not args.overlap:
        raise UserError(f"--overlap-sheet {args.overlap_sheet}: only with --overlap SPLITS_OR_FOLDER")
    if args.overlap and not args.overlap_sheet:
        args.overlap_sheet = "overlap.png"
    for flag in ("sheet", "rejects", "overlap_sheet"):
        path = getattr(args, flag)
        if path and (Path(path).suffix.lower() != ".png" or Path(path).is_dir()):
            raise UserError(f"--{flag.replace('_', '-')} {path}: expected the name of a .png file to write")
        if path:  # a folder it can write, before any work
            make_writable_folder(Path(path).parent, f"--{flag.replace('_', '-')}")
    exclusions = None
    if args.overlap:  # a bad --overlap path is one line before any work
        from shards.exclusions import Exclusions, load_exclusions

        exclusions = Exclusions.of(load_exclusions(args.overlap, flag="--overlap"))
    urls, manifest = resolve_shards(args.shards)
    if manifest is not None:
        print(summary(manifest))
    else:
        print(f"{len(urls)} shard file(s), no manifest (give the shard folder for its counts)")
    counts = [int(c) for c in manifest.get("shard_samples", [])] if manifest else None
    if args.sheet:
        sources = list((manifest or {}).get("sources", {}))
        picked = pick_samples(urls, sources, args.per_source, args.seed, Coverage(args.shards, counts))
        contact_sheet(picked, args.sheet, boxes=args.boxes)
        log.info(f"contact sheet: {args.sheet}")
    if exclusions is not None:
        from shards.overlap import inspect_overlap

        coverage = Coverage(args.shards, counts)
        print(inspect_overlap(urls, exclusions, args.overlap_sheet, args.workers, coverage))
        if coverage.gaps():
            raise UserError(f"--overlap: {coverage.gaps()}; the overlap counts are a lower bound")
    if args.rejects:
        if manifest is None:
            raise UserError(f"{args.shards}: --rejects needs the shard folder (with manifest.json and rejects.jsonl)")
        where, lines = rejects_lines(args.shards)
        picked_rejects = pick_rejects(lines, args.per_reason, args.seed, where)
        if not picked_rejects:
            log.warning(f"{where}: no rejects to show; {args.rejects} not written")
        else:
            rejects_sheet(manifest, picked_rejects, args.rejects)
            log.info(f"rejects sheet: {args.rejects}")


if __name__ == "__main__":
    main()
