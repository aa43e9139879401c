"""Streaming loader throughput vs its decode (or read) limit, per shard encoding, side by side, one core.

    .venv/bin/python bench/loader.py [--encodings png jpeg raw] [--seconds 20] [--rounds 5]
    .venv/bin/python bench/loader.py --shards /data/shards          # one existing shard set
    .venv/bin/python bench/loader.py --shards https://host/shards   # remote vs a local copy of it
    .venv/bin/python bench/loader.py --serve                        # + the synthetic sets over HTTP

Per encoding, measured in interleaved rounds (medians), everything on one core:

- limit: the least work a sample needs. PNG/JPEG: decoding the image members, already in memory,
  into a uint8 batch array in a tight loop with the loader's own decoder (``shards.codec``). Raw:
  memory-mapping each shard file (page cache) and copying each sample's pixels (offsets known in
  advance) into the next rows of a ring of shared-memory arrays as large as the loader's own
  hand-over ring — there is nothing to decode, so reading is the limit; the destination is memory
  the main process will read later, as it must be for any loader (see :func:`read_limit`; the
  limit before issue 20, one cache-resident batch array, is measured beside it as ``hot``).
- loader: ``ShardLoader`` with one worker process in ``loop`` mode, shuffle on (windows of 1000),
  batches handed to the main process — everything pretraining gets.
- the machine's memory-copy rate (a 256 MiB array copied, per CPU-second), in the same rounds.
- bytes per sample (whole shard / samples, and the image member alone) and the cores one GPU at
  ``--gpu-img-s`` (4,400 img/s: an H100 distilling ViT-B/16 into ResNet-50 in bf16, issue 11) would
  need at the loader's rate.

Without ``--shards`` a synthetic corpus is cleaned once into PNG shards at 256 px and re-encoded
to JPEG and raw (the same pixels ``shards.build --encoding`` would write); each set is then
written ``--copies`` times (10) so that an epoch spans several shuffle windows and every shard is
mapped and indexed once per epoch, as on a real corpus (:func:`replicate`). ``--shards URL`` (or
``--serve``, which serves the synthetic sets from a local HTTP server) adds the remote loader beside
the local one. The last line is JSON.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from shards import remote
from shards.build import tar_bytes
from shards.codec import ENCODINGS, Codec, decode_gray, npy_header
from shards.manifest import encoding_of, resolve_shards
from shards.shardfile import open_shard, read_local
from shards.stream import ShardLoader
from shards.synth.shard_set import write_shard_set
from sonodistill.arg_checks import at_least

GPU_IMG_S = 4400.0
TARGET_RATIO = 0.95  # loader / limit, every encoding (issue 11, issue 20)


def synthetic_png(root: Path, n: int, size: int, workers: int = 2) -> Path:
    """A synthetic corpus of ``n`` images (``shards.synth``) cleaned into PNG shards at ``size`` px."""
    return write_shard_set(root, n, size, workers=workers, name="png")


def transcode(src: Path, dst: Path, encoding: str) -> Path:
    """The PNG shard set ``src`` re-encoded: same keys, metadata and (lossless source) pixels."""
    manifest = json.loads((src / "manifest.json").read_text())
    codec = Codec(encoding)
    dst.mkdir(parents=True, exist_ok=True)
    for name in manifest["shards"]:
        shard = open_shard(str(src / name))
        samples = []
        for i in range(len(shard)):
            pixels = decode_gray(shard.image(i), shard.index.encoding(i))
            samples.append((shard.key(i), codec.encode(pixels), shard.meta(i)))
        (dst / name).write_bytes(tar_bytes(samples, codec.ext))
    manifest["encoding"] = encoding
    manifest["settings"] = {**manifest["settings"], "encoding": encoding}
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def replicate(folder: Path, copies: int) -> Path:
    """The shard set in ``folder`` written ``copies`` times under new shard names (one manifest).

    A 600-image set is one shuffle window: its shards would be mapped and indexed once and stay open
    for the whole run. Copied, an epoch spans several windows, so each shard is mapped, indexed and
    dropped once per epoch, as on a real corpus (162K frames); the copies are real files, so their
    pages are distinct in the page cache and the samples are read from memory, not from the CPU cache.
    """
    manifest = json.loads((folder / "manifest.json").read_text())
    names = list(manifest["shards"])
    for k in range(1, copies):
        for name in names:
            shutil.copyfile(folder / name, folder / f"copy{k}-{name}")
    parallel = [key for key, v in manifest.items() if isinstance(v, list) and len(v) == len(names)]
    for key in parallel:  # shards, shard_samples, shard_sources
        manifest[key] = manifest[key] * copies
    manifest["shards"] = names + [f"copy{k}-{n}" for k in range(1, copies) for n in names]
    manifest["num_samples"] = int(manifest["num_samples"]) * copies
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def download(url: str, dst: Path) -> Path:
    """A local copy of a remote shard set (manifest + shards)."""
    urls, manifest = resolve_shards(url)
    dst.mkdir(parents=True, exist_ok=True)
    for u, name in zip(urls, manifest["shards"]):
        (dst / name).write_bytes(remote.read_bytes(u))
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def serve(root: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            """No request log: it would interleave with the test/benchmark output."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def _children() -> set[int]:
    out: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        out.update(int(p) for p in (task / "children").read_text().split())
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Side:
    """One measured thing: ``step()`` processes some images and returns how many.

    Wall-clock rate per round, and images per CPU-second: the calling thread's CPU time plus, for a
    loader, its worker process's (the whole run: a worker refilling its prefetch queue between
    rounds still pays for those images), so other jobs on a shared machine do not move the figure.
    """

    def __init__(self, step, worker: int | None = None) -> None:
        self.step, self.worker = step, worker
        step()  # warm-up: first calls load decoder libraries and fault pages in
        self.rates: list[float] = []
        self.images, self.cpu, self.worker_cpu = 0, 0.0, 0.0
        self.worker_cpu0 = _cpu_seconds(worker) if worker else 0.0

    def run(self, seconds: float) -> None:
        n, t0, c0 = 0, time.perf_counter(), time.thread_time()
        while time.perf_counter() - t0 < seconds:
            n += self.step()
        self.rates.append(n / (time.perf_counter() - t0))
        self.images += n
        self.cpu += time.thread_time() - c0
        if self.worker:  # now, not later: between rounds the worker refills its queue for the next one
            self.worker_cpu = _cpu_seconds(self.worker) - self.worker_cpu0

    @property
    def median(self) -> float:
        return float(np.median(self.rates))

    @property
    def per_cpu_second(self) -> float:
        return self.images / max(self.cpu + self.worker_cpu, 1e-9)


