"""Shard-building throughput at two corpus sizes: the cost per image must not grow with the corpus.

    .venv/bin/python bench/build.py [--sizes 500 2000] [--workers 2] [--size 256]

Synthetic corpora (``shards.synth``, all presets, overlays, Doppler/junk/duplicate frames) are
generated first (not timed), then built from scratch; images/s counts every input image (kept or
rejected). Linear cost means equal images/s at both sizes: the ratio large/small should be ~1.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from shards.build import BuildSettings, build_shards
from shards.synth import write_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[500, 2000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            corpus = Path(tmp) / f"corpus{n}"
            write_corpus(corpus, n=n, seed=n, workers=args.workers)
            sources = {p.name: str(p) for p in sorted(corpus.iterdir()) if p.is_dir()}
            t0 = time.perf_counter()
            m = build_shards(
                sources,
                Path(tmp) / f"shards{n}",
                BuildSettings(size=args.size, samples_per_shard=500, workers=args.workers),
                progress=False,
            )
            dt = time.perf_counter() - t0
            rows.append(
                {
                    "images": m["inputs"],
                    "kept": m["num_samples"],
                    "seconds": round(dt, 2),
                    "img_s": round(m["inputs"] / dt, 1),
                }
            )
            print(
                f"{m['inputs']:>6} images  {dt:7.1f} s  {m['inputs'] / dt:7.1f} img/s  "
                f"(kept {m['num_samples']}, {len(m['shards'])} shards)"
            )
    ratio = rows[1]["img_s"] / rows[0]["img_s"]
    # time = fixed start-up + n * per-image cost; super-linear cost would make the ratio < 1.
    (n1, t1), (n2, t2) = [(r["images"], r["seconds"]) for r in rows]
    per_image = (t2 - t1) / (n2 - n1)
    fixed = t1 - per_image * n1
    print(f"throughput ratio large/small: {ratio:.2f} (>= ~1: cost linear in corpus size, start-up amortised)")
    print(f"fit: {fixed:.1f} s start-up + {per_image * 1000:.1f} ms per image")
    print(
        json.dumps(
            {
                "bench": "build",
                "workers": args.workers,
                "size": args.size,
                "runs": rows,
                "linearity_ratio": round(ratio, 3),
                "startup_s": round(fixed, 2),
                "per_image_ms": round(per_image * 1000, 2),
                "peak_rss_mb_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
