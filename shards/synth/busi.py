"""``--layout busi``: the real BUSI layout (Al-Dhabyani et al. 2020), breast preset.

    OUT/benign/benign (1).png        OUT/benign/benign (1)_mask.png   [OUT/benign/benign (1)_mask_1.png]
    OUT/malignant/malignant (1).png  OUT/malignant/malignant (1)_mask.png ...
    OUT/normal/normal (1).png        OUT/normal/normal (1)_mask.png   (all zero)

Images are grey frames stored as RGB PNG with three equal channels, 400-600 px per side, cropped
close to the scan area (no burned-in text). Masks are 8-bit PNG, 0/255, the image's size; an image
with two lesions has one mask per lesion (``_mask.png``, ``_mask_1.png``), so a loader must OR
them. Class counts follow 437:210:133 scaled to n (each class at least one when n >= 3); about
3 % of lesion images (at least one when there are >= 10) hold two lesions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shards.synth.lesions import BUSI_PROPORTIONS
from shards.synth.render import render
from shards.synth.runner import check_args, image_rng, plan_rng, run_jobs, split_counts, write_truth
from shards.synth.storage import encode, write_file

CLASSES = tuple(BUSI_PROPORTIONS)  # benign, malignant, normal


def _write(task: tuple[str, int, int, int, int, str]) -> dict:
    cls, k, index, n_lesions, seed, out = task
    rng = image_rng(seed, "busi", index)
    size = (int(rng.integers(400, 601)), int(rng.integers(400, 601)))
    f = render("breast", rng, lesion=None if cls == "normal" else cls, size=size, n_lesions=n_lesions, tight=True)
    stem = f"{cls}/{cls} ({k})"
    write_file(Path(out) / f"{stem}.png", encode(f.image, "png_rgb"))
    masks = f.lesion_masks or [np.zeros_like(f.scan_mask)]
    names = [f"{stem}_mask.png"] + [f"{stem}_mask_{j}.png" for j in range(1, len(masks))]
    for name, m in zip(names, masks):
        write_file(Path(out) / name, encode(m.astype(np.uint8) * 255, "png8"))
    return {
        "index": index,
        "path": f"{stem}.png",
        "masks": names,
        "source": "breast",
        "kind": "ultrasound",
        "lesion": f.lesion,
        "n_lesions": len(f.lesion_masks),
        "bbox": list(f.bbox),
        "geometry": f.geometry,
        "overlays": f.overlays,
        "format": "png_rgb",
        "size": [f.image.shape[1], f.image.shape[0]],
    }


def write_busi(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    *,
    truth: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = False,
) -> list[dict]:
    """Write ``n`` BUSI-style images (+ masks) under ``out``; return the truth records."""
    out = check_args(out, n, seed, truth, workers)
    counts = split_counts(n, [BUSI_PROPORTIONS[c] for c in CLASSES])
    tasks = []
    for cls, c in zip(CLASSES, counts):
        tasks += [[cls, k, len(tasks) + k - 1, 1, seed, str(out)] for k in range(1, c + 1)]
    lesion_idx = [i for i, t in enumerate(tasks) if t[0] != "normal"]
    if len(lesion_idx) >= 10:
        n_two = max(1, int(round(0.03 * len(lesion_idx))))
        for i in plan_rng(seed, "busi").choice(lesion_idx, size=n_two, replace=False):
            tasks[i][3] = 2
    records = run_jobs(_write, [tuple(t) for t in tasks], workers, progress, "busi", out)
    write_truth(truth, records)
    return records
