"""Summarise a shard set and draw a contact sheet of random samples per source.

    python -m shards.inspect /data/shards --sheet /data/shards_sheet.png [--per-source 8] [--seed 0]

Prints the manifest summary (samples, shards, kept per source, rejections by reason). The sheet
has one row per source dataset; shards are visited in a seeded random order and reading stops as
soon as every row is full, so it stays cheap on a large corpus (only the chosen images are decoded).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from shards.manifest import resolve_shards
from sonodistill.errors import cli_main

log = logging.getLogger(__name__)


def summary(manifest: dict) -> str:
    lines = [
        f"samples: {manifest['num_samples']} in {len(manifest['shards'])} shards "
        f"(from {manifest.get('inputs', '?')} inputs, size {manifest['settings'].get('size')} px)"
    ]
    width = max(len(k) for k in manifest["sources"]) if manifest["sources"] else 0
    lines.append("kept per source:")
    lines += [f"  {k:<{width}}  {v}" for k, v in manifest["sources"].items()]
    lines.append("rejected:" + ("" if manifest["rejected"] else " none"))
    lines += [f"  {k:<{width}}  {v}" for k, v in manifest["rejected"].items()]
    return "\n".join(lines)


def pick_samples(urls: list[str], sources: list[str], per_source: int, seed: int) -> dict[str, list[bytes]]:
    order = list(urls)
    random.Random(seed).shuffle(order)
    picked: dict[str, list[bytes]] = {s: [] for s in sources}
    for url in order:
        for sample in wds.tarfile_samples([{"url": url}]):
            src = json.loads(sample["json"])["source"]
            row = picked.setdefault(src, [])
            if len(row) < per_source:
                row.append(sample["png"])
        if all(len(v) >= per_source for v in picked.values()):
            break
    return picked


def contact_sheet(picked: dict[str, list[bytes]], out: str | Path, tile: int = 128) -> None:
    from sonodistill.figures import pyplot, save_figure

    plt = pyplot()

    rows = [k for k, v in picked.items() if v]
    cols = max(len(picked[k]) for k in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 1.4, len(rows) * 1.5), squeeze=False)
    for r, src in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(picked[src]):
                img = np.asarray(Image.open(io.BytesIO(picked[src][c])).resize((tile, tile)))
                ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            if c == 0:
                ax.set_title(src, loc="left", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m shards.inspect", description=__doc__.split("\n\n")[0])
    ap.add_argument("shards", help="shard folder (with manifest.json) or its manifest")
    ap.add_argument("--sheet", help="write a contact sheet PNG here")
    ap.add_argument("--per-source", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    urls, manifest = resolve_shards(args.shards)
    if manifest is not None:
        print(summary(manifest))
    if args.sheet:
        sources = list((manifest or {}).get("sources", {}))
        contact_sheet(pick_samples(urls, sources, args.per_source, args.seed), args.sheet)
        log.info(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
