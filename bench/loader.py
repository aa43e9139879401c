"""Streaming loader throughput vs the raw decode limit, side by side, per core.

    .venv/bin/python bench/loader.py --shards /tmp/shards [--seconds 10] [--batch-size 64]

Decode limit: the same encoded PNGs decoded to uint8 arrays in a tight loop, one process, all
bytes already in memory. Loader: ``ShardLoader`` with one decode worker (one core) in ``loop`` mode,
shuffle buffer on, batches collated — everything pretraining gets. Without ``--shards`` a synthetic
corpus is generated and built at 256 px first. The last line is JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from shards.manifest import resolve_shards
from shards.stream import ShardLoader


def load_blobs(urls: list[str]) -> list[bytes]:
    return [s["png"] for s in wds.tarfile_samples([{"url": u} for u in urls])]


def decode_limit(blobs: list[bytes], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in blobs:
            np.asarray(Image.open(io.BytesIO(b)))
        n += len(blobs)
    return n / (time.perf_counter() - t0)


def loader_rate(it, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += next(it)["image"].shape[0]
    return n / (time.perf_counter() - t0)


def synthetic_shards(root: Path, n: int) -> str:
    from shards.build import BuildSettings, build_shards
    from shards.synth import write_corpus

    write_corpus(root / "corpus", n=n, seed=0)
    sources = {p.name: str(p) for p in sorted((root / "corpus").iterdir()) if p.is_dir()}
    build_shards(sources, root / "shards", BuildSettings(size=256, samples_per_shard=100, workers=2), progress=False)
    return str(root / "shards")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", help="shard dir (default: build a synthetic one)")
    ap.add_argument("--seconds", type=float, default=20.0, help="per side, over all rounds")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (medians reported)")
    ap.add_argument("--n", type=int, default=600, help="synthetic images when --shards is not given")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or synthetic_shards(Path(tmp), args.n)
        urls, manifest = resolve_shards(shards)
        blobs = load_blobs(urls)
        loader = ShardLoader(shards, batch_size=args.batch_size, mode="loop", num_workers=1, shuffle_buffer=1000)
        it = iter(loader)
        for _ in range(3):  # worker start-up is not throughput
            next(it)
        # Interleave short rounds so load from other processes hits both sides alike; take medians.
        limits, rates = [], []
        for _ in range(args.rounds):
            limits.append(decode_limit(blobs, args.seconds / args.rounds))
            rates.append(loader_rate(it, args.seconds / args.rounds))
        limit, rate = float(np.median(limits)), float(np.median(rates))
    size = (manifest or {}).get("settings", {}).get("size")
    print(f"{'raw decode limit (1 core)':<32}{limit:>10.0f} img/s")
    print(f"{'ShardLoader, 1 decode worker':<32}{rate:>10.0f} img/s")
    print(f"{'ratio':<32}{rate / limit:>10.2f}  (target >= 0.80)")
    print(
        json.dumps(
            {
                "bench": "loader",
                "image_size": size,
                "batch_size": args.batch_size,
                "decode_limit_img_s": round(limit, 1),
                "loader_img_s": round(rate, 1),
                "ratio": round(rate / limit, 3),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
