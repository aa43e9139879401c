"""Decontamination: planted copies of evaluation frames are found, distinct frames are not, and the
time 160K corpus frames x 20K evaluation images take.

    .venv/bin/python bench/decontam.py [--real REALDATA] [--per-transform 300] [--workers 2]
        [--sizes 400,1600] [--timed 50] [--brute 5,100] [--speed-only]

Frames: real ones from the itk-pocus recordings (``.cache/itk-pocus``, frames spread over every
clip) and, when ``--real`` holds it, the labelled calibration set (``labels.csv``: B-mode and
annotated frames of 16 sources); synthetic ones from ``shards.synth`` (every preset, overlays on).

1. *References* (the "evaluation images"): one frame per clip (or image) of every family, less
   those that copy an earlier reference (real data holds duplicates: CING images filed twice,
   lung images under two names; listed in the output) so that a copy has one original; the other
   frames are the *distinct queries*.
2. *Recall*: for up to ``--per-transform`` references, a copy made by each transform (seeded):
   ``exact`` (another name), ``jpeg`` (quality 30-90), ``resized`` (0.35-1.5x, aspect +-20 %),
   ``mirrored``, ``recropped`` (0-15 % cut from each side), ``shard`` (the shard cleaning's crop,
   letterbox and 256 px resize), ``combined`` (recrop 0-10 %, resize 0.5-1x, JPEG 50-90, mirrored
   half the time). A copy counts as found when the index returns its original; one that returns
   another reference, or none, is listed. ``--beyond`` adds copies beyond what the matcher promises,
   to show where it stops: ``crop25`` / ``crop30`` (25 % / 30 % cut from every side), ``gain``
   (x0.6-0.8), ``gamma`` (0.6 or 1.6), ``noise`` (Gaussian, sigma 12), ``text`` (yellow labels and a
   white line drawn on), ``screen`` (pasted into a black screen 1.8 x 1.6 its size), ``small``
   (128 px on the long side), ``rotated`` (3 degrees: the map is axis-aligned, so rotated copies,
   as augmented datasets hold, are out of reach).
3. *False matches*: a distinct query that matches a reference of another *family* (another
   dataset or device: different acquisitions by provenance; the pydicom wheel's frames are copies
   of pydicom-data's, one family) is a false match; rate per query and per (query, reference) pair.
   Matches inside a family but across clips are listed apart (real duplicates turn up there).
4. *Known real duplicates* of the calibration set (listed below, found by eye): how many pairs are found.
5. *Time*, in core-seconds (CPU time of this one process, far less sensitive than wall time to a
   shared machine's load), measured here and extrapolated: the canonical view of ``LARGE``
   references (random windows of the canonical references, mirrored half the time: realistic,
   distinct descriptors), indexes of the first ``SMALL`` and all ``LARGE`` of them (``--sizes``),
   ``--timed`` distinct frames searched in each (a shard frame: ORB of it and of its mirror
   image, then the search); brute force, the same full check of both views against every
   reference without the index, on ``--brute`` FRAMES x REFERENCES. For 160K frames x 20K
   evaluation images: the views per image, the build and the query time on the power law
   through the two sizes (exponent at least 0), brute force per pair. ``--speed-only`` skips 2-4.

The last line is JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shards.clean import Cleaned, clean_frame  # noqa: E402
from shards.codec import Codec  # noqa: E402
from shards.copyindex import CopyIndex, query_views, reference_views, search_all, view  # noqa: E402
from shards.decode import read_pixels  # noqa: E402
from shards.match import MATCH_SIDE, canonical  # noqa: E402
from shards.ordered_pool import ordered_map  # noqa: E402
from shards.synth.copies import crop, jpeg, resize  # noqa: E402
from sonodistill.arg_checks import at_least  # noqa: E402

POCUS = REPO / ".cache" / "itk-pocus" / "itk-pocus-0.3.2" / "tests" / "data"
# Files of the sets that copy another file of the same set (found by eye in the calibration set): never references.
COPIES = ("clarius-ocular-short", "sonosite-anon-eye1.jpg", "interson-image-annotation", "a_pydicom_wheel/",
          "normal_31.png", "AAAAA_marking", "segmentation_samples")  # fmt: skip
KNOWN_PAIRS = [  # calibration-set duplicates, checked by eye (docs/benchmarks.md)
    ("a_pydicom_wheel/examples_rgb_color.png", "a_pydicom_data/US1_UNCR.png"),
    ("a_pydicom_wheel/examples_jpeg2k.png", "a_pydicom_data/US1_UNCR.png"),
    ("a_pydicom_wheel/examples_palette.png", "a_pydicom_data/OBXXXX1A.png"),
    ("a_pydicom_wheel/examples_ybr_color_f000.png", "a_pydicom_data/color3d_jpeg_baseline_f000.png"),
    ("b_busi/normal_121.png", "b_busi/normal_31.png"),
    ("b_cing_imt/AAAAA_marking.png", "b_cing_imt/AAAAA_pic.png"),
] + [
    (f"b_carotids_kostelansky/segmentation_samples__{a}.png", f"b_carotids_kostelansky/localization_samples__{b}.png")
    for a, b in [("longitudinal__201507211157170577", "longitudinal__201507211157170577VAS"),
                 ("longitudinal__2201509291151590620", "longitudinal__201509291151590620VAS"),
                 ("transverse__1201811211122300246", "transverse__201811211122300246VAS"),
                 ("transverse__1201902120820080009", "transverse__201902120820080009VAS")]
]  # fmt: skip
TRANSFORMS = ("exact", "jpeg", "resized", "mirrored", "recropped", "shard", "combined")
BEYOND = ("crop25", "crop30", "gain", "gamma", "noise", "text", "screen", "small", "rotated")


@dataclass(frozen=True)
class Frame:
    path: str
    family: str  # dataset or device: frames of two families are distinct acquisitions
    clip: str  # frames of one clip (or one image file)


def transform(x: np.ndarray, name: str, seed: int) -> np.ndarray:
    """A planted copy of ``x``; the parameters are drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    if name == "jpeg":
        return jpeg(x, int(rng.integers(30, 91)))
    if name == "resized":
        f = rng.uniform(0.35, 1.5)
        return resize(x, f, f * rng.uniform(0.8, 1.2))
    if name == "mirrored":
        return np.ascontiguousarray(x[:, ::-1])
    if name == "recropped":
        return crop(x, *rng.uniform(0, 0.15, 4))
    if name == "shard":
        res = clean_frame(x, MATCH_SIDE, Codec("raw"))
        return (
            np.frombuffer(res.data[128:], np.uint8).reshape(MATCH_SIDE, MATCH_SIDE) if isinstance(res, Cleaned) else x
        )
    if name == "combined":
        f = rng.uniform(0.5, 1.0)
        y = jpeg(resize(crop(x, *rng.uniform(0, 0.1, 4)), f, f), int(rng.integers(50, 91)))
        return np.ascontiguousarray(y[:, ::-1]) if rng.random() < 0.5 else y
    return beyond(x, name, rng)


