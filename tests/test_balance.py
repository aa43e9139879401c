"""Source balance in resampled mode (shards.balance + the ShardLoader hook): proportions on counts."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from shards.balance import parse_weights, shard_plan, source_probabilities
from shards.stream import ShardLoader
from sonodistill.errors import UserError

COUNTS = {"a": 300, "b": 100, "c": 25, "d": 0}


def test_source_probabilities_by_hand():
    assert source_probabilities("proportional", COUNTS) == pytest.approx(
        {"a": 300 / 425, "b": 100 / 425, "c": 25 / 425, "d": 0.0}
    )
    assert source_probabilities("uniform", COUNTS) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3, "d": 0.0})
    z = 300**0.5 + 100**0.5 + 25**0.5  # 17.32 + 10 + 5
    assert source_probabilities("tau=0.5", COUNTS) == pytest.approx(
        {"a": 300**0.5 / z, "b": 10 / z, "c": 5 / z, "d": 0.0}
    )
    assert source_probabilities({"tau": 0.0}, COUNTS) == source_probabilities("uniform", COUNTS)
    assert source_probabilities({"a": 1, "b": 3}, COUNTS) == pytest.approx({"a": 0.25, "b": 0.75, "c": 0, "d": 0})
    assert source_probabilities("{a: 1, c: 1}", COUNTS) == pytest.approx({"a": 0.5, "b": 0, "c": 0.5, "d": 0})


@pytest.mark.parametrize(
    "bad, msg",
    [("tau=x", "tau expects a number"), ("lots", "expected proportional"), ({"a": -1}, ">= 0"), ({"zz": 1}, "unknown")],
)
def test_bad_weights_are_one_line_errors(bad, msg):
    with pytest.raises(UserError, match=msg):
        source_probabilities(bad, COUNTS)


def test_shard_plan_is_exact_in_expectation():
    # Three pure shards and one mixed shard at a source boundary.
    shards = [{"a": 10}, {"a": 6, "b": 4}, {"b": 10}, {"c": 3}]
    probs = source_probabilities("uniform", {"a": 16, "b": 14, "c": 3})
    p_shard, keep = shard_plan(shards, probs)
    assert sum(p_shard) == pytest.approx(1.0)
    # expected kept samples per draw, per source: sum_k P(k) * count_ks * keep_ks
    rate = Counter()
    for pk, c, kk in zip(p_shard, shards, keep):
        for s, n in c.items():
            rate[s] += pk * n * kk[s]
    total = sum(rate.values())
    assert {s: rate[s] / total for s in rate} == pytest.approx(probs)
    assert all(v == 1.0 for v in keep[0].values()) and keep[1]["a"] < 1.0  # only the mixed shard is thinned


def _source_counts(loader: ShardLoader, batches: int) -> dict[str, float]:
    seen: Counter = Counter()
    for i, batch in enumerate(loader):
        seen.update(batch["source"])
        if i + 1 == batches:
            break
    n = sum(seen.values())
    return {k: v / n for k, v in seen.items()}


@pytest.fixture(scope="module")
def unequal_shards(corpus_dir, tmp_path_factory):
    """Three sources of very unequal size (caps via the catalogue), 4 samples per shard."""
    from shards.build import BuildSettings, build_shards
    from shards.catalogue import SourceConfig
    from shards.options import SourceOptions

    out = tmp_path_factory.mktemp("unequal")
    sources = [
        SourceConfig(name="big", path=str(corpus_dir / "breast")),
        SourceConfig(name="mid", path=str(corpus_dir / "liver"), options=SourceOptions(max_images=8)),
        SourceConfig(name="small", path=str(corpus_dir / "thyroid"), options=SourceOptions(max_images=3)),
    ]
    build_shards(sources, out, BuildSettings(size=32, samples_per_shard=4, workers=1), progress=False)
    return out


def test_resampled_stream_draws_sources_in_the_given_proportions(unequal_shards):
    shard_dir = unequal_shards
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    sizes = {k: v for k, v in manifest["sources"].items() if v}
    assert sizes["mid"] == 8 and sizes["small"] == 3 and sizes["big"] > 15  # max_images caps held
    assert sum(manifest["shard_samples"]) == sum(sum(c.values()) for c in manifest["shard_sources"])
    common = dict(batch_size=16, mode="resampled", seed=0, num_workers=0, with_meta=True, shuffle_buffer=50)
    for spec in ("uniform", "tau=0.5", {"big": 1.0, "mid": 1.0, "small": 2.0}):
        got = _source_counts(ShardLoader(shard_dir, source_weights=spec, **common), batches=250)
        want = source_probabilities(spec, manifest["sources"])
        for s in sizes:
            assert got.get(s, 0.0) == pytest.approx(want[s], abs=0.05), (spec, s, got, want)
    # proportional (today's behaviour) keeps the sizes' proportions
    got = _source_counts(ShardLoader(shard_dir, **common), batches=250)
    total = sum(sizes.values())
    for s, n in sizes.items():
        assert got.get(s, 0.0) == pytest.approx(n / total, abs=0.05)


def test_weights_outside_resampled_mode_are_refused(unequal_shards):
    with pytest.raises(UserError, match="resampled mode only"):
        ShardLoader(unequal_shards, batch_size=4, mode="loop", source_weights="uniform")
    assert parse_weights(None) == "proportional"  # epoch/loop modes: unchanged


@pytest.mark.parametrize("weights", ["{a: .nan, b: 1}", "{a: .inf, b: 1}", "tau=nan", "tau=inf"])
def test_a_weight_that_is_not_finite_is_one_error_line(weights):
    """NaN and infinity passed the >= 0 check and crashed the first batch with a traceback."""
    with pytest.raises(UserError, match=r"^source_weights.*finite number"):
        parse_weights(weights)


def test_a_bad_weight_is_blamed_on_source_weights_not_on_the_shards(shard_dir, tiny_teacher_dir, tmp_path):
    from dist.tiny_pretrain import tiny_config

    from pretrain.trainer import _open_loader

    cfg = tiny_config(shard_dir, tiny_teacher_dir, tmp_path, data__mode="resampled")
    cfg.data.source_weights = {"nowhere": 1.0}
    with pytest.raises(UserError, match=r"^data\.source_weights: unknown source 'nowhere'"):
        _open_loader(cfg, 0, 1, False, 0, workers=0)
