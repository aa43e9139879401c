"""``python -m downstream.embed``: t-SNE of corpus embeddings coloured by source dataset (paper 002 Fig. 2).

Streams (a seeded random subset of) the shards once, embeds the same images with every encoder
(globally pooled features; DINOv3: CLS ++ mean patch token), projects each with t-SNE
(scikit-learn, after standardisation and PCA to 50 dims) and draws one panel per encoder with a
shared colour per source and a legend panel for the K most frequent sources. ``embed.json``
gives per encoder the silhouette score of the source labels in feature space (cosine distance:
the number to compare; higher = sources better separated) and in the 2-D t-SNE map.

Example::

    python -m downstream.embed --shards runs/shards --encoder R50-Rand=rand \\
        --encoder R50-Distill-US=runs/export --encoder DINOv3=dinov3:facebook/dinov3-vitb16-pretrain-lvd1689m \\
        --out runs/embed --max-samples 3000
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from downstream.data.transforms import to_input
from downstream.encoders import Encoder, load_encoder
from downstream.sweep import parse_encoder
from sonodistill.atomic import atomic_open, write_json
from sonodistill.errors import UserError, cli_main
from sonodistill.logs import progress

log = logging.getLogger(__name__)


def collect(
    shards: str, max_samples: int, seed: int, batch_size: int, num_workers: int
) -> tuple[torch.Tensor, list[str]]:
    """Up to ``max_samples`` images (uint8 [N,1,H,W]) and their source names, seeded shuffle."""
    from shards.stream import ShardLoader

    loader = ShardLoader(
        shards,
        batch_size=batch_size,
        mode="epoch",
        seed=seed,
        with_meta=True,
        drop_last=False,
        num_workers=num_workers,
        rank=0,
        world_size=1,
    )
    images, sources, n = [], [], 0
    total = min(max_samples, loader.num_samples or max_samples)
    with progress(total=total, desc="read shards", unit="img") as bar:
        for batch in loader:
            take = min(len(batch["source"]), max_samples - n)
            images.append(batch["image"][:take])
            sources.extend(batch["source"][:take])
            n += take
            bar.update(take)
            if n >= max_samples:
                break
    if n == 0:
        raise UserError(f"{shards}: no samples in the shards")
    if loader.skipped:
        log.warning(f"skipped corrupt samples {loader.skipped}")
    return torch.cat(images), sources


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


def run_embed(
    shards: str,
    encoders: Sequence[str],
    out: str | Path,
    *,
    size: int | None = None,
    max_samples: int = 3000,
    batch_size: int = 64,
    num_workers: int = 2,
    seed: int = 0,
    perplexity: float = 30.0,
    top_k: int = 10,
) -> dict:
    out = Path(out)
    images, sources = collect(shards, max_samples, seed, batch_size, num_workers)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names, coords, scores, rows = [], [], [], []
    arrays: dict[str, np.ndarray] = {"sources": np.asarray(sources)}
    for item in encoders:
        name, spec = parse_encoder(item)
        torch.manual_seed(seed)  # `rand` encoders: the same random init on every call
        enc = load_encoder(spec)
        if enc.patch_size and (size or images.shape[-1]) % enc.patch_size:
            raise UserError(
                f"--size: {size or images.shape[-1]} is not a multiple of {spec}'s patch size {enc.patch_size}"
            )
        feats = embed(enc, images, size, batch_size, device)
        xy = project(feats, seed, perplexity)
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
    plot_panels(names, coords, sources, scores, out / "tsne.png", top_k)
    with atomic_open(out / "tsne.npz", "wb") as fh:
        np.savez_compressed(fh, **arrays)
    result = {
        "shards": str(shards),
        "n_samples": len(sources),
        "sources": dict(Counter(sources).most_common()),
        "encoders": rows,
    }
    write_json(out / "embed.json", result)
    return result


@cli_main
def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m downstream.embed", description=__doc__.splitlines()[0])
    p.add_argument("--shards", required=True, help="shard folder or folder URL (https/s3/gs), manifest or pattern")
    p.add_argument("--encoder", action="append", required=True, help="[NAME=]SPEC, repeat for one panel each")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=None, help="resize to this side before embedding (default: shard size)")
    p.add_argument("--max-samples", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--top-k", type=int, default=10, help="sources listed in the legend")
    a = p.parse_args(argv)
    if a.max_samples < 3:
        raise UserError("--max-samples: need at least 3")
    res = run_embed(
        a.shards,
        a.encoder,
        a.out,
        size=a.size,
        max_samples=a.max_samples,
        batch_size=a.batch_size,
        num_workers=a.num_workers,
        seed=a.seed,
        perplexity=a.perplexity,
        top_k=a.top_k,
    )
    print(json.dumps({r["name"]: r["silhouette_cosine"] for r in res["encoders"]}))
    return res


if __name__ == "__main__":
    main()
