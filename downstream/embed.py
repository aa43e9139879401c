"""``python -m downstream.embed``: t-SNE of corpus embeddings coloured by source dataset (paper 002 Fig. 2).

Reads a seeded random subset of the shards (:mod:`shards.subset`: the same for any worker count),
embeds the same images with every encoder (globally pooled features; DINOv3: CLS ++ mean patch
token), projects each with t-SNE (scikit-learn, after standardisation and PCA to 50 dims) and draws
one panel per encoder with a shared colour per source and a legend panel for the K most frequent
sources. ``embed.json``
gives per encoder the silhouette score of the source labels in feature space (cosine distance:
the number to compare; higher = sources better separated) and in the 2-D t-SNE map.

``config.yaml`` beside them holds the resolved :class:`EmbedConfig`: its keys come from a YAML file
(``--config``) or ``key=value`` overrides, and the flags below are shorthands for the same keys.

Example::

    python -m downstream.embed --shards runs/shards --encoder R50-Rand=rand \\
        --encoder R50-Distill-US=runs/export --encoder DINOv3=dinov3:facebook/dinov3-vitb16-pretrain-lvd1689m \\
        --out runs/embed max_samples=3000
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from downstream.data.transforms import to_input
from downstream.encoders import Encoder, check_spec, load_encoder
from downstream.sweep import parse_encoder
from shards.manifest import resolve_shards
from sonodistill.atomic import atomic_open, write_json
from sonodistill.cli_parser import CommandParser
from sonodistill.config import save_config
from sonodistill.config_cli import add_config_args, config_from_flags, parse_command_line
from sonodistill.errors import UserError, cli_main
from sonodistill.logs import is_main_rank, progress
from sonodistill.outdir import claimed
from sonodistill.workers import loader_workers

log = logging.getLogger(__name__)


@dataclass
class EmbedConfig:
    shards: str = ""  # shard folder or folder URL (https/s3/gs), manifest or pattern
    encoders: list[str] = field(default_factory=list)  # [NAME=]SPEC, one panel each (specs as in a sweep's encoders)
    out: str = "runs/embed"  # tsne.png, tsne.npz, embed.json and config.yaml go here
    image_size: int | None = None  # resize to this side before embedding (null: the shards' size)
    max_samples: int = 3000  # seeded random subset of the shards embedded
    batch_size: int = 64  # images per forward pass
    num_workers: int = 2  # shard-reading threads (capped at the cores); the subset does not depend on it
    seed: int = 0  # subset, random encoders' init, PCA and t-SNE
    perplexity: float = 30.0  # t-SNE perplexity (lowered to (n - 1) / 3, at least 2, for small subsets)
    top_k: int = 10  # sources listed in the legend


def check(cfg: EmbedConfig) -> None:
    """One line for a setting no run can use, before anything is read or written."""
    if not cfg.shards:
        raise UserError("shards: give the shard folder (--shards DIR or shards=DIR)")
    if not cfg.encoders:
        raise UserError("encoders: give at least one encoder (--encoder [NAME=]SPEC, repeatable)")
    limits = {"max_samples": (cfg.max_samples, 3), "batch_size": (cfg.batch_size, 1), "top_k": (cfg.top_k, 1)}
    if cfg.image_size is not None:
        limits["image_size"] = (cfg.image_size, 8)
    for key, (value, low) in limits.items():
        if value < low:
            raise UserError(f"{key}: need at least {low}, got {value}")
    if cfg.num_workers < 0:
        raise UserError(f"num_workers: expected 0 or more, got {cfg.num_workers}")
    if not cfg.perplexity > 0:
        raise UserError(f"perplexity: expected a positive number, got {cfg.perplexity}")
    names = [parse_encoder(item)[0] for item in cfg.encoders]
    if len(set(names)) < len(names):
        raise UserError(f"encoders: two panels share a name ({', '.join(names)}); name them NAME=SPEC")
    for item in cfg.encoders:
        check_spec(parse_encoder(item)[1])


def collect(shards: str, max_samples: int, seed: int, num_workers: int) -> tuple[torch.Tensor, list[str]]:
    """Up to ``max_samples`` images (uint8 [N,1,H,W]) and their source names: the seed's random subset
    of the shards, the same whatever ``num_workers`` (:mod:`shards.subset`)."""
    from shards.subset import seeded_subset

    subset = seeded_subset(shards, max_samples, seed, threads=num_workers)
    if len(subset.keys) < 3:  # what t-SNE needs at least
        raise UserError(f"{shards}: {len(subset.keys)} readable sample(s); a t-SNE needs at least 3")
    return torch.from_numpy(subset.images), subset.sources


@torch.no_grad()
def embed(enc: Encoder, images: torch.Tensor, size: int | None, batch_size: int, device: torch.device) -> np.ndarray:
    model = enc.backbone.eval().to(device)
    out = []
    t0, n = time.perf_counter(), 0
    bar = progress(total=len(images), desc=f"embed {enc.spec}", unit="img")
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size].to(device, non_blocking=True).float() / 255.0
        if size and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            f = model(to_input(x, enc.mean, enc.std))
        out.append(f.float().cpu())
        n += len(x)
        bar.update(len(x))
        bar.set_postfix(img_s=f"{n / (time.perf_counter() - t0):.1f}")
    bar.close()
    return torch.cat(out).numpy()


def project(features: np.ndarray, seed: int, perplexity: float) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(features)
    k = min(50, x.shape[0] - 1, x.shape[1])
    if k < x.shape[1]:
        x = PCA(n_components=k, random_state=seed).fit_transform(x)
    perp = min(perplexity, max(2.0, (x.shape[0] - 1) / 3))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)


def silhouettes(features: np.ndarray, coords: np.ndarray, labels: Sequence[str]) -> tuple[float | None, float | None]:
    from sklearn.metrics import silhouette_score

    n_lab = len(set(labels))
    if n_lab < 2 or n_lab >= len(labels):
        return None, None
    return float(silhouette_score(features, labels, metric="cosine")), float(silhouette_score(coords, labels))


def plot_panels(
    names: Sequence[str], coords: Sequence[np.ndarray], sources: Sequence[str], scores, path, top_k: int
) -> None:
    from sonodistill.figures import pyplot, save_figure

    plt = pyplot()

    counts = Counter(sources).most_common()
    order = [s for s, _ in counts]
    cmap = plt.get_cmap("tab20" if len(order) > 10 else "tab10")
    colour = {s: cmap(i % cmap.N) for i, s in enumerate(order)}
    src = np.asarray(sources)
    dot = float(np.clip(3000 / max(len(src), 1), 3, 20))
    fig, axes = plt.subplots(
        1, len(names) + 1, figsize=(3.6 * len(names) + 2.4, 3.8), gridspec_kw={"width_ratios": [1] * len(names) + [0.6]}
    )
    for ax, name, xy, sc in zip(axes[:-1], names, coords, scores):
        for s in reversed(order):  # most frequent drawn last would hide the rest: draw it first
            m = src == s
            ax.scatter(xy[m, 0], xy[m, 1], s=dot, color=colour[s], alpha=0.75, linewidths=0)
        ax.set_title(f"{name}\nsilhouette {sc:.3f}" if sc is not None else name, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    leg = axes[-1]
    leg.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", color=colour[s], label=f"{s} ({c})") for s, c in counts[:top_k]]
    leg.legend(
        handles=handles, loc="center left", fontsize=8, frameon=False, title=f"top-{min(top_k, len(counts))} sources"
    )
    fig.tight_layout()
    save_figure(fig, path)


def _check_patch(enc: Encoder, spec: str, size: int) -> None:
    if size and enc.patch_size and size % enc.patch_size:
        raise UserError(f"image_size: {size} is not a multiple of {spec}'s patch size {enc.patch_size}")


def run_embed(cfg: EmbedConfig) -> dict:
    """Embed, project and plot (``cfg`` checked by :func:`check`); returns what ``embed.json`` holds."""
    out, size, seed = Path(cfg.out), cfg.image_size, cfg.seed
    # every encoder loaded and its patch size checked before a single shard is read
    known = size or int((resolve_shards(cfg.shards)[1] or {}).get("settings", {}).get("size") or 0)
    loaded = []
    for item in cfg.encoders:
        name, spec = parse_encoder(item)
        torch.manual_seed(seed)  # `rand` encoders: the same random init on every call
        loaded.append((name, spec, load_encoder(spec)))
        _check_patch(loaded[-1][2], spec, known)
    images, sources = collect(cfg.shards, cfg.max_samples, seed, loader_workers(cfg.num_workers))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names, coords, scores, rows = [], [], [], []
    arrays: dict[str, np.ndarray] = {"sources": np.asarray(sources)}
    for name, spec, enc in loaded:
        _check_patch(enc, spec, size or images.shape[-1])  # shards without a manifest: known only now
        feats = embed(enc, images, size, cfg.batch_size, device)
        enc.backbone.cpu()  # one encoder on the GPU at a time
        xy = project(feats, seed, cfg.perplexity)
        sil_feat, sil_tsne = silhouettes(feats, xy, sources)
        names.append(name), coords.append(xy), scores.append(sil_feat)
        arrays[f"tsne/{name}"] = xy
        rows.append(
            {
                "name": name,
                "spec": spec,
                "dim": int(feats.shape[1]),
                "silhouette_cosine": sil_feat,
                "silhouette_tsne": sil_tsne,
            }
        )
        del enc
    plot_panels(names, coords, sources, scores, out / "tsne.png", cfg.top_k)
    with atomic_open(out / "tsne.npz", "wb") as fh:
        np.savez_compressed(fh, **arrays)
    result = {
        "shards": cfg.shards,
        "n_samples": len(sources),
        "sources": dict(Counter(sources).most_common()),
        "encoders": rows,
    }
    write_json(out / "embed.json", result)
    return result


def parse(argv: Sequence[str] | None = None) -> EmbedConfig:
    p = CommandParser(prog="python -m downstream.embed", description=__doc__.splitlines()[0])
    p.add_argument("--shards", help="shard folder or folder URL (https/s3/gs), manifest or pattern")
    p.add_argument("--encoder", action="append", help="[NAME=]SPEC, repeat for one panel each (key: encoders)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--size", dest="image_size", type=int, help="resize to this side first (key: image_size)")
    p.add_argument("--max-samples", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--perplexity", type=float)
    p.add_argument("--top-k", type=int, help="sources listed in the legend")
    add_config_args(p, EmbedConfig)
    args = parse_command_line(p, argv)
    # the repeated flag as one list override, quoted by YAML (a path may hold ': ' or '#')
    if args.encoder is not None:
        args.encoders = yaml.safe_dump(args.encoder, default_flow_style=True, width=10**9).strip()
    else:
        args.encoders = None
    flags = ("shards", "encoders", "out", "image_size", "max_samples", "batch_size", "num_workers", "seed")
    return config_from_flags(EmbedConfig, args, (*flags, "perplexity", "top_k"))


@cli_main
def main(argv: Sequence[str] | None = None) -> dict | None:
    cfg = parse(argv)
    check(cfg)
    if not is_main_rank():  # launched on several processes: one embeds (t-SNE is one process's work)
        log.info("downstream.embed runs on one process: this rank leaves the work to rank 0")
        return None
    local = "://" not in cfg.shards
    cfg = dataclasses.replace(
        cfg, out=os.path.expanduser(cfg.out), shards=os.path.expanduser(cfg.shards) if local else cfg.shards
    )
    with claimed(cfg.out, "downstream.embed", only_own=True):
        res = run_embed(cfg)
    save_config(cfg, Path(cfg.out) / "config.yaml")  # with the results it describes: a failed run keeps the old pair
    print(json.dumps({r["name"]: r["silhouette_cosine"] for r in res["encoders"]}))
    return res


if __name__ == "__main__":
    main()