def beyond(x: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """The ``--beyond`` copies (see the module's docstring); ``x`` itself for any other name."""
    g = x.astype(np.float32)
    if name in ("crop25", "crop30"):
        return crop(x, *[int(name[4:]) / 100] * 4)
    if name == "gain":
        return np.clip(g * rng.uniform(0.6, 0.8), 0, 255).astype(np.uint8)
    if name == "gamma":
        return (255 * (g / 255) ** rng.choice([0.6, 1.6])).astype(np.uint8)
    if name == "noise":
        return np.clip(g + rng.normal(0, 12, g.shape), 0, 255).astype(np.uint8)
    if name == "text":
        from PIL import ImageDraw

        im = Image.fromarray(x).convert("RGB")
        draw, (h, w) = ImageDraw.Draw(im), x.shape[:2]
        for _ in range(4):
            draw.text((w * rng.uniform(0.1, 0.7), h * rng.uniform(0.1, 0.8)), "LT LOBE 2.3 cm", fill=(255, 255, 0))
        draw.line([(w * 0.3, h * 0.4), (w * 0.6, h * 0.6)], fill=(255, 255, 255), width=2)
        return np.asarray(im)
    if name == "screen":
        h, w = x.shape[:2]
        out = np.zeros((int(h * 1.6), int(w * 1.8), *x.shape[2:]), np.uint8)
        y0, x0 = int(h * rng.uniform(0.1, 0.5)), int(w * rng.uniform(0.1, 0.7))
        out[y0 : y0 + h, x0 : x0 + w] = x
        return out
    if name == "small":
        f = 128 / max(x.shape[:2])
        return resize(x, f, f)
    if name == "rotated":
        return np.asarray(Image.fromarray(x).rotate(3, resample=Image.Resampling.BILINEAR))
    return x


def _copy_views(job: tuple[str, str, int]):
    path, name, seed = job
    return query_views(canonical(transform(read_pixels(path), name, seed)))


def _views(path: str):
    return query_views(canonical(read_pixels(path)))


def pocus_frames(folder: Path, out: Path, per_clip: int = 12) -> list[Frame]:
    """Frames spread over each itk-pocus recording, written as PNG (the images as they are)."""
    from shards.frames import Sampling
    from shards.options import SourceOptions
    from shards.readers import ReadError, open_media

    frames = []
    for f in sorted(folder.iterdir()):
        try:
            opts = SourceOptions(frames=Sampling(mode="every", every=7, max=per_clip))
            for fr in open_media(str(f), f.name, opts).frames:
                if fr.reject is not None:
                    continue
                path = out / f"{f.name}_{fr.index:04d}.png"
                Image.fromarray(fr.pixels).save(path)
                frames.append(Frame(str(path), "itk-pocus", f.name))
        except ReadError:
            continue
    return frames


def real_frames(root: Path) -> list[Frame]:
    """The calibration set's B-mode and annotated frames (its itk-pocus frames are read from the cache)."""
    out = []
    for row in csv.DictReader(open(root / "labels.csv", encoding="utf-8")):
        if row["class"] not in ("bmode", "annotated") or row["path"].startswith("a_itkpocus"):
            continue
        family = "pydicom" if "pydicom" in row["source"] else row["source"]
        clip = re.sub(r"_(f\d+|\d+)\.png$", "", row["path"])
        out.append(Frame(str(root / row["path"]), family, clip))
    return out


def synthetic_frames(out: Path, n: int) -> list[Frame]:
    """Synthetic ultrasound images, planted duplicates and non-ultrasound junk left out."""
    from shards.synth import write_corpus

    records = write_corpus(out, n=n, seed=7, workers=2)
    return [Frame(str(out / r["path"]), "synthetic", r["path"]) for r in records if r["kind"] == "ultrasound"]


def split_frames(frames: list[Frame], seed: int) -> tuple[list[Frame], list[Frame]]:
    """(references: the first frame of every clip not known to copy another file, distinct queries: the rest)."""
    refs, seen = [], set()
    for f in frames:
        if f.clip not in seen and not any(c in f.path for c in COPIES):
            seen.add(f.clip)
            refs.append(f)
    chosen = {f.path for f in refs}
    rng = np.random.default_rng(seed)
    refs = [refs[i] for i in rng.permutation(len(refs))]
    return refs, [f for f in frames if f.path not in chosen]


def index_references(folder: Path, refs: list[Frame], workers: int) -> tuple[list[Frame], list[tuple[str, str]]]:
    """Index the references that do not copy an earlier one; (kept, [(dropped, the one it copies)])."""
    views = list(ordered_map(_views, [f.path for f in refs], workers))
    CopyIndex.build([f.path for f in refs], [v[0] for v in views]).save(folder / "all")
    found = search_all(folder / "all", views, limit=4, self_index=True, workers=workers)
    kept: list[int] = []
    dropped = []
    for j, fs in enumerate(found):
        earlier = [f.ref for f in fs if f.ref in set(kept)]
        if earlier:
            dropped.append((refs[j].path, refs[earlier[0]].path))
        else:
            kept.append(j)
    CopyIndex.build([refs[j].path for j in kept], [views[j][0] for j in kept]).save(folder / "index")
    return [refs[j] for j in kept], dropped


def recall(folder: str, refs: list[Frame], n: int, workers: int, names: tuple[str, ...] = TRANSFORMS) -> dict:
    """Per transform: copies found (their original returned), of how many; the others listed."""
    picked = refs[:n]
    out = {}
    for t, name in enumerate(names):
        jobs = [(f.path, name, 1000 * t + i) for i, f in enumerate(picked)]
        queries = list(ordered_map(_copy_views, jobs, workers))
        found = search_all(folder, queries, limit=1, self_index=False, workers=workers)
        hit = sum(bool(fs) and fs[0].ref == i for i, fs in enumerate(found))
        other = [(picked[i].path, fs[0].name) for i, fs in enumerate(found) if fs and fs[0].ref != i]
        missed = [(picked[i].path, 1000 * t + i) for i, fs in enumerate(found) if not fs]
        out[name] = {"found": hit, "copies": len(picked), "recall": round(hit / len(picked), 4), "other": other,
                     "missed": missed}  # fmt: skip
    return out


def false_matches(folder: str, refs: list[Frame], queries: list[Frame], workers: int) -> dict:
    views = list(ordered_map(_views, [q.path for q in queries], workers))
    found = search_all(folder, views, limit=1, self_index=False, workers=workers)
    cross, inside = [], []
    for q, fs in zip(queries, found):
        if fs:
            r = refs[fs[0].ref]
            (cross if r.family != q.family else inside if r.clip != q.clip else []).append((q.path, r.path))
    pairs = sum(sum(r.family != q.family for r in refs) for q in queries)
    return {
        "queries": len(queries),
        "pairs": pairs,
        "false": len(cross),
        "rate_per_query": len(cross) / len(queries),
        "rate_per_pair": len(cross) / max(pairs, 1),
        "false_pairs": cross[:20],
        "same_family_other_clip": inside[:40],
        "same_family_other_clip_count": len(inside),
    }


def known_pairs(root: Path) -> dict:
    pairs = [(a, b) for a, b in KNOWN_PAIRS if (root / a).is_file() and (root / b).is_file()]
    found = 0
    for a, b in pairs:
        index = CopyIndex.build([b], [view(canonical(read_pixels(str(root / b))))])
        found += bool(index.find(canonical(read_pixels(str(root / a)))))
    return {"pairs": len(pairs), "found": found}


def _windows(canons: list[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """``n`` views for the timing index: random windows (55-95 % a side, mirrored half the time)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        c = canons[k % len(canons)]
        cut = rng.uniform(0, 0.45, 2)
        x0, y0 = (rng.uniform(0, cut) * MATCH_SIDE).astype(int)
        w, h = ((1 - cut) * MATCH_SIDE).astype(int)
        win = np.asarray(Image.fromarray(c[y0 : y0 + h, x0 : x0 + w]).resize((MATCH_SIDE, MATCH_SIDE)))
        out.append(np.ascontiguousarray(win[:, ::-1]) if rng.random() < 0.5 else win)
    return out


def _canon(path: str) -> np.ndarray:
    return canonical(read_pixels(path))


def _cpu() -> float:
    """CPU seconds of this process (all its threads): core-seconds, far less sensitive than wall
    time to the other jobs of a shared machine."""
    return time.process_time()


def _query_seconds(index: CopyIndex, samples: list[np.ndarray]) -> float:
    """Core-seconds per frame: both views of the frame (ORB of it and its mirror image), the search."""
    t0 = _cpu()
    for s in samples:
        index.find(s, limit=1)
    return (_cpu() - t0) / len(samples)


def _brute_seconds(index: CopyIndex, samples: list[np.ndarray], refs: int) -> float:
    """Core-seconds per (frame, reference) pair without the index: the full check (mutual nearest
    descriptors, map, pixel check) of both views against every one of ``refs`` references."""
    views = [query_views(s) for s in samples]
    t0 = _cpu()
    for vs in views:
        for v in vs:
            for ref in range(refs):
                index.check(v, ref)
    return (_cpu() - t0) / (len(views) * refs)


def _power_law(n: tuple[int, int], t: tuple[float, float], target: int) -> float:
    """``t`` at ``target`` on the power law through the two measured points (exponent at least 0)."""
    k = max(np.log(t[1] / t[0]) / np.log(n[1] / n[0]), 0.0) if t[0] > 0 and t[1] > 0 else 1.0
    return t[1] * (target / n[1]) ** k


def speed(refs: list[Frame], queries: list[Frame], sizes: tuple[int, int], timed: int, brute: tuple[int, int],
          workers: int) -> dict:  # fmt: skip
    """Index build and query at the two ``sizes``, brute force on ``brute`` = (frames, references),
    all measured here in core-seconds; the 160K x 20K figures extrapolated from them: the reference
    views per image, the build and the query time on the power law through the two sizes."""
    canons = list(ordered_map(_canon, [f.path for f in refs], workers))
    samples = list(ordered_map(_canon, [q.path for q in queries[:timed]], workers))  # as a shard holds them
    windows = _windows(canons, max(sizes), 0)  # the smaller index holds the first of them
    t0 = _cpu()
    views = reference_views(np.asarray, windows, 1)
    view_s = (_cpu() - t0) / len(views)
    rows = []
    for n in sizes:
        t0 = _cpu()
        index = CopyIndex.build([f"w{k}" for k in range(n)], views[:n])
        rows.append({"references": n, "build_s": _cpu() - t0, "query_ms": 1000 * _query_seconds(index, samples)})
    pair_ms = 1000 * _brute_seconds(index, samples[: brute[0]], min(brute[1], len(index)))
    target, frames = 20_000, 160_000
    ns = (rows[0]["references"], rows[1]["references"])
    build_s = _power_law(ns, (rows[0]["build_s"], rows[1]["build_s"]), target)
    query_ms = _power_law(ns, (rows[0]["query_ms"], rows[1]["query_ms"]), target)
    index_s = target * view_s + build_s + frames * query_ms / 1000
    brute_s = frames * target * 2 * pair_ms / 1000  # both views of every frame against every reference
    return {
        "reference_view_ms": round(1000 * view_s, 1),
        "measured": [{k: round(v, 2) for k, v in r.items()} for r in rows],
        "brute_pair_ms": round(pair_ms, 3),
        "brute_pairs_timed": min(brute[0], len(samples)) * min(brute[1], max(sizes)) * 2,
        "at_20k_build_s": round(build_s, 0),
        "at_20k_query_ms": round(query_ms, 1),
        "index_160k_x_20k_core_hours": round(index_s / 3600, 2),
        "index_160k_x_20k_minutes_on_32_cores": round(index_s / 32 / 60, 1),
        "brute_160k_x_20k_core_hours": round(brute_s / 3600, 0),
        "brute_160k_x_20k_days_on_32_cores": round(brute_s / 32 / 86400, 1),
        "speedup": round(brute_s / index_s, 0),
    }


def accuracy(tmp: Path, refs: list[Frame], queries: list[Frame], args: argparse.Namespace) -> dict:
    """Recall per transform, false matches between distinct frames, known real duplicates (printed)."""
    refs, dropped = index_references(tmp, refs, args.workers)
    print(f"{len(refs)} references ({len(dropped)} more copy another), {len(queries)} distinct queries", flush=True)
    result = {"references": len(refs), "references_copying_another": dropped}
    names = TRANSFORMS + (BEYOND if args.beyond else ())
    result["recall"] = recall(str(tmp / "index"), refs, args.per_transform, args.workers, names)
    result["distinct"] = false_matches(str(tmp / "index"), refs, queries, args.workers)
    has_real = (args.real / "labels.csv").is_file()
    result["known_real_duplicates"] = known_pairs(args.real) if has_real else None
    for k, v in result["recall"].items():
        other, none = len(v["other"]), len(v["missed"])
        print(f"recall {k:<10} {v['found']}/{v['copies']} = {v['recall']:.2%}; another reference {other}, none {none}")
    d = result["distinct"]
    rates = f"{d['rate_per_query']:.3%} per query, {d['rate_per_pair']:.2e} per pair"
    print(f"false matches: {d['false']} of {d['queries']} distinct queries ({rates})")
    print(f"same family, other clip: {d['same_family_other_clip_count']}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    real = Path(os.environ.get("SONODISTILL_REALDATA", "realdata"))
    p.add_argument("--real", type=Path, default=real, help="calibration set (labels.csv; $SONODISTILL_REALDATA)")
    p.add_argument("--synthetic", type=int, default=300, help="synthetic images generated")
    p.add_argument("--per-transform", type=int, default=300, help="copies planted per transform")
    p.add_argument("--sizes", default="400,1600", help="the two index sizes (references) timed: SMALL,LARGE")
    p.add_argument("--timed", type=int, default=50, help="frames searched at each size")
    p.add_argument("--brute", default="5,100", help="FRAMES,REFERENCES checked by brute force")
    p.add_argument("--speed-only", action="store_true", help="only the timing (no recall, no false matches)")
    p.add_argument("--beyond", action="store_true", help="also copies beyond the matcher's promise (docstring)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, help="write every result (lists of misses included) here")
    args = p.parse_args()
    at_least(args, {"synthetic": 1, "per_transform": 1, "timed": 1, "workers": 1})
    sizes = tuple(int(x) for x in args.sizes.split(","))
    brute = tuple(int(x) for x in args.brute.split(","))
    with tempfile.TemporaryDirectory(prefix="decontam-") as tmp:
        tmp = Path(tmp)
        (tmp / "pocus").mkdir()
        frames = pocus_frames(POCUS, tmp / "pocus") + synthetic_frames(tmp / "synth", args.synthetic)
        frames += real_frames(args.real) if (args.real / "labels.csv").is_file() else []
        refs, queries = split_frames(frames, seed=0)
        result = {"frames": len(frames), "families": len({f.family for f in frames})}
        if not args.speed_only:
            result.update(accuracy(tmp, refs, queries, args))
        result["time"] = speed(refs, queries, sizes, args.timed, brute, args.workers)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(f"time: {json.dumps(result['time'])}")
    summary = {k: v["recall"] for k, v in result.get("recall", {}).items()}
    if "distinct" in result:
        d = result["distinct"]
        summary.update(false_per_query=d["rate_per_query"], false_per_pair=d["rate_per_pair"])
        summary.update(known_real_duplicates=result["known_real_duplicates"])
    summary.update({k: v for k, v in result["time"].items() if k != "measured"})
    print(json.dumps(summary))


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
