"""Annotation detection on real frames, and the shard build's speed before and after issue 17.

    .venv/bin/python bench/annotations.py [--seeds 2] [--frames DIR ...] [--rounds 1] [--before 7309d02]

1. Detection. Clean real frames -- the itk-pocus recordings of `make testdata` (single images and
   frames spread over each clip), plus any folder of clean B-mode images given with ``--frames`` --
   and synthetic frames (:func:`shards.synth.render.render`, every preset) are cropped to their scan
   area. A *false flag* is a clean crop in which a mark is found whose box holds no drawn pixel
   (colour in a grey B-mode frame is an overlay: the Clarius logo in two crops). Then marks of every kind are
   planted on each crop (:mod:`shards.synth.marks`: calipers, dotted lines, text, arrows, body
   marks, box outlines; grey or coloured; ``--seeds`` plantings per crop), and a planted mark is
   *found* when detected boxes cover half the pixels it changed. Recall per kind, real and synthetic.
   The same crops again with marks drawn by another hand (:mod:`shards.synth.reader_marks`: OpenCV
   markers, Hershey text, arrows in any direction, solid and dotted ellipses; 1 or 2 px thick,
   anti-aliased or not; white, grey and six colours), which the finder was not tuned on.
   Frames under ``MARK_MIN_FRAME`` px a side are left out and counted (the build looks for coloured
   marks only there: :mod:`shards.annotations`).
   (Marks on labelled real frames, drawn by their devices: ``bench/real_rules.py``.)
2. Cost per frame. On the same real frames, side by side: the whole of ``clean_frame`` and the part
   that finds and inpaints the marks; the share of the cleaning the annotations take.
3. Speed. The same real frames (grey, at their own size; ``CLIP_FRAMES`` of them, repeated as
   needed) are written as one clip per reader family
   (a PNG folder, a JPEG 2000 DICOM cine, an H.264 mp4, a NIfTI sequence) and built with
   ``frames: all`` by the code of this tree and by the code before issue 17 (``git archive
   --before``), each in a fresh process on one worker that builds it ``REPEATS`` times and keeps
   the fastest, in ``--rounds`` alternating rounds (more rounds, steadier medians). Frames/s
   per family for both, and the ratio after/before (target >= 0.9: at most 10 % slower).
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from revision import packages_at  # bench/revision.py, beside this script

from shards.annotations import detect_marks, grey_searched, inpaint
from shards.clean import clean_frame
from shards.decode import decode_image, to_gray
from shards.frames import Sampling
from shards.options import SourceOptions
from shards.readers import ReadError, open_media
from shards.scan_area import crop_to_scan_area, frame_scan_area
from shards.synth import marks as marks_hand
from shards.synth import reader_marks
from shards.synth.marks import covered, plant
from shards.synth.media import write_frames
from shards.synth.presets import PRESETS
from shards.synth.render import render
from shards.thresholds import MARK_MIN_FRAME
from shards.tint import residual_colour
from sonodistill.arg_checks import at_least
from sonodistill.errors import UserError

REPO = Path(__file__).resolve().parents[1]
POCUS = REPO / ".cache" / "itk-pocus" / "itk-pocus-0.3.2" / "tests" / "data"
CLEAN = ("clarius_axial-lateral-resolution-2020.png", "interson-phantom.png", "sonoque_anechoic-3mm-3mm.dcm")
CLIPS = ("butterfly-ocular-phantom.mp4", "clarius-ocular-phantom.mp4", "sonoque-mean-crop.MOV", "sonivate-snr-1.mha")
FAMILIES = ("image", "dicom", "video", "nifti")
BEFORE = "7309d02"  # the last commit before issue 17
CLIP_FRAMES = 24  # frames per clip in the speed part
REPEATS = 3  # builds per process in the speed part; the fastest counts


def real_frames(extra: list[str], per_clip: int = 8) -> list[np.ndarray]:
    """Clean real frames (HxW or HxWx3 uint8): the itk-pocus images and clips, and ``extra`` folders."""
    if not (POCUS / "butterfly-vsync.mp4").is_file():
        raise UserError(f"real recordings missing at {POCUS}: run `make testdata` once")
    frames = [decode_image((POCUS / n).read_bytes()).pixels for n in CLEAN if n.endswith(".png")]
    opts = SourceOptions(frames=Sampling(mode="fps", fps=0.5, max=per_clip))
    for name in (*CLIPS, CLEAN[2]):
        try:
            frames += [f.pixels for f in open_media(str(POCUS / name), name, opts).frames]
        except ReadError:
            continue
    for folder in extra:
        for p in sorted(Path(folder).iterdir()):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
                frames.append(decode_image(p.read_bytes()).pixels)
    return frames


def synthetic_frames(per_preset: int = 2) -> list[np.ndarray]:
    """Clean synthetic B-mode frames (no overlays): ``per_preset`` of every preset, 240x320."""
    return [
        render(p, np.random.default_rng([i, k]), size=(240, 320)).image
        for i, p in enumerate(sorted(PRESETS))
        for k in range(per_preset)
    ]


def _crops(frames: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Each frame's scan-area crop (surround blanked), its mask, and its drawn pixels: the colour the
    pipeline's residual finds in a colour frame (a vendor's logo, say), ``None`` for a grey frame."""
    out = []
    for px in frames:
        gray = to_gray(px)
        area = frame_scan_area(gray, px if px.ndim == 3 else None)
        if area.small_mask.any():
            mask = area.mask_in_bbox()
            x0, y0, x1, y1 = area.bbox
            drawn = residual_colour(px[y0:y1, x0:x1], mask) if px.ndim == 3 else None
            out.append((crop_to_scan_area(gray, area), mask, drawn))
    return out


