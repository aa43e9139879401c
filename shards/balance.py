"""Source balance while streaming: how often each source is drawn in ``resampled`` mode.

``data.source_weights`` (pretraining config) or ``ShardLoader(source_weights=...)``:

- ``proportional`` (default): every sample equally likely, so a source is drawn in proportion
  to its size ``n_s`` (what the corpus holds);
- ``uniform``: every source equally often;
- ``tau=T`` (or ``{tau: T}``): source probability proportional to ``n_s ** T`` (``T=1`` is
  proportional, ``T=0`` uniform, ``T=0.5`` the usual compromise of multilingual/multi-dataset training);
- an explicit map ``{breast: 2, thyroid: 1, ...}``: probability proportional to the given weight
  (sources left out get 0; unknown names are an error).

How the stream realises it (exact in expectation, sample by sample): with ``r_s = p_s / n_s`` the
per-sample rate of source ``s``, a shard ``k`` is drawn with probability proportional to
``m_k = max_{s in k} r_s`` and each of its samples of source ``s`` is kept with probability
``r_s / m_k``; a sample of source ``s`` then appears at a rate proportional to ``r_s``, so sources
appear in proportions ``p_s``. Shards hold one source almost always (the builder writes sources in
order), where every sample is kept. Epoch and loop modes are unaffected: they visit every sample
once per epoch.
"""

from __future__ import annotations

import math

import yaml

from sonodistill.errors import UserError


def parse_weights(spec: str | dict | None) -> str | float | dict[str, float]:
    """``'proportional'`` | ``'uniform'`` | tau (float) | ``{source: weight}``."""
    if spec is None or spec == "proportional":
        return "proportional"
    if spec == "uniform":
        return "uniform"
    if isinstance(spec, str):
        s = spec.strip()
        if s.startswith("tau=") or s.startswith("tau:"):
            try:
                tau = float(s[4:])
            except ValueError:
                raise UserError(f"source_weights '{spec}': tau expects a number") from None
            if not math.isfinite(tau):
                raise UserError(f"source_weights '{spec}': tau expects a finite number")
            return tau
        try:
            spec = yaml.safe_load(s)
        except yaml.YAMLError:
            spec = None
        if not isinstance(spec, dict):
            raise UserError(f"source_weights '{s}': expected proportional, uniform, tau=T or a map {{source: weight}}")
    if isinstance(spec, dict):
        if set(spec) == {"tau"}:
            return parse_weights(f"tau={spec['tau']}")
        out = {}
        for k, v in spec.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise UserError(f"source_weights: weight of '{k}' expects a finite number >= 0, got {v!r}")
            out[str(k)] = float(v)
        if not any(out.values()):
            raise UserError("source_weights: every weight is 0")
        return out
    raise UserError(f"source_weights {spec!r}: expected proportional, uniform, tau=T or a map")


def source_probabilities(spec: str | dict | None, counts: dict[str, int]) -> dict[str, float]:
    """Probability of drawing each source (sources with no samples get 0)."""
    w = parse_weights(spec)
    present = {s: n for s, n in counts.items() if n > 0}
    if w == "proportional":
        raw = {s: float(n) for s, n in present.items()}
    elif w == "uniform":
        raw = {s: 1.0 for s in present}
    elif isinstance(w, float):
        raw = {s: float(n) ** w for s, n in present.items()}
    else:
        unknown = [s for s in w if s not in counts]
        if unknown:
            raise UserError(f"source_weights: unknown source '{unknown[0]}' (the shards hold {', '.join(counts)})")
        raw = {s: w.get(s, 0.0) for s in present}
    total = sum(raw.values())
    if total <= 0:
        raise UserError("source_weights: no source with samples has a positive weight")
    return {s: raw.get(s, 0.0) / total for s in counts}


def shard_plan(
    shard_sources: list[dict[str, int]], probs: dict[str, float]
) -> tuple[list[float], list[dict[str, float]]]:
    """(probability of drawing each shard, per shard: keep-probability of a sample of each source)."""
    totals: dict[str, int] = {}
    for c in shard_sources:
        for s, n in c.items():
            totals[s] = totals.get(s, 0) + n
    rate = {s: probs.get(s, 0.0) / n for s, n in totals.items() if n > 0}
    peaks = [max((rate.get(s, 0.0) for s, n in c.items() if n > 0), default=0.0) for c in shard_sources]
    z = sum(peaks)
    if z <= 0:
        raise UserError("source_weights: no shard holds a source with a positive weight")
    keep = [{s: (rate.get(s, 0.0) / m if m > 0 else 0.0) for s in c} for c, m in zip(shard_sources, peaks)]
    return [m / z for m in peaks], keep
