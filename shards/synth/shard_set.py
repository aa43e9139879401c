"""A synthetic corpus cleaned into shards in one call: the data the benchmarks and the GPU check run on."""

from __future__ import annotations

from pathlib import Path

from shards.synth.corpus import write_corpus


def write_shard_set(
    root: Path,
    n: int,
    size: int,
    *,
    seed: int = 0,
    samples_per_shard: int = 100,
    workers: int = 2,
    name: str = "shards",
) -> Path:
    """Write ``n`` synthetic images under ``root/corpus`` and build them into PNG shards at ``size`` px under
    ``root/name``; returns that folder."""
    from shards.build import BuildSettings, build_shards  # the builder imports the readers: only when used

    write_corpus(root / "corpus", n=n, seed=seed, workers=workers)
    sources = {p.name: str(p) for p in sorted((root / "corpus").iterdir()) if p.is_dir()}
    settings = BuildSettings(size=size, samples_per_shard=samples_per_shard, workers=workers)
    build_shards(sources, root / name, settings, progress=False)
    return root / name
