"""``--layout corpus``: an unlabeled pretraining corpus, one folder per source dataset.

``OUT/<source>/...`` holds that preset's frames, stored the way real collections are: mostly
8-bit grey PNG, some JPEG (quality 90), some RGB PNG with equal channels, and 16-bit PNG for
musculoskeletal; fetal and liver frames sit in per-case sub-folders, some breast frames in
``extra/``. Mixed in (counts = fraction x n, rounded):

- colour-Doppler frames (``doppler_fraction``, stored RGB);
- junk (``junk_fraction``): blank frames, document/screenshot pages, colourful photos;
- duplicates (``duplicate_fraction``): exact byte copies or near duplicates (re-encoded JPEG,
  brightness shifted by a few levels, resized by 1-2 %) of an earlier ultrasound frame, in the
  same or another source folder.

Breast, thyroid and liver frames carry lesions in BUSI's proportions. The truth JSONL (outside
OUT) has one record per file: path, source, kind (ultrasound|doppler|junk|duplicate|
near_duplicate), duplicate_of, variant (how a near duplicate was made), preset, bbox of the scan
area in file pixels (x0, y0, x1, y1; exclusive ends), geometry, overlays, lesion, format,
size [width, height], index.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shards.synth.junk import render_junk
from shards.synth.lesions import BUSI_PROPORTIONS
from shards.synth.presets import PRESETS
from shards.synth.render import render
from shards.synth.runner import check_args, image_rng, plan_rng, run_jobs, split_counts, write_truth
from shards.synth.storage import EXTENSIONS, decode, encode, write_file
from sonodistill.errors import UserError

# Relative size of each source dataset (real corpora are unbalanced).
SOURCE_WEIGHTS = {
    "breast": 1.2,
    "thyroid": 1.0,
    "cardiac": 0.9,
    "fetal": 0.9,
    "musculoskeletal": 0.8,
    "liver": 1.0,
}
# Storage mix per source: probabilities of png8, png_rgb, jpeg, png16.
STORAGE = {
    "breast": (0.8, 0.1, 0.1, 0.0),
    "thyroid": (0.7, 0.1, 0.2, 0.0),
    "cardiac": (0.8, 0.15, 0.05, 0.0),
    "fetal": (0.7, 0.1, 0.2, 0.0),
    "musculoskeletal": (0.3, 0.0, 0.0, 0.7),
    "liver": (0.75, 0.15, 0.1, 0.0),
}
STORAGE_FORMATS = ("png8", "png_rgb", "jpeg", "png16")
PREFIX = {
    "breast": "img_",
    "thyroid": "thy",
    "cardiac": "A4C_",
    "fetal": "fetal_",
    "musculoskeletal": "msk_",
    "liver": "abd_",
}
LESION_PRESETS = ("breast", "thyroid", "liver")
NEAR_VARIANTS = ("jpeg", "brightness", "resize")


@dataclass(frozen=True)
class Item:
    index: int
    kind: str  # ultrasound | doppler | junk | duplicate | near_duplicate
    source: str  # folder under OUT
    fmt: str
    path: str  # relative to OUT
    preset: str | None = None
    original: int | None = None  # duplicates: index of the copied item
    variant: str | None = None  # near duplicates: jpeg | brightness | resize


def _path(source: str, index: int, ordinal: int, fmt: str, rng: np.random.Generator) -> str:
    name = f"{PREFIX[source]}{index:06d}{EXTENSIONS[fmt]}"
    if source == "fetal":
        return f"fetal/case_{ordinal // 6:03d}/{name}"
    if source == "liver":
        return f"liver/patient_{ordinal // 8:03d}/{name}"
    if source == "breast" and rng.random() < 0.25:
        return f"breast/extra/{name}"
    return f"{source}/{name}"


def plan(
    n: int,
    seed: int,
    sources: Sequence[str],
    doppler_fraction: float,
    junk_fraction: float,
    duplicate_fraction: float,
) -> list[Item]:
    """Decide, for every file index, its kind, folder, format and (for duplicates) original."""
    rng = plan_rng(seed, "corpus")
    n_dup, n_junk = int(round(n * duplicate_fraction)), int(round(n * junk_fraction))
    n_us = n - n_dup - n_junk
    n_dop = min(int(round(n * doppler_fraction)), n_us)
    if n_us - n_dop < 1:
        raise UserError(f"--n {n}: too small for the Doppler/junk/duplicate fractions (no B-mode frame left)")
    counts = split_counts(n_us, [SOURCE_WEIGHTS.get(s, 1.0) for s in sources])
    slots = [("ultrasound", s) for s, c in zip(sources, counts) for _ in range(c)]
    for i in rng.choice(n_us, size=n_dop, replace=False):
        slots[i] = ("doppler", slots[i][1])
    slots += [("junk", str(rng.choice(sources))) for _ in range(n_junk)]
    slots += [("dup", "") for _ in range(n_dup)]
    order = rng.permutation(len(slots))
    slots = [slots[i] for i in order]
    first_us = next(i for i, (k, _) in enumerate(slots) if k == "ultrasound" or k == "doppler")
    if any(k == "dup" for k, _ in slots[:first_us]):  # duplicates need an earlier original
        first = next(i for i, (k, _) in enumerate(slots) if k == "dup")
        slots[first], slots[first_us] = slots[first_us], slots[first]
    items: list[Item] = []
    ordinal = {s: 0 for s in sources}
    for i, (kind, source) in enumerate(slots):
        if kind == "dup":
            originals = [it for it in items if it.kind == "ultrasound"]
            if not originals:  # only Doppler frames came first: fall back to one of them
                originals = [it for it in items if it.kind == "doppler"]
            orig = originals[int(rng.integers(len(originals)))]
            source = orig.source if rng.random() < 0.5 else str(rng.choice(sources))
            exact = rng.random() < 0.4
            variant = None if exact else str(rng.choice(NEAR_VARIANTS))
            fmt = "jpeg" if variant == "jpeg" else orig.fmt
            path = _path(source, i, ordinal[source], fmt, rng)
            items.append(
                Item(
                    i,
                    "duplicate" if exact else "near_duplicate",
                    source,
                    fmt,
                    path,
                    orig.preset,
                    orig.index,
                    variant,
                )
            )
        else:
            probs = STORAGE.get(source, (1.0, 0.0, 0.0, 0.0))
            fmt = str(rng.choice(STORAGE_FORMATS, p=probs))
            if kind in ("doppler", "junk") and fmt in ("png8", "png16"):
                fmt = "png_rgb"  # colour content is stored as RGB
            items.append(
                Item(
                    i,
                    kind,
                    source,
                    fmt,
                    _path(source, i, ordinal[source], fmt, rng),
                    None if kind == "junk" else source,
                )
            )
        ordinal[source] += 1
    return items


def _record(item: Item, **kw) -> dict:
    r = {
        "index": item.index,
        "path": item.path,
        "source": item.source,
        "kind": item.kind,
        "preset": item.preset,
        "duplicate_of": None,
        "variant": item.variant,  # near duplicates: jpeg | brightness | resize
        "bbox": None,
        "geometry": None,
        "overlays": [],
        "lesion": None,
        "format": item.fmt,
    }
    r.update(kw)
    return r


def _fit_format(image: np.ndarray, fmt: str) -> str:
    return "png_rgb" if image.ndim == 3 and fmt in ("png8", "png16") else fmt


def _write_frame(task: tuple[Item, int, str, bool]) -> dict:
    item, seed, out, overlays = task
    rng = image_rng(seed, "corpus", item.index)
    if item.kind == "junk":
        size = (int(rng.integers(300, 701)), int(rng.integers(300, 701)))
        image, _ = render_junk(rng, size)
        fmt = _fit_format(image, item.fmt)
        write_file(Path(out) / item.path, encode(image, fmt))
        return _record(item, format=fmt, size=[size[1], size[0]])
    lesion = None
    if item.preset in LESION_PRESETS:
        kinds = list(BUSI_PROPORTIONS)
        w = np.array([BUSI_PROPORTIONS[k] for k in kinds], dtype=float)
        lesion = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    f = render(item.preset, rng, lesion=lesion, overlays=overlays, doppler=item.kind == "doppler")
    fmt = _fit_format(f.image, item.fmt)
    write_file(Path(out) / item.path, encode(f.image, fmt))
    return _record(
        item,
        format=fmt,
        bbox=list(f.bbox),
        geometry=f.geometry,
        overlays=f.overlays,
        lesion=f.lesion if item.preset in LESION_PRESETS else None,
        size=[f.image.shape[1], f.image.shape[0]],
    )


def _write_duplicate(task: tuple[Item, dict, int, str]) -> dict:
    item, orig, seed, out = task
    src = Path(out) / orig["path"]
    rec = {k: orig[k] for k in ("bbox", "geometry", "overlays", "lesion", "size")}
    if item.kind == "duplicate":
        write_file(Path(out) / item.path, src.read_bytes())
        return _record(item, duplicate_of=orig["path"], format=orig["format"], **rec)
    rng = image_rng(seed, "corpus", item.index)
    image = decode(src)
    fmt = orig["format"]
    if item.variant == "jpeg":
        data = encode(image, "jpeg", quality=int(rng.integers(70, 89)))
        fmt = "jpeg"
    elif item.variant == "brightness":
        delta = int(rng.integers(3, 11)) * int(rng.choice([-1, 1]))
        data = encode(np.clip(image.astype(np.int16) + delta, 0, 255).astype(np.uint8), _fit_format(image, fmt))
    else:
        scale = float(rng.uniform(0.98, 0.99) if rng.random() < 0.5 else rng.uniform(1.01, 1.02))
        h, w = image.shape[:2]
        nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        data = encode(image, _fit_format(image, fmt))
        if rec["bbox"] is not None:
            x0, y0, x1, y1 = rec["bbox"]
            rec["bbox"] = [
                int(round(x0 * nw / w)),
                int(round(y0 * nh / h)),
                int(round(x1 * nw / w)),
                int(round(y1 * nh / h)),
            ]
        rec["size"] = [nw, nh]
    write_file(Path(out) / item.path, data)
    return _record(item, duplicate_of=orig["path"], format=fmt, **rec)


def write_corpus(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    *,
    sources: Sequence[str] | None = None,
    overlays: bool = True,
    doppler_fraction: float = 0.03,
    junk_fraction: float = 0.02,
    duplicate_fraction: float = 0.03,
    truth: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = False,
) -> list[dict]:
    """Write ``n`` files in the corpus layout under ``out``; return the truth records (index order)."""
    sources = list(PRESETS) if sources is None else list(sources)
    unknown = [s for s in sources if s not in PRESETS]
    if unknown or not sources:
        raise UserError(
            f"--sources: unknown source {unknown[0] if unknown else '(none given)'}; "
            f"expected some of {', '.join(PRESETS)}"
        )
    if len(set(sources)) != len(sources):
        raise UserError(f"--sources: each source at most once, got {','.join(sources)}")
    for name, v in (
        ("--doppler-fraction", doppler_fraction),
        ("--junk-fraction", junk_fraction),
        ("--duplicate-fraction", duplicate_fraction),
    ):
        if not 0.0 <= float(v) < 1.0:
            raise UserError(f"{name}: expected a fraction in [0, 1), got {v}")
    if doppler_fraction + junk_fraction + duplicate_fraction >= 1.0:
        raise UserError(
            "--doppler-fraction + --junk-fraction + --duplicate-fraction: expected a sum below 1 (the rest are "
            f"B-mode frames), got {doppler_fraction + junk_fraction + duplicate_fraction:g}"
        )
    out = check_args(out, n, seed, truth, workers)
    items = plan(n, seed, sources, doppler_fraction, junk_fraction, duplicate_fraction)
    firsts = [it for it in items if it.kind not in ("duplicate", "near_duplicate")]
    done = run_jobs(_write_frame, [(it, seed, str(out), overlays) for it in firsts], workers, progress, "corpus", out)
    by_index = {r["index"]: r for r in done}
    dups = [it for it in items if it.kind in ("duplicate", "near_duplicate")]
    for r in run_jobs(
        _write_duplicate,
        [(it, by_index[it.original], seed, str(out)) for it in dups],
        workers,
        progress,
        "duplicates",
        out,
    ):
        by_index[r["index"]] = r
    records = [by_index[i] for i in range(n)]
    write_truth(truth, records)
    return records
