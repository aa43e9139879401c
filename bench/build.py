"""Shard-building throughput: images/s at two corpus sizes, frames/s per reader family, memory per clip.

    .venv/bin/python bench/build.py [--sizes 500 2000] [--workers 2] [--size 256] [--clip-frames 150 600]

1. Synthetic corpora (``shards.synth``, all presets, overlays, Doppler/junk/duplicate frames) are
   generated first (not timed), then built from scratch; images/s counts every input image (kept or
   rejected). Linear cost means equal images/s at both sizes: the ratio large/small should be ~1.
2. Per reader family -- PNG images, a DICOM multi-frame cine (JPEG 2000), an mp4 clip (H.264) and a
   NIfTI 2D+t sequence -- one clip of each length in ``--clip-frames`` is built with ``frames: all``
   in a fresh process (one worker), which reports frames/s and its peak RSS. Frames are streamed
   one at a time, so the peak RSS must not grow with the clip length (ratio long/short ~1).
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shards.build import BuildSettings, build_shards
from shards.catalogue import SourceConfig
from shards.frames import Sampling
from shards.options import SourceOptions
from shards.synth import write_corpus
from sonodistill.arg_checks import at_least

FAMILIES = ("image", "dicom", "video", "nifti")


def _write_clip(family: str, n: int, folder: Path) -> None:
    """One clip of ``n`` 240x320 frames (a probe sliding over one scene), as ``family``."""
    from shards.synth.media import clip_frames, write_frames

    write_frames(family, clip_frames(np.random.default_rng(n), n, size=(240, 320), step=1), folder)


def _child(family: str, folder: str, out: str, size: int) -> None:
    """Runs in a fresh process: build one clip with every frame, report time, frames and peak RSS."""
    every_frame = SourceOptions(frames=Sampling(mode="all", max=None), max_frames_per_clip=100_000)
    src = SourceConfig(name=family, path=folder, options=every_frame)
    # Every frame, no dedup: the point is reading and cleaning cost, not what survives.
    settings = BuildSettings(size=size, workers=1, near_duplicate_distance=-1, clip_duplicate_distance=-1)
    t0 = time.perf_counter()
    m = build_shards([src], out, settings, progress=False)
    dt = time.perf_counter() - t0
    frames = m["per_source"][family]["frames"]
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"frames": frames, "seconds": dt, "peak_rss_mb": round(int(hwm.split()[1]) / 1024, 1)}))


def readers(tmp: Path, lengths: list[int], size: int) -> list[dict]:
    rows = []
    for family in FAMILIES:
        for n in lengths:
            folder = tmp / f"{family}{n}"
            _write_clip(family, n, folder)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", family, str(folder), str(tmp / f"out_{family}{n}"), str(size)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "family": family,
                    "clip_frames": n,
                    "frames": r["frames"],
                    "frames_s": round(r["frames"] / r["seconds"], 1),
                    "peak_rss_mb": r["peak_rss_mb"],
                }
            )
            print(
                f"{family:>6} {n:>5} frames  {r['frames'] / r['seconds']:7.1f} frames/s  "
                f"peak RSS {r['peak_rss_mb']:7.1f} MB"
            )
    return rows


def corpus_runs(tmp: Path, sizes: list[int], workers: int, size: int) -> list[dict]:
    rows = []
    for n in sizes:
        corpus = tmp / f"corpus{n}"
        write_corpus(corpus, n=n, seed=n, workers=workers)
        sources = {p.name: str(p) for p in sorted(corpus.iterdir()) if p.is_dir()}
        t0 = time.perf_counter()
        m = build_shards(
            sources,
            tmp / f"shards{n}",
            BuildSettings(size=size, samples_per_shard=500, workers=workers),
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
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[500, 2000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--clip-frames", type=int, nargs=2, default=[150, 600], help="short and long clip lengths")
    ap.add_argument("--skip-corpus", action="store_true", help="only the per-reader part")
    args = ap.parse_args()
    at_least(args, {"workers": 1, "size": 32})
    result: dict = {"bench": "build", "workers": args.workers, "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_corpus:
            rows = corpus_runs(Path(tmp), args.sizes, args.workers, args.size)
            ratio = rows[1]["img_s"] / rows[0]["img_s"]
            # time = fixed start-up + n * per-image cost; super-linear cost would make the ratio < 1.
            (n1, t1), (n2, t2) = [(r["images"], r["seconds"]) for r in rows]
            per_image = (t2 - t1) / (n2 - n1)
            fixed = t1 - per_image * n1
            print(f"throughput ratio large/small: {ratio:.2f} (>= ~1: cost linear in corpus size, start-up amortised)")
            print(f"fit: {fixed:.1f} s start-up + {per_image * 1000:.1f} ms per image")
            if fixed < 0:  # two runs this small: the fit's intercept is timing noise
                print("start-up below the timing noise at these sizes (give larger --sizes)")
                result["startup_note"] = "negative fit: timing noise at these sizes; give larger --sizes"
            result.update(
                runs=rows,
                linearity_ratio=round(ratio, 3),
                startup_s=round(fixed, 2),
                per_image_ms=round(per_image * 1000, 2),
                peak_rss_mb_main=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            )
        rrows = readers(Path(tmp), args.clip_frames, args.size)
        short, long_ = args.clip_frames
        rss_ratio = {
            f: round(
                next(r["peak_rss_mb"] for r in rrows if r["family"] == f and r["clip_frames"] == long_)
                / next(r["peak_rss_mb"] for r in rrows if r["family"] == f and r["clip_frames"] == short),
                3,
            )
            for f in FAMILIES
        }
        print(f"peak RSS ratio long/short clip per family (~1: frames streamed): {rss_ratio}")
        result.update(readers=rrows, rss_ratio_long_short=rss_ratio)
    print(json.dumps(result))


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
