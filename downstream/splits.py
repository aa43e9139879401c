"""Deterministic train/val/test splits (``splits.json``) and nested label-fraction subsets.

Splits are patient-level whenever records carry a group id (no group in two parts) and
class-stratified whenever they carry labels; a dataset's own test split (UltraBench's
``test.json``) is kept and only the rest is split into training and validation. Ratios are
normalised by their sum, so ``[0.7, 0.2, 0.1]`` and the paper's DDTI counts ``[445, 127, 65]``
both work. The split is
a function of (record ids, labels, groups, ratios, seed) only, written once to ``splits.json``
and reused by every run that points at it.

Label fractions (5/10/20/50/100 %) are prefixes of one seeded per-class permutation of the
training split, so for a given seed every smaller subset lies inside every larger one; each
class keeps ``max(1, round(f * n_class))`` images (at least one example per class).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from downstream.data.record import Catalog
from sonodistill.atomic import json_text, write_once
from sonodistill.errors import UserError

PARTS = ("train", "val", "test")


@dataclass
class SplitConfig:
    """How a dataset is split; one definition for every downstream run and KD recipe (each recipe's
    preset sets its paper's ratios and seed)."""

    ratios: list[float] = field(default_factory=lambda: [0.7, 0.2, 0.1])  # train/val/test, or counts (445, 127, 65)
    seed: int = 0  # the split is fixed across run seeds; seeds vary label subsets and training
    file: str = ""  # splits.json to write/reuse; "" -> <out>/splits.json


@dataclass
class Splits:
    train: list[str]
    val: list[str]
    test: list[str]
    seed: int = 0
    ratios: list[float] = field(default_factory=lambda: [0.7, 0.2, 0.1])
    dataset: str = ""

    def part(self, name: str) -> list[str]:
        if name not in PARTS:
            raise KeyError(name)
        return getattr(self, name)

    def to_json(self, catalog: Catalog | None = None) -> dict:
        out: dict = {"dataset": self.dataset, "seed": self.seed, "ratios": list(self.ratios)}
        out["counts"] = {p: len(self.part(p)) for p in PARTS}
        if catalog is not None and catalog.has_labels:
            index = catalog.by_id()
            out["class_counts"] = {
                p: dict(sorted(Counter(catalog.classes[index[i].label] for i in self.part(p)).items())) for p in PARTS
            }
        out.update({p: list(self.part(p)) for p in PARTS})
        return out


def _normalise(ratios: Sequence[float]) -> np.ndarray:
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or (r <= 0).any():  # selection needs a validation split, reporting a test split
        raise UserError(f"split.ratios: expected three positive numbers train/val/test, got {list(ratios)}")
    return r / r.sum()


def make_splits(catalog: Catalog, ratios: Sequence[float] = (0.7, 0.2, 0.1), seed: int = 0) -> Splits:
    """Greedy assignment of whole groups (or single images) to the part whose per-class and
    total counts are furthest below target (sklearn's group splitters take fold counts, not
    arbitrary ratios, and none stratifies while keeping groups whole).

    A dataset with its own test split (``catalog.test_ids``, e.g. UltraBench) keeps it: only the
    remaining images are split, into training and validation by ``ratios[0] : ratios[1]``."""
    r = _normalise(ratios)
    fixed = set(catalog.test_ids)
    recs = [rec for rec in catalog.records if rec.id not in fixed]
    if len(catalog.records) < 3:
        raise UserError(f"{catalog.root}: need at least 3 images to split, found {len(catalog.records)}")
    n_cls = max(1, len(catalog.classes)) if catalog.has_labels else 1
    units: dict[str, list[int]] = {}
    for i, rec in enumerate(recs):
        units.setdefault(rec.group if rec.group is not None else "\x00" + rec.id, []).append(i)
    keys = sorted(units)
    rng = np.random.default_rng(seed)
    order = [keys[j] for j in rng.permutation(len(keys))]
    order.sort(key=lambda k: -len(units[k]))  # stable: big groups first, random among equals

    def counts(idx: list[int]) -> np.ndarray:
        v = np.zeros(n_cls)
        for i in idx:
            v[recs[i].label if n_cls > 1 else 0] += 1
        return v

    shares = r[:2] / r[:2].sum() if fixed else r
    class_total = counts(list(range(len(recs))))
    target = shares[:, None] * class_total[None, :]  # [part, class]
    have = np.zeros_like(target)
    assigned: list[list[int]] = [[] for _ in shares]
    for k in order:
        v = counts(units[k])
        cost = []
        for p in range(len(shares)):
            before = ((have[p] - target[p]) ** 2).sum() + (have[p].sum() - target[p].sum()) ** 2
            after = ((have[p] + v - target[p]) ** 2).sum() + (have[p].sum() + v.sum() - target[p].sum()) ** 2
            cost.append(after - before)
        p = int(np.argmin(cost))
        have[p] += v
        assigned[p].extend(units[k])
    ids = [[recs[i].id for i in sorted(a)] for a in assigned]
    if fixed:
        ids.append([rec.id for rec in catalog.records if rec.id in fixed])
    for part, name in zip(ids, PARTS):
        if not part:
            raise UserError(
                f"{catalog.root}: {len(catalog.records)} images in {len(units)} groups are too few for a non-empty "
                f"'{name}' split with ratios {list(ratios)}"
            )
    return Splits(*ids, seed=seed, ratios=[float(x) for x in ratios], dataset=catalog.name)


def check_splits(splits: Splits, catalog: Catalog, where: str) -> None:
    """Every record in exactly one part, nothing unknown, and no group in two parts."""
    known = set(catalog.ids())
    seen: dict[str, str] = {}
    for p in PARTS:
        for i in splits.part(p):
            if i not in known:
                raise UserError(
                    f"{where}: id '{i}' in '{p}' is not in the dataset {catalog.root} (made for other data? delete it)"
                )
            if i in seen:
                raise UserError(f"{where}: id '{i}' is in both '{seen[i]}' and '{p}'")
            seen[i] = p
    missing = known - set(seen)
    if missing:
        raise UserError(
            f"{where}: {len(missing)} image(s) of {catalog.root} are in no split, e.g. '{sorted(missing)[0]}' "
            "(dataset changed? delete the file to re-split)"
        )
    if catalog.test_ids and set(splits.test) != set(catalog.test_ids):
        raise UserError(
            f"{where}: its test split is not the dataset's own (test.json of {catalog.root}); "
            "delete the file to re-split"
        )
    index = catalog.by_id()
    group_part: dict[str, str] = {}
    for i, p in seen.items():
        g = index[i].group
        if g is None or (catalog.test_ids and p == "test"):  # a given test split is the dataset's own choice
            continue
        if group_part.setdefault(g, p) != p:
            raise UserError(f"{where}: patient/group '{g}' is in both '{group_part[g]}' and '{p}'")


def load_or_make_splits(
    catalog: Catalog, path: str | Path, ratios: Sequence[float] = (0.7, 0.2, 0.1), seed: int = 0
) -> Splits:
    """Reuse ``path`` if it exists (checked against the data and the requested ratios/seed), else make
    the split and create the file once: processes racing to make it (sweep parts) all read the first."""
    path = Path(path)
    if not path.is_file():
        splits = make_splits(catalog, ratios, seed)
        if write_once(path, json_text(splits.to_json(catalog))):
            return splits
    return _read_splits(catalog, path, ratios, seed)


def _read_splits(catalog: Catalog, path: Path, ratios: Sequence[float], seed: int) -> Splits:
    try:
        data = json.loads(path.read_text())
        splits = Splits(
            *(list(map(str, data[p])) for p in PARTS),
            seed=int(data.get("seed", seed)),
            ratios=list(data.get("ratios", ratios)),
            dataset=str(data.get("dataset", "")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a splits file (expected train/val/test id lists): {exc}") from None
    if "ratios" in data and (
        not np.allclose(_normalise(data["ratios"]), _normalise(ratios)) or int(data.get("seed", seed)) != seed
    ):
        raise UserError(
            f"{path}: was made with ratios {data['ratios']} seed {data.get('seed')}, but the config asks for "
            f"ratios {list(ratios)} seed {seed}; delete the file or point split.file elsewhere"
        )
    check_splits(splits, catalog, str(path))
    return splits


def label_fraction(ids: Sequence[str], labels: Sequence[int | None], fraction: float, seed: int) -> list[str]:
    """The nested, stratified ``fraction`` of ``ids`` for ``seed`` (in the order of ``ids``)."""
    if not 0 < fraction <= 1:
        raise UserError(f"fraction: expected 0 < fraction <= 1, got {fraction}")
    if len(ids) != len(labels):
        raise ValueError("ids and labels differ in length")
    strata: dict[object, list[int]] = {}
    for pos, lab in enumerate(labels):
        strata.setdefault(-1 if lab is None else int(lab), []).append(pos)
    # one generator per seed, consumed in class order: the permutation ignores `fraction`, so
    # subsets for the same seed are prefixes of the same order (nested)
    rng = np.random.default_rng([int(seed), 0x5F5])
    keep: list[int] = []
    for lab in sorted(strata):
        members = strata[lab]
        perm = rng.permutation(len(members))
        k = len(members) if fraction >= 1 else min(len(members), max(1, math.floor(fraction * len(members) + 0.5)))
        keep.extend(members[j] for j in perm[:k])
    return [ids[p] for p in sorted(keep)]
