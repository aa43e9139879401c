"""Batched ultrasound augmentations vs the ``usaugment`` package, side by side, same images.

    .venv/bin/python bench/augment.py [--batch 64] [--size 256] [--repeats 5] [--threads 1] [--examples aug.png]

Images: ``--batch`` synthetic B-mode frames (``shards.synth.render``, every anatomy preset in
turn) cropped to their scan area and resized to ``--size`` as the shard builder does. Each side
gets the same frames and applies the effects usaugment offers, each with probability 1:
depth attenuation, shadow, haze, speckle reduction.

- usaugment (v1.0.1): per image, albumentations ``Compose`` of its four transforms on float32
  numpy frames, given the true scan mask (it cannot find one itself).
- ours: ``pretrain.augment``'s ultrasound stage on the whole uint8 batch as a torch tensor,
  including the uint8->float conversion and estimating the scan area and beam geometry (once
  per batch, shared by the effects); "geometry given" times an effect with the batch's geometry
  already computed, i.e. what it adds to a chain.

Timed with ``--threads`` torch threads, default 1: usaugment's numpy/scikit-image path is
single-threaded, so 1 is the same-threads comparison. Rates are images per CPU-second of the
timing thread (per process with several threads), so other jobs on a shared machine do not
count; median of ``--repeats`` runs, alternating sides. Also: each transform alone, and our
whole presets on the same batch (``us-physics``: crop, flip, all six effects at their default
probabilities, depth blur; ``us``; ``default``).

The speckle reduction is most of the chain; its floor on this machine is measured in the same run
(:func:`despeckle_floor`): its 12 exps per pixel at the rate torch computes exp, plus its element
passes (counted from ``us_effects._bilateral_pairs``: :data:`PAIR_PASSES`, :data:`FIXED_PASSES`)
at the rate torch copies a chunk of the filter's size, with the DRAM copy rate beside it; and the
chain's ratio to usaugment were the filter at that floor. The last line is JSON, with every ratio
against its target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import

import numpy as np
import torch
from PIL import Image

from pretrain.augment import PretrainAugmentConfig, build_augment, build_effects, to_unit_float
from pretrain.us_geometry import estimate_geometry
from sonodistill.arg_checks import at_least
from sonodistill.figures import save_figure

EFFECTS = ("attenuation", "shadow", "haze", "despeckle")
OURS_TO_THEIRS = {
    "attenuation": "DepthAttenuation",
    "shadow": "GaussianShadow",
    "haze": "HazeArtifact",
    "despeckle": "SpeckleReduction",
}
ALL_EFFECTS = ("attenuation", "shadow", "haze", "speckle", "despeckle", "gain")
# Issue 11's targets: every effect alone >= 1.5x usaugment's equivalent, the chained four >= 5x.
TARGETS = {"four_effects": 5.0, **dict.fromkeys(EFFECTS, 1.5)}


def frames(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 frames ``[n,size,size]`` cropped to their scan area, and the scan masks."""
    from shards.synth import PRESETS, render

    rng = np.random.default_rng(seed)
    names = list(PRESETS)
    images, masks = [], []
    for i in range(n):
        f = render(names[i % len(names)], rng, size=(size, size), tight=True)
        x0, y0, x1, y1 = f.bbox
        img = np.where(f.scan_mask, f.image, 0)[y0:y1, x0:x1]
        msk = f.scan_mask[y0:y1, x0:x1]
        images.append(np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)))
        masks.append(np.asarray(Image.fromarray(msk.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0)
    return np.stack(images), np.stack(masks)


def ours_stage(effects: tuple[str, ...], shared: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Our ultrasound stage with ``effects`` at p=1 on a uint8 batch, conversion included.

    ``shared``: the batch as float, whose scan geometry and its maps are estimated here once,
    outside the timing — what one effect costs inside a chain that already paid the geometry
    (as usaugment is handed the scan mask)."""
    cfg = PretrainAugmentConfig(preset="us-physics", blur_p=0.0)
    for name in ALL_EFFECTS:
        getattr(cfg, name).p = 1.0 if name in effects else 0.0
    stage = build_effects(cfg)
    geometry = None
    if shared is not None:
        geometry = estimate_geometry(shared, cfg.scan_threshold, stage.workspace)
        geometry.radius(), geometry.depth, geometry.mask()  # every map, computed once

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return stage(to_unit_float(batch), geometry)

    return run


def theirs_pipeline(effects: tuple[str, ...]) -> Callable[[np.ndarray, np.ndarray], list[np.ndarray]]:
    import albumentations as A
    from usaugment.albumentations import DepthAttenuation, GaussianShadow, HazeArtifact, SpeckleReduction

    make = {
        "attenuation": DepthAttenuation,
        "shadow": GaussianShadow,
        "haze": HazeArtifact,
        "despeckle": SpeckleReduction,
    }
    compose = A.Compose([make[e](p=1.0) for e in effects])

    def run(images: np.ndarray, masks: np.ndarray) -> list[np.ndarray]:
        masks_f = masks.astype(np.float32)
        return [compose(image=img.astype(np.float32) / 255.0, scan_mask=m)["image"] for img, m in zip(images, masks_f)]

    return run


# Element passes (float32 reads + writes) per padded pixel that us_effects._bilateral_pairs makes for
# each pixel pair besides the exp: difference 3, negative square 2, clamp 2, two addcmul_ 4 each, two
# add_ 3 each; and once per pixel outside the pair loop: scale 2, pad 2, clone 2, ones 1, the two
# divisions 3 + 2, the scan-area mask 3 (augment_effects). Counted from the code, for the floor below.
PAIR_PASSES = 21
FIXED_PASSES = 15


# CPU time of the measuring thread (of the process when torch runs several threads): on a shared
# machine wall time also counts other jobs' turns, CPU time only the work itself.
clock = time.thread_time


def median_rate(fn: Callable[[], object], n_images: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return n_images / statistics.median(times)


def compare(
    effects: tuple[str, ...], images: np.ndarray, masks: np.ndarray, batch: torch.Tensor, repeats: int
) -> tuple[float, float, float]:
    """Images/s of ours, usaugment, and ours given the batch's geometry, alternating the sides."""
    ours, theirs = ours_stage(effects), theirs_pipeline(effects)
    given = ours_stage(effects, shared=to_unit_float(batch))
    o, t, g = [], [], []
    for _ in range(repeats):  # alternate the sides so load on a shared machine hits both alike
        o.append(median_rate(lambda: ours(batch), len(images), 1))
        t.append(median_rate(lambda: theirs(images, masks), len(images), 1))
        g.append(median_rate(lambda: given(batch), len(images), 1))
    return statistics.median(o), statistics.median(t), statistics.median(g)


def per_element_ns(fn: Callable[[], object], elements: int, repeats: int) -> float:
    """CPU nanoseconds per element of ``fn`` (median of ``repeats`` timed calls after a warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return 1e9 * statistics.median(times) / elements


def despeckle_without_exp(batch: torch.Tensor, kernel: int, repeats: int) -> tuple[float, float]:
    """Images/s of the bare filter (``us_effects.speckle_reduction``) as it is, and with its exp
    replaced by ``abs_``: the same passes over the same memory without the transcendental. A
    memory-bound filter would not care; the difference is what its exps cost."""
    from unittest import mock

    from pretrain.us_effects import speckle_reduction

    x = to_unit_float(batch)
    n = x.shape[0]
    sigma_space, sigma_color = torch.full((n,), 1.25), torch.full((n,), 0.175)  # the default ranges' middles

    def run() -> torch.Tensor:
        return speckle_reduction(x, sigma_space, sigma_color, kernel)

    with_exp = median_rate(run, n, repeats)
    with mock.patch.object(torch.Tensor, "exp_", torch.Tensor.abs_):
        without = median_rate(run, n, repeats)
    return with_exp, without


def despeckle_floor(size: int, kernel: int, repeats: int) -> dict[str, float]:
    """What the speckle reduction cannot go below on this machine, measured now: its exps at the
    rate torch computes exp over one filter chunk (values in the filter's range [-30, 0]), plus its
    element passes at the rate torch copies one chunk (cache-resident, like the filter's working
    set); and the memory-copy rate of a 256 MiB array (DRAM), for comparison."""
    from pretrain.us_effects import BILATERAL_CPU_CHUNK_BYTES, EXP_FLOOR

    pad = kernel // 2
    pixels = (size + 2 * pad) ** 2
    chunk = max(1, BILATERAL_CPU_CHUNK_BYTES // (size * size * 4)) * pixels
    src = torch.rand(chunk).mul_(EXP_FLOOR)
    dst = torch.empty_like(src)
    exp_ns = per_element_ns(lambda: torch.exp(src, out=dst), chunk, repeats * 10)
    pass_ns = per_element_ns(lambda: dst.copy_(src), chunk, repeats * 10) / 2  # a copy: one read, one write
    big = torch.ones(64 << 20)  # 256 MiB
    big_dst = torch.zeros_like(big)
    dram_ns = per_element_ns(lambda: big_dst.copy_(big), big.numel(), repeats) / 2
    pairs = (kernel * kernel - 1) // 2
    passes = pairs * PAIR_PASSES + FIXED_PASSES
    floor_s = pixels * (pairs * exp_ns + passes * pass_ns) * 1e-9
    return {
        "exp_ns_per_element": round(exp_ns, 3),
        "cache_gb_s": round(8 / pass_ns, 1),  # bytes read + written per second, float32
        "dram_gb_s": round(8 / dram_ns, 1),
        "bytes_per_image": (passes + 2 * pairs) * pixels * 4,  # the exps' own read and write included
        "floor_img_s": round(1 / floor_s, 1),
        "exp_share_of_floor": round(pixels * pairs * exp_ns * 1e-9 / floor_s, 3),
    }


def save_examples(path: str, images: np.ndarray, masks: np.ndarray) -> None:
    from sonodistill.figures import pyplot

    plt = pyplot()

    torch.manual_seed(0)
    np.random.seed(0)  # usaugment draws from numpy's and Python's global generators
    random.seed(0)
    k = min(6, len(images))
    batch = torch.from_numpy(images[:k]).unsqueeze(1)
    theirs = np.stack(theirs_pipeline(EFFECTS)(images[:k], masks[:k]))
    rows = {
        "input": batch.float() / 255,
        "ours: 4 effects": ours_stage(EFFECTS)(batch),
        "usaugment: 4 effects": torch.from_numpy(theirs)[:, None],
        "ours: us-physics preset": build_augment(PretrainAugmentConfig(preset="us-physics"), images.shape[-1])(batch),
    }
    fig, axes = plt.subplots(len(rows), k, figsize=(2.2 * k, 2.3 * len(rows)))
    for r, (title, imgs) in enumerate(rows.items()):
        for c in range(k):
            ax = axes[r, c]
            ax.imshow(imgs[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for ours (usaugment is single-threaded: 1 is the same-threads comparison)",
    )
    ap.add_argument("--examples", default=None, help="save a PNG of example views here")
    args = ap.parse_args()
    at_least(args, {"batch": 1, "size": 32, "repeats": 1, "threads": 1})

    import cv2

    cv2.setNumThreads(1)  # albumentations' OpenCV calls: the single thread of the numpy path
    torch.set_num_threads(args.threads)
    global clock
    clock = time.thread_time if args.threads == 1 else time.process_time
    images, masks = frames(args.batch, args.size)
    batch = torch.from_numpy(images).unsqueeze(1).contiguous()

    results: dict[str, dict[str, float]] = {}
    for name, effects in [("four_effects", EFFECTS), *[(e, (e,)) for e in EFFECTS]]:
        ours, theirs, given = compare(effects, images, masks, batch, args.repeats)
        results[name] = {"ours": ours, "usaugment": theirs, "ratio": ours / theirs, "ours_geometry_given": given}
        results[name].update(target=TARGETS[name], met=ours / theirs >= TARGETS[name])
    torch.manual_seed(0)
    for name in ("us-physics", "us", "default"):
        preset = build_augment(PretrainAugmentConfig(preset=name), args.size)
        rate = median_rate(lambda preset=preset: preset(batch), len(images), args.repeats)
        results[f"{name}_preset"] = {"ours": rate}
    kernel = PretrainAugmentConfig().despeckle.kernel_size
    floor = despeckle_floor(args.size, kernel, args.repeats)
    floor["filter_img_s"], floor["filter_without_exp_img_s"] = despeckle_without_exp(batch, kernel, args.repeats)
    report(args, results, floor)
    if args.examples:
        save_examples(args.examples, images, masks)
        print(f"examples: {args.examples}")


def floor_summary(results: dict[str, dict], floor: dict[str, float]) -> dict[str, float]:
    """The speckle reduction against its floor, and the chain's ratio were it at its floor."""
    given = results["despeckle"]["ours_geometry_given"]
    chain = results["four_effects"]
    # The chain's time per image with the filter's time (as in a chain: geometry given) cut to its floor.
    at_floor = 1 / chain["ours"] - 1 / given + 1 / floor["floor_img_s"]
    return {
        "despeckle_img_s": round(given, 1),
        "of_floor": round(given / floor["floor_img_s"], 3),
        "floor_holds": given <= 1.05 * floor["floor_img_s"],  # 5 %: timing noise
        "achieved_gb_s": round(given * floor["bytes_per_image"] / 1e9, 1),
        "four_effects_ratio_at_floor": round(1 / at_floor / chain["usaugment"], 3),
        "exp_share_measured": round(1 - floor["filter_img_s"] / floor["filter_without_exp_img_s"], 3),
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in floor.items()},
    }


def report(args: argparse.Namespace, results: dict[str, dict], floor: dict[str, float]) -> None:
    print(
        f"batch {args.batch} x {args.size}x{args.size} synthetic B-mode frames (uint8), CPU, images per CPU-second, "
        f"median of {args.repeats}; usaugment single-threaded, ours at {args.threads} torch thread(s)"
    )
    print(
        f"{'effects (p=1 each)':<32}{'usaugment':>10}{'ours':>10}{'ours/usaug':>12}{'target':>8}{'geometry given':>16}"
    )
    for name, r in results.items():
        if "usaugment" in r:
            label = "all four" if name == "four_effects" else f"{name} ({OURS_TO_THEIRS[name]})"
            print(
                f"{label:<32}{r['usaugment']:>10.1f}{r['ours']:>10.1f}{r['ratio']:>11.2f}x{r['target']:>7.1f}x"
                f"{r['ours_geometry_given']:>16.1f}"
            )
    for name in ("us-physics", "us", "default"):
        label = f"{name} preset (ours only)"
        print(f"{label:<32}{'-':>10}{results[f'{name}_preset']['ours']:>10.1f}")
    print("geometry given: ours when the batch's scan geometry and its maps are already computed (in a chain).")
    f = floor_summary(results, floor)
    print(
        f"speckle reduction: {f['despeckle_img_s']:.0f} img/s = {f['of_floor']:.2f} of its floor on this machine "
        f"({f['floor_img_s']:.0f} img/s: {f['bytes_per_image'] / 1e6:.0f} MB moved per image at the cache copy rate "
        f"{f['cache_gb_s']} GB/s, {100 * f['exp_share_of_floor']:.0f} % of it exp at {f['exp_ns_per_element']} ns per "
        f"element); it moves {f['achieved_gb_s']} GB/s, DRAM copies {f['dram_gb_s']} GB/s. The bare filter with its "
        f"exp replaced by abs_ (same passes): {f['filter_without_exp_img_s']:.0f} vs {f['filter_img_s']:.0f} img/s, "
        f"exp = {100 * f['exp_share_measured']:.0f} % of it. All four chained with "
        f"the filter at its floor: {f['four_effects_ratio_at_floor']:.2f}x usaugment "
        f"(target {TARGETS['four_effects']}x)"
    )
    if not f["floor_holds"]:
        print(
            f"note: the filter ran at {f['of_floor']:.2f} of the modelled floor: at {args.size} px the model (its exps "
            "and element passes at one chunk's rates, calibrated at 256 px) is no bound; run at --size 256 for it"
        )
    summary = {
        "bench": "augment",
        "device": "cpu",
        "batch": args.batch,
        "size": args.size,
        "torch_threads": args.threads,
        "ratio": round(results["four_effects"]["ratio"], 3),
        "ratios": {
            k: {"ratio": round(v["ratio"], 3), "target": v["target"]} for k, v in results.items() if "ratio" in v
        },
        "preset_img_s_per_core": round(results["us-physics_preset"]["ours"], 1) if args.threads == 1 else None,
        "despeckle_floor": f,
        **{
            k: {kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in v.items()} for k, v in results.items()
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