def _false(marks: list, drawn: np.ndarray | None) -> bool:
    """A mark found on a clean crop is false unless its box holds drawn (coloured) pixels: in a grey
    B-mode frame colour is an overlay, so finding it is right (the module doc, part 1)."""
    return any(drawn is None or not drawn[y0:y1, x0:x1].any() for m in marks for x0, y0, x1, y1 in [m.box])


def detection(name: str, frames: list[np.ndarray], seeds: int, hand=marks_hand) -> dict:
    """False flags on the clean crops and recall of the marks planted on them by ``hand`` (a module
    with ``plant`` and ``KINDS``: module doc, part 1)."""
    hits, total, flagged, overlays = Counter(), Counter(), 0, 0
    searched = [px for px in frames if grey_searched(px.shape)]
    small = len(frames) - len(searched)
    crops = _crops(searched)
    for i, (crop, mask, drawn) in enumerate(crops):
        found = detect_marks(crop, mask, drawn)  # as shards.clean runs it: grey crop + colour residual
        flagged += _false(found, drawn)
        overlays += bool(found) and not _false(found, drawn)
        for seed in range(seeds):
            img, truth = hand.plant(crop, mask, np.random.default_rng([i, seed]), grey_only=seed % 2 == 0)
            grey = to_gray(img) if img.ndim == 3 else img
            marks = detect_marks(grey, mask, residual_colour(img, mask) if img.ndim == 3 else None)
            for kind, box in truth:
                total[kind] += 1
                hits[kind] += covered(img, crop, box, marks)
    recall = {k: round(hits[k] / total[k], 3) for k in hand.KINDS if total[k]}
    overall = sum(hits.values()) / max(sum(total.values()), 1)
    if small:
        print(f"{name}: {small} frames under {MARK_MIN_FRAME} px left out (coloured marks only are searched there)")
    print(f"{name}: {len(crops)} clean crops, false flags {flagged} ({flagged / len(crops):.3f}), "
          f"drawn overlays found on {overlays}; planted {sum(total.values())}, recall {overall:.3f}; "
          + ", ".join(f"{k} {hits[k]}/{total[k]}" for k in hand.KINDS))  # fmt: skip
    return {"crops": len(crops), "false_flags": flagged, "false_flag_rate": round(flagged / len(crops), 4),
            "overlays_found": overlays, "recall": round(overall, 4), "recall_by_kind": recall,
            "planted": sum(total.values()), "small_frames_left_out": small}  # fmt: skip


def cost(frames: list[np.ndarray], seeds: int) -> dict:
    """Seconds per frame of ``clean_frame`` and of finding + inpainting the marks, side by side
    on the same frames with marks planted (module doc, part 2)."""
    whole = marks = 0.0
    n = 0
    for i, (crop, mask, _) in enumerate(_crops(frames)):
        for seed in range(seeds):
            img, _ = plant(crop, mask, np.random.default_rng([i, seed, 1]), grey_only=True)
            img = to_gray(img) if img.ndim == 3 else img
            t0 = time.perf_counter()
            clean_frame(img, 256, annotations="inpaint")
            t1 = time.perf_counter()
            inpaint(img, detect_marks(img, mask))
            t2 = time.perf_counter()
            whole, marks, n = whole + t1 - t0, marks + t2 - t1, n + 1
    share = marks / whole
    print(f"cost: clean_frame {1000 * whole / n:.1f} ms/frame, of which marks found + inpainted "
          f"{1000 * marks / n:.1f} ms ({share:.2f} of the cleaning), {n} frames")  # fmt: skip
    return {"frames": n, "clean_ms": round(1000 * whole / n, 2), "marks_ms": round(1000 * marks / n, 2),
            "marks_share": round(share, 3)}  # fmt: skip