def decode_limit(blobs: list[np.ndarray], encoding: str, size: int, batch: int):
    """One batch of the shard set's image members decoded into a uint8 array (cycling through them)."""
    out = np.empty((batch, 1, size, size), np.uint8)
    pos = [0]

    def step() -> int:
        for j in range(batch):
            out[j, 0] = decode_gray(blobs[pos[0]], encoding)
            pos[0] = (pos[0] + 1) % len(blobs)
        return batch

    return step


def hot_read_limit(paths: list[str], size: int, batch: int):
    """The raw limit before issue 20, measured beside the right one to show the difference: every
    sample copied into one reused batch array, which stays in the CPU cache."""
    return read_limit(paths, size, batch, 1)


def read_limit(paths: list[str], size: int, rows: int, slots: int):
    """One shard per call: memory-map it and copy every sample's pixels into the next rows of a ring
    of ``slots`` shared-memory arrays of ``rows`` images, filled in turn.

    The ring is the loader's own hand-over ring (``ShardLoader.ring_slots`` x ``parts * batch_size``):
    every loader has to write each batch to memory that stays valid until the main process takes
    it, so the batches in flight cannot share one cache-resident array. Copying into a single
    reused batch array instead (this limit before issue 20) keeps the destination, and with a small
    set much of the source, in the CPU cache: 2.2x the rate of the same copies into the ring on the
    development machine, and over 3x the machine's memory-copy bandwidth. No loader can reach that.
    """
    header = len(npy_header((size, size)))
    plan = []
    for p in paths:
        idx = open_shard(p).index
        plan.append((p, (idx.image_offset + header).tolist()))
    ring = [torch.empty((rows, size * size), dtype=torch.uint8).share_memory_().numpy() for _ in range(slots)]
    hw, pos, at = size * size, [0], [0, 0]  # next shard; (slot, row) the next sample goes to

    def step() -> int:
        path, offsets = plan[pos[0]]
        pos[0] = (pos[0] + 1) % len(plan)
        buf = read_local(path)
        slot, row = at
        out = ring[slot]
        for o in offsets:
            out[row] = buf[o : o + hw]
            row += 1
            if row == rows:
                slot, row = (slot + 1) % slots, 0
                out = ring[slot]
        at[:] = slot, row
        return len(offsets)

    return step


