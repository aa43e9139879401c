"""Deterministic train/val/test splits (``splits.json``) and nested label-fraction subsets.

Splits are patient-level whenever records carry a group id (no group in two parts),
duplicate-aware by default (a group of exact or near-duplicate images, :mod:`downstream.groups`,
never straddles two parts either; images of one group filed under different classes, label
conflicts, are left out unless ``split.label_conflicts: keep``) and class-stratified whenever they
carry labels; a dataset's own test split (UltraBench's ``test.json``) is kept and only the rest is
split into training and validation (a training or validation image that duplicates a test image is
left out). Ratios are normalised by their sum, so ``[0.7, 0.2, 0.1]`` and the paper's DDTI counts
``[445, 127, 65]`` both work. The split is a function of (record ids, pixels, labels, groups,
ratios, seed) only, written once to ``splits.json`` and reused by every run that points at it.
``splits.json`` also names the dataset folder (``root``) and each id's image file (``images``,
relative to it), so ``shards.build --exclude splits.json`` finds the evaluation images without
knowing the layout, and counts what was grouped (``grouping``) and left out (``left_out``).

Label fractions (5/10/20/50/100 %) are prefixes of one seeded per-class permutation of the
training split, so for a given seed every smaller subset lies inside every larger one; each
class keeps ``max(1, round(f * n_class))`` images (at least one example per class).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from downstream.data.grouping import numbered_runs
from downstream.data.record import Catalog
from downstream.groups import DuplicateGroup, duplicate_groups, roots
from sonodistill.atomic import json_text, write_once
from sonodistill.errors import UserError

log = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
RARE_CLASS = 5  # images: a class with fewer is placed first, so that training gets its first images


@dataclass
class SplitConfig:
    """How a dataset is split; one definition for every downstream run and KD recipe (each recipe's
    preset sets its paper's ratios and seed)."""

    ratios: list[float] = field(default_factory=lambda: [0.7, 0.2, 0.1])  # train/val/test, or counts (445, 127, 65)
    seed: int = 0  # the split is fixed across run seeds; seeds vary label subsets and training
    file: str = ""  # splits.json to write/reuse; "" -> <out>/splits.json
    duplicates: bool = True  # keep each group of exact/near-duplicate images in one part (downstream.groups)
    label_conflicts: Literal["leave_out", "keep"] = "leave_out"  # a duplicate group under two classes


@dataclass
class Splits:
    train: list[str]
    val: list[str]
    test: list[str]
    seed: int = 0
    ratios: list[float] = field(default_factory=lambda: [0.7, 0.2, 0.1])
    dataset: str = ""
    left_out: dict[str, list[str]] = field(default_factory=dict)  # reason -> ids in no part
    grouping: dict = field(default_factory=dict)  # what was grouped: counts ({} when made without groups)

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
        if self.grouping:
            out["grouping"] = self.grouping
        out.update({p: list(self.part(p)) for p in PARTS})
        if self.left_out:
            out["left_out"] = {k: list(v) for k, v in self.left_out.items()}
        if catalog is not None:
            out["root"] = os.path.abspath(catalog.root)
            out["images"] = image_paths(catalog)
        return out


def image_paths(catalog: Catalog) -> dict[str, str]:
    """id -> image file relative to the dataset folder, for the records stored as files under it."""
    root = os.path.abspath(catalog.root)
    out = {}
    for r in catalog.records:
        if isinstance(r.image, str):
            rel = os.path.relpath(os.path.abspath(r.image), root)
            if not rel.startswith(".."):
                out[r.id] = rel.replace(os.sep, "/")
    return out


def check_ratios(ratios: Sequence[float]) -> None:
    """Three positive numbers train/val/test: selection needs a validation split, reporting a test split."""
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or not (r > 0).all():
        raise UserError(f"split.ratios: expected three positive numbers train/val/test, got {list(ratios)}")


def _normalise(ratios: Sequence[float]) -> np.ndarray:
    check_ratios(ratios)
    r = np.asarray(ratios, dtype=np.float64)
    return r / r.sum()


def _left_out(catalog: Catalog, groups: Sequence[DuplicateGroup], label_conflicts: str) -> dict[str, list[str]]:
    """reason -> ids left out of every part: label conflicts (unless kept) and, where the dataset fixes
    its test split, training/validation images that duplicate a test image (test images stay)."""
    test = set(catalog.test_ids)
    conflict = (
        {i for g in groups if g.label_conflict for i in g.ids} - test if label_conflicts == "leave_out" else set()
    )
    of_test = {i for g in groups if test & set(g.ids) for i in g.ids} - test - conflict
    order = catalog.ids()
    out = {
        "label_conflict": [i for i in order if i in conflict],
        "duplicate_of_test": [i for i in order if i in of_test],
    }
    return {k: v for k, v in out.items() if v}


def _units(recs: list, groups: Sequence[DuplicateGroup]) -> dict[str, list[int]]:
    """Records that must share a part: one patient/clip group, or joined through a duplicate group.
    A unit is named by its smallest member key (the group id, or NUL + the image id for an image
    without one), so without duplicates the units are the patient groups and images, as before."""
    key = [r.group if r.group is not None else "\x00" + r.id for r in recs]
    pos = {r.id: i for i, r in enumerate(recs)}
    first: dict[str, int] = {}
    pairs = [(first.setdefault(k, i), i) for i, k in enumerate(key)]
    for g in groups:
        present = [pos[i] for i in g.ids if i in pos]
        pairs += [(present[0], j) for j in present[1:]]
    members: dict[int, list[int]] = {}
    for i, root in enumerate(roots(len(recs), pairs)):
        members.setdefault(root, []).append(i)
    return {min(key[i] for i in m): m for m in members.values()}


def _grouping(groups: Sequence[DuplicateGroup], units: dict, left_out: dict[str, list[str]]) -> dict:
    return {
        "duplicate_groups": len(groups),
        "exact_groups": sum(g.exact for g in groups),
        "images_in_groups": sum(len(g.ids) for g in groups),
        "label_conflict_groups": sum(g.label_conflict for g in groups),
        "units": len(units),
        "left_out": {k: len(v) for k, v in left_out.items()},
    }


def _assign(recs: list, units: dict[str, list[int]], shares: np.ndarray, n_cls: int, seed: int) -> list[list[int]]:
    """Record positions per part: units in a seeded order each to the part whose per-class and total
    counts it brings closest to ``shares``. Only units large next to the smallest part (over a
    quarter of its target) go first, biggest first, so that they still fit, each to a part with room
    for it, drawn by the room left: placed greedily while every part is empty, they would all go to
    the largest part whatever the seed (on a dataset of 50 images, every duplicate pair). Units
    holding a class of fewer than ``RARE_CLASS`` images come next, while every part is short of its
    target, so that the first go to training: placed at random, a class of one image lands wherever
    the totals are shortest, often the test split, where nothing trained on it is tested on it."""

    def counts(idx: list[int]) -> np.ndarray:
        v = np.zeros(n_cls)
        for i in idx:
            v[recs[i].label if n_cls > 1 else 0] += 1
        return v

    class_total = counts(list(range(len(recs))))
    rare = {c for c in range(n_cls) if 0 < class_total[c] < RARE_CLASS} if n_cls > 1 else set()
    keys = sorted(units)
    rng = np.random.default_rng(seed)
    order = [keys[j] for j in rng.permutation(len(keys))]
    large = max(1.0, float(min(shares[shares > 0])) * len(recs) / 4)

    def holds_rare(k: str) -> bool:
        return any(recs[i].label in rare for i in units[k])

    def rank(k: str) -> tuple[int, int]:
        if len(units[k]) > large:
            return 0, -len(units[k])
        return (1 if holds_rare(k) else 2), 0

    order.sort(key=rank)  # stable: the rest stay random
    target = shares[:, None] * class_total[None, :]  # [part, class]
    have = np.zeros_like(target)
    assigned: list[list[int]] = [[] for _ in shares]
    for k in order:
        v = counts(units[k])
        if rank(k)[0] == 0 and not holds_rare(k):
            room = target - have  # [part, class]
            fits = np.flatnonzero(room.sum(axis=1) >= v.sum())
            weight = np.clip(room[fits], 0, None) @ v  # the room left in the unit's own classes
            if weight.sum() > 0:  # so each part ends up with about its share of them, per class
                p = int(fits[rng.choice(len(fits), p=weight / weight.sum())])
                have[p] += v
                assigned[p].extend(units[k])
                continue
        cost = []
        for p in range(len(shares)):
            before = ((have[p] - target[p]) ** 2).sum() + (have[p].sum() - target[p].sum()) ** 2
            after = ((have[p] + v - target[p]) ** 2).sum() + (have[p].sum() + v.sum() - target[p].sum()) ** 2
            cost.append(after - before)
        p = int(np.argmin(cost))
        have[p] += v
        assigned[p].extend(units[k])
    return assigned


def make_splits(
    catalog: Catalog,
    ratios: Sequence[float] = (0.7, 0.2, 0.1),
    seed: int = 0,
    groups: Sequence[DuplicateGroup] | None = None,
    label_conflicts: str = "leave_out",
) -> Splits:
    """Greedy assignment of whole units (a patient group, a duplicate group, or single images) to the
    part whose per-class and total counts are furthest below target (sklearn's group splitters take
    fold counts, not arbitrary ratios, and none stratifies while keeping groups whole). ``groups``
    are the dataset's duplicate groups (None: made without them).

    A dataset with its own test split (``catalog.test_ids``, e.g. UltraBench) keeps it: only the
    remaining images are split, into training and validation by ``ratios[0] : ratios[1]``."""
    r = _normalise(ratios)
    fixed = set(catalog.test_ids)
    left_out = _left_out(catalog, groups or (), label_conflicts)
    dropped = {i for ids in left_out.values() for i in ids}
    recs = [rec for rec in catalog.records if rec.id not in fixed and rec.id not in dropped]
    if len(catalog.records) < 3:
        raise UserError(f"{catalog.root}: need at least 3 images to split, found {len(catalog.records)}")
    n_cls = max(1, len(catalog.classes)) if catalog.has_labels else 1
    units = _units(recs, groups or ())
    shares = r[:2] / r[:2].sum() if fixed else r
    assigned = _assign(recs, units, shares, n_cls, seed)
    ids = [[recs[i].id for i in sorted(a)] for a in assigned]
    if fixed:
        ids.append([rec.id for rec in catalog.records if rec.id in fixed])
    for part, name in zip(ids, PARTS):
        if not part:
            raise UserError(
                f"{catalog.root}: {len(catalog.records)} images in {len(units)} groups are too few for a non-empty "
                f"'{name}' split with ratios {list(ratios)}"
            )
    grouping = _grouping(groups, units, left_out) if groups is not None else {}
    _warn_numbered_runs_split(catalog, recs, assigned)
    return Splits(
        *ids, seed=seed, ratios=[float(x) for x in ratios], dataset=catalog.name, left_out=left_out, grouping=grouping
    )


def _warn_numbered_runs_split(catalog: Catalog, recs: list, assigned: list[list[int]]) -> None:
    """Say when images without a group id whose names look like one clip's frames (``clip7_0012``)
    fell into several parts: the copy matcher joins some frames of a clip, never all of them."""
    free = [i for i, r in enumerate(recs) if r.group is None]
    part_of = {i: p for p, members in enumerate(assigned) for i in members}
    runs = numbered_runs([recs[i].id for i in free], list(catalog.classes))
    split = {name: m for name, m in runs.items() if len({part_of[free[k]] for k in m}) > 1}
    if split:
        name, members = max(split.items(), key=lambda kv: len(kv[1]))
        log.warning(
            f"{catalog.root}: the images of {len(split)} of {len(runs)} file-name runs ('{name}...', {len(members)} "
            "images) are in more than one of train/val/test; if each run is the frames of one clip, set "
            r"reader.group_pattern='^((?:.*/)?.*?)[_-]?\d+$' to keep a clip in one part"
        )


def check_splits(splits: Splits, catalog: Catalog, where: str, groups: Sequence[DuplicateGroup] = ()) -> None:
    """Every record in exactly one part or left out, nothing unknown, and no patient group (nor any
    of ``groups``, duplicate groups) in two parts."""
    known = set(catalog.ids())
    seen: dict[str, str] = {}
    for reason, ids in splits.left_out.items():
        for i in ids:
            if i not in known:
                raise UserError(f"{where}: left-out id '{i}' ({reason}) is not in the dataset {catalog.root}")
            seen[i] = "left_out"
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
            f"{where}: its test split is not the dataset's own ({catalog.root}'s test split); "
            "delete the file to re-split"
        )
    index = catalog.by_id()
    group_part: dict[str, str] = {}
    for i, p in seen.items():
        g = index[i].group
        if g is None or (catalog.test_ids and p == "test"):  # a given test split is the dataset's own choice
            continue
        if p != "left_out" and group_part.setdefault(g, p) != p:
            raise UserError(
                f"{where}: patient/group '{g}' is in both '{group_part[g]}' and '{p}' (made with other patient "
                "ids: reader.group_pattern? delete the file to re-split)"
            )
    for grp in groups:
        parts = {seen[i] for i in grp.ids if seen.get(i, "left_out") != "left_out"}
        if len(parts) > 1 and not (catalog.test_ids and "test" in parts):
            raise UserError(f"{where}: duplicate images {', '.join(grp.ids)} are in {' and '.join(sorted(parts))}")