CHILD = """
import json, sys, time
from shards.build import BuildSettings, build_shards
from shards.catalogue import SourceConfig
from shards.frames import Sampling
from shards.options import SourceOptions
folder, out, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
src = SourceConfig("b", folder, SourceOptions(frames=Sampling(mode="all", max=None), max_frames_per_clip=100000))
settings = BuildSettings(size=256, workers=1, near_duplicate_distance=-1, clip_duplicate_distance=-1)
best = float("inf")
for r in range(repeats):
    t0 = time.perf_counter()
    m = build_shards([src], f"{out}/{r}", settings, progress=False)
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"frames": m["per_source"]["b"]["frames"], "seconds": best}))
"""


def _build_rate(tree: Path, folder: Path, out: Path, repeats: int = REPEATS) -> float:
    """Frames/s of ``folder`` built by the code in ``tree`` in a fresh process on one worker: the
    fastest of ``repeats`` builds (the others share the machine with whatever else runs on it)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    # cwd: ``python -c`` puts the working directory first on sys.path, before PYTHONPATH
    cmd = [sys.executable, "-c", CHILD, str(folder), str(out), str(repeats)]
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: build by {tree} failed: {proc.stderr.strip().splitlines()[-1]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return r["frames"] / r["seconds"]


def speed(frames: list[np.ndarray], before: str, rounds: int, tmp: Path) -> dict:
    """Frames/s per reader family, this tree and ``before``, alternating (module doc, part 2)."""
    old = packages_at(before, tmp / "before")
    grey = [to_gray(f) for f in frames]
    shape = Counter(g.shape for g in grey).most_common(1)[0][0]
    clip = [g for g in grey if g.shape == shape]
    clip = (clip * (CLIP_FRAMES // len(clip) + 1))[:CLIP_FRAMES]  # the same frames again: a longer clip
    rows = {}
    for family in FAMILIES:
        folder = tmp / family
        write_frames(family, clip, folder)
        rates: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(rounds):
            for name, tree in (("before", old), ("after", REPO)) if r % 2 == 0 else (("after", REPO), ("before", old)):
                rates[name].append(_build_rate(tree, folder, tmp / f"out_{family}_{name}_{r}"))
        b, a = float(np.median(rates["before"])), float(np.median(rates["after"]))
        rows[family] = {"frames": len(clip), "before_fps": round(b, 1), "after_fps": round(a, 1),
                        "ratio": round(a / b, 3)}  # fmt: skip
        print(f"{family:>6}  {len(clip)} frames {shape[1]}x{shape[0]}  before {b:6.1f} f/s  after {a:6.1f} f/s  "
              f"after/before {a / b:.3f}")  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=2, help="plantings per clean crop")
    ap.add_argument("--frames", nargs="*", default=[], help="more folders of clean B-mode images (PNG/JPEG)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating build rounds per family")
    ap.add_argument("--before", default=BEFORE, help="the commit to compare the build speed with")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    at_least(args, {"seeds": 1, "rounds": 1})
    t0 = time.time()
    frames = real_frames(args.frames)
    result: dict = {"bench": "annotations", "frames": len(frames)}
    synthetic = synthetic_frames()
    result["detection"] = {
        "real": detection("real", frames, args.seeds),
        "synthetic": detection("synthetic", synthetic, args.seeds),
        "real_reader": detection("real, reader's hand", frames, args.seeds, reader_marks),
        "synthetic_reader": detection("synthetic, reader's hand", synthetic, args.seeds, reader_marks),
    }
    result["cost"] = cost(frames, 1)
    if not args.skip_speed:
        with tempfile.TemporaryDirectory() as tmp:
            result["build"] = speed(frames, args.before, args.rounds, Path(tmp))
            result["worst_ratio"] = min(r["ratio"] for r in result["build"].values())
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