def copy_bandwidth(nbytes: int = 256 << 20):
    """One call: a ``nbytes`` array copied into another (both touched before): the machine's memory-copy
    rate, as bytes copied per CPU-second (read once, written once)."""
    src = np.ones(nbytes, np.uint8)
    dst = np.zeros(nbytes, np.uint8)

    def rate() -> float:
        t0 = time.thread_time()
        np.copyto(dst, src)
        return nbytes / max(time.thread_time() - t0, 1e-9)

    return rate


def loader_side(shards: str, batch: int) -> Side:
    loader = ShardLoader(shards, batch_size=batch, mode="loop", num_workers=1, shuffle_buffer=1000)
    before = _children()
    it = iter(loader)
    for _ in range(3):  # worker start-up is not throughput
        next(it)
    (worker,) = _children() - before
    return Side(lambda: next(it)["image"].shape[0], worker)


def info_size(shards: str) -> int:
    return int(resolve_shards(shards)[1]["settings"]["size"])


def shard_bytes(shards: str) -> tuple[float, float]:
    urls, manifest = resolve_shards(shards)
    total = image = n = 0
    for u in urls:
        shard = open_shard(u)
        total += len(shard.buf)
        image += int(shard.index.image_size.sum())
        n += len(shard)
    return total / n, image / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", help="a shard set (folder or URL); default: synthetic sets in every encoding")
    ap.add_argument("--encodings", nargs="+", default=list(ENCODINGS), choices=ENCODINGS)
    ap.add_argument("--serve", action="store_true", help="also stream the synthetic sets from a local HTTP server")
    ap.add_argument("--seconds", type=float, default=20.0, help="per side and encoding, over all rounds")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (medians reported)")
    ap.add_argument("--n", type=int, default=600, help="synthetic corpus images when --shards is not given")
    ap.add_argument("--size", type=int, default=256, help="synthetic shard side in pixels")
    ap.add_argument(
        "--copies", type=int, default=10, help="synthetic sets: shards written this many times (see replicate)"
    )
    ap.add_argument("--gpu-img-s", type=float, default=GPU_IMG_S, help="one GPU's consumption, images/s")
    args = ap.parse_args()
    at_least(args, {"batch_size": 1, "rounds": 1, "n": 1, "size": 16, "seconds": 1})
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        run(args, Path(tmp))


def prepare_sets(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, str], dict[str, str], object]:
    """Local shard sets per encoding, their remote twins (``--shards URL``, ``--serve``) and the server."""
    sets: dict[str, str] = {}
    remote_sets: dict[str, str] = {}
    server = None
    if args.shards:
        enc = encoding_of(resolve_shards(args.shards)[1]) or "png"
        if remote.is_remote(args.shards):
            remote_sets[enc] = args.shards
            sets[enc] = str(download(args.shards, tmp / "local"))
        else:
            sets[enc] = args.shards
        return sets, remote_sets, server
    png = synthetic_png(tmp, args.n, args.size)
    for enc in args.encodings:
        sets[enc] = str(png if enc == "png" else transcode(png, tmp / enc, enc))
    for enc in args.encodings:  # after transcoding: the copies of the PNG set are not transcoded again
        replicate(Path(sets[enc]), args.copies)
    if args.serve:
        base, server = serve(tmp)
        remote_sets = {enc: f"{base}/{Path(p).name}" for enc, p in sets.items()}
    return sets, remote_sets, server


def limit_side(enc: str, shards: str, batch: int, distinct: int) -> Side:
    """The encoding's limit: decode (PNG, JPEG) the first ``distinct`` shards' images in a loop, or
    read (raw) every shard into the loader's own hand-over ring."""
    urls, manifest = resolve_shards(shards)
    size = int(manifest["settings"]["size"])
    if enc == "raw":
        probe = ShardLoader(shards, batch_size=batch, num_workers=1)  # only its ring's dimensions
        return Side(read_limit(urls, size, probe.parts * batch, probe.ring_slots))
    blobs = []
    for u in urls[:distinct]:
        shard = open_shard(u)
        blobs += [np.array(shard.image(i)) for i in range(len(shard))]
    return Side(decode_limit(blobs, enc, size, batch))