def _read_splits(path: Path, ratios: Sequence[float], seed: int, options: dict) -> Splits:
    """A written ``splits.json``, refused when made with other ratios, seed or grouping options."""
    try:
        data = json.loads(path.read_text())
        splits = Splits(
            *(list(map(str, data[p])) for p in PARTS),
            seed=int(data.get("seed", seed)),
            ratios=list(data.get("ratios", ratios)),
            dataset=str(data.get("dataset", "")),
            left_out={str(k): list(map(str, v)) for k, v in data.get("left_out", {}).items()},
            grouping=dict(data.get("grouping", {})),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: not a splits file (expected train/val/test id lists): {exc}") from None
    if "ratios" in data and (
        not np.allclose(_normalise(data["ratios"]), _normalise(ratios)) or int(data.get("seed", seed)) != seed
    ):
        raise UserError(
            f"{path}: was made with ratios {data['ratios']} seed {data.get('seed')}, but the config asks for "
            f"ratios {list(ratios)} seed {seed}; delete the file or point split.file elsewhere"
        )
    differ = [k for k, v in options.items() if k in data and data[k] != v]  # files from before: no keys
    if differ:
        k = differ[0]
        raise UserError(
            f"{path}: was made with split.{k}={data[k]}, but the config asks for {options[k]}; "
            "delete the file or point split.file elsewhere"
        )
    return splits


def load_or_make_splits(
    catalog: Catalog,
    path: str | Path,
    ratios: Sequence[float] = (0.7, 0.2, 0.1),
    seed: int = 0,
    *,
    duplicates: bool = True,
    label_conflicts: str = "leave_out",
    workers: int = 1,
) -> Splits:
    """Reuse ``path`` if it exists (checked against the data and the requested ratios, seed and
    grouping options), else make the split (finding the duplicate groups in ``workers`` processes
    when ``duplicates``) and create the file once: processes racing to make it (sweep parts) all
    read the first."""
    path = Path(path)
    options = {"duplicates": duplicates, "label_conflicts": label_conflicts}
    if not path.is_file():
        groups = duplicate_groups(catalog, workers) if duplicates else None
        splits = make_splits(catalog, ratios, seed, groups, label_conflicts)
        if write_once(path, json_text({**options, **splits.to_json(catalog)})):
            return splits
    splits = _read_splits(path, ratios, seed, options)
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
