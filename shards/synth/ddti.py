"""``--layout ddti``: thyroid nodule segmentation data in DDTI's paired-folder layout.

    OUT/image/<patient>_<k>.png     grey 8-bit PNG
    OUT/mask/<patient>_<k>.png      8-bit PNG, 0/255, same size

``<patient>`` is the leading integer (1, 2, ...), ``<k>`` numbers that patient's images from 1;
each patient has 1-4 images (the last one may have fewer so the total is exactly n). Images of
one patient share the anatomy, machine settings and nodule (different speckle, gain and a small
probe shift), so splits must be made per patient. Every image has one nodule; each patient's is
benign-looking (70 %) or malignant-looking (30 %).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shards.synth.render import render
from shards.synth.runner import check_args, image_rng, plan_rng, run_jobs, write_truth
from shards.synth.storage import encode, write_file


def _write(task: tuple[int, int, str, int, int, str]) -> dict:
    patient, k, cls, index, seed, out = task
    anatomy = image_rng(seed, "ddti", patient, 0)  # same draws for every image of the patient
    f = render("thyroid", image_rng(seed, "ddti", patient, k), lesion=cls, tight=True, anatomy_rng=anatomy)
    name = f"{patient}_{k}.png"
    write_file(Path(out) / "image" / name, encode(f.image, "png8"))
    write_file(Path(out) / "mask" / name, encode(f.mask.astype(np.uint8) * 255, "png8"))
    return {
        "index": index,
        "path": f"image/{name}",
        "mask": f"mask/{name}",
        "patient": patient,
        "source": "thyroid",
        "kind": "ultrasound",
        "lesion": f.lesion,
        "bbox": list(f.bbox),
        "geometry": f.geometry,
        "overlays": f.overlays,
        "format": "png8",
        "size": [f.image.shape[1], f.image.shape[0]],
    }


def write_ddti(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    *,
    truth: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = False,
) -> list[dict]:
    """Write ``n`` DDTI-style image/mask pairs under ``out``; return the truth records."""
    out = check_args(out, n, seed, truth, workers)
    rng = plan_rng(seed, "ddti")
    tasks = []
    patient = 0
    while len(tasks) < n:
        patient += 1
        cls = "malignant" if rng.random() < 0.3 else "benign"
        for k in range(1, int(rng.integers(1, 5)) + 1):
            if len(tasks) < n:
                tasks.append((patient, k, cls, len(tasks), seed, str(out)))
    records = run_jobs(_write, tasks, workers, progress, "ddti", out)
    write_truth(truth, records)
    return records