def run(args: argparse.Namespace, tmp: Path) -> None:
    sets, remote_sets, server = prepare_sets(args, tmp)
    copies = 1 if args.shards else args.copies
    sides: dict[str, dict[str, Side]] = {}
    info: dict[str, dict] = {}
    for enc, shards in sets.items():
        distinct = max(1, len(resolve_shards(shards)[0]) // copies)
        sides[enc] = {"limit": limit_side(enc, shards, args.batch_size, distinct)}
        if enc == "raw":
            sides[enc]["hot"] = Side(hot_read_limit(resolve_shards(shards)[0], info_size(shards), args.batch_size))
        sides[enc]["loader"] = loader_side(shards, args.batch_size)
        if enc in remote_sets:
            sides[enc]["remote"] = loader_side(remote_sets[enc], args.batch_size)
        total, image = shard_bytes(shards)
        info[enc] = {
            "image_size": info_size(shards),
            "bytes_per_sample": round(total),
            "image_bytes_per_sample": round(image),
        }
    bandwidth, copy_rates = copy_bandwidth(), []
    # Interleave short rounds so load from other processes hits every side alike; report medians.
    per = args.seconds / args.rounds
    for _ in range(args.rounds):
        copy_rates += [bandwidth() for _ in range(3)]
        for enc in sides:
            for side in sides[enc].values():
                side.run(per)
    if server is not None:
        server.shutdown()
    report(args, sides, info, remote_sets, float(np.median(copy_rates)), copies)
    sys.stdout.flush()
    shutil.rmtree(tmp, ignore_errors=True)


def report(
    args: argparse.Namespace,
    sides: dict[str, dict[str, Side]],
    info: dict[str, dict],
    remote_sets: dict[str, str],
    copy_bytes_s: float,
    copies: int,
) -> None:
    results = {}
    print(
        f"batch {args.batch_size}; images per CPU-second of one core (wall-clock medians of {args.rounds} "
        f"interleaved rounds in brackets); synthetic sets x{copies} copies"
    )
    head = f"{'encoding':<9}{'limit':>16}{'loader':>16}{'ratio':>7}{'target':>8}{'B/sample':>10}{'cores/GPU':>11}"
    print(head + (f"{'remote (wall)':>15}{'rem/loc':>9}" if remote_sets else ""))
    for enc, s in sides.items():
        limit, rate = s["limit"].per_cpu_second, s["loader"].per_cpu_second
        r = {
            **info[enc],
            "limit": "read into the hand-over ring" if enc == "raw" else "decode",
            "limit_img_s": round(limit, 1),
            "loader_img_s": round(rate, 1),
            "ratio": round(rate / limit, 3),
            "target": TARGET_RATIO,
            "met": rate / limit >= TARGET_RATIO,
            "cores_per_gpu": round(args.gpu_img_s / rate, 2),
            "wall_limit_img_s": round(s["limit"].median, 1),
            "wall_loader_img_s": round(s["loader"].median, 1),
            "wall_ratio": round(s["loader"].median / s["limit"].median, 3),
        }
        if enc == "raw":  # pixel bytes moved per CPU-second against the memory-copy rate; the old limit
            pixels, hot = info[enc]["image_size"] ** 2, s["hot"].per_cpu_second
            r.update(limit_gb_s=round(limit * pixels / 1e9, 2), loader_gb_s=round(rate * pixels / 1e9, 2))
            r.update(hot_limit_img_s=round(hot, 1), hot_limit_gb_s=round(hot * pixels / 1e9, 2))
            r.update(ratio_to_hot_limit=round(rate / hot, 3))
        line = (
            f"{enc:<9}{limit:>8.0f} ({s['limit'].median:>5.0f}){rate:>8.0f} ({s['loader'].median:>5.0f})"
            f"{rate / limit:>7.2f}{TARGET_RATIO:>8.2f}{info[enc]['bytes_per_sample']:>10}{args.gpu_img_s / rate:>11.2f}"
        )
        if "remote" in s:
            rem = s["remote"].median
            r.update(wall_remote_img_s=round(rem, 1), remote_over_local=round(rem / s["loader"].median, 3))
            line += f"{rem:>15.0f}{rem / s['loader'].median:>9.2f}"
        results[enc] = r
        print(line)
    print(
        f"limit: decode (png/jpeg) or read into the loader's hand-over ring (raw); cores/GPU: loader cores for "
        f"{args.gpu_img_s:.0f} img/s; memory copy {copy_bytes_s / 1e9:.2f} GB/s per CPU-second"
        + (
            f" (raw pixels: limit {results['raw']['limit_gb_s']} GB/s, loader {results['raw']['loader_gb_s']}, "
            f"old cache-resident limit {results['raw']['hot_limit_gb_s']})"
            if "raw" in results
            else ""
        )
    )
    print(
        json.dumps(
            {
                "bench": "loader",
                "batch_size": args.batch_size,
                "gpu_img_s": args.gpu_img_s,
                "copies": copies,
                "memory_copy_gb_s": round(copy_bytes_s / 1e9, 2),
                "remote": sorted(remote_sets.values()) or None,
                "target_ratio": TARGET_RATIO,
                "ratios": {enc: r["ratio"] for enc, r in results.items()},
                "encodings": results,
            }
        )
    )


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
