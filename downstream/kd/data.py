"""Data for the KD recipes: the downstream readers and splits, recipe class subsets, the papers' augmentations.

Records, readers, ``splits.json`` and metrics come from :mod:`downstream` so the recipes run on
exactly the splits the foundation-model evaluation uses (point ``split.file`` at that run's
``splits.json``, and ``subset`` at its ``subset.json`` to train on the same label subset). A recipe
receives its data read and split once, in memory (:class:`PreparedData`): ``python -m downstream.kd
train`` makes it with :func:`prepare`, a sweep cell with :func:`from_splits` from the data, split
and label subset the encoder cells use. Added here: keeping a subset of classes (CSA-MoE is benign
vs malignant), the HDKD data-size sweep's balanced N-per-class subsets, the mask-derived views, and
each paper's own augmentation (they differ from the ultrasound-aware protocol of
:mod:`downstream.data.transforms`: CSA-MoE flips vertically, for one).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import kornia.augmentation as K
import numpy as np
import torch

from downstream.data import ImageSet, Record, read_catalog
from downstream.data.record import Catalog
from downstream.kd.config import FlipRotateConfig, RecipeConfig
from downstream.kd.views import mask_views
from downstream.splits import Splits, load_or_make_splits
from sonodistill.errors import UserError


@dataclass
class PreparedData:
    """A recipe's data, read and split once: its classes' records per part and the label subset."""

    source: str  # the data location as given (a folder, hf:ID, ub:DIR)
    catalog: Catalog  # with the recipe's classes only
    parts: dict[str, list[Record]]  # train (the label subset, if any) / val / test
    unlabelled: list[Record] = field(default_factory=list)  # training-split images outside the label subset

    @property
    def classes(self) -> list[str]:
        return self.catalog.classes


def select_classes(catalog: Catalog, classes: Sequence[str], where: str) -> Catalog:
    """Records of ``classes`` only, relabelled ``0..len(classes)-1`` in that order."""
    if not classes:
        return catalog
    unknown = [c for c in classes if c not in catalog.classes]
    if unknown:
        raise UserError(f"{where}: class(es) {', '.join(unknown)} not in the data (has {', '.join(catalog.classes)})")
    new = {catalog.classes.index(c): i for i, c in enumerate(classes)}
    recs = [dataclasses.replace(r, label=new[r.label]) for r in catalog.records if r.label in new]
    return Catalog(name=catalog.name, root=catalog.root, records=recs, classes=list(classes))


def read_subset(path: str | Path, train_ids: Sequence[str]) -> list[str]:
    """The training ids of a ``subset.json``, each checked to lie in the training split."""
    path = Path(path)
    try:
        ids = json.loads(path.read_text())["train"]
    except FileNotFoundError:
        raise UserError(f"subset: {path} not found") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"subset: {path} is not a subset file (expected a 'train' list of ids)") from None
    known = set(train_ids)
    outside = [i for i in ids if i not in known]
    if outside:
        raise UserError(
            f"subset: {len(outside)} id(s) of {path} are not in the training split, e.g. '{outside[0]}' "
            "(made with another split file?)"
        )
    return list(ids)


def prepare(
    source: str,
    cfg: RecipeConfig,
    out: Path,
    *,
    need_masks: bool = False,
    recipe: str = "",
    kind: Literal["cls", "seg"] = "cls",
) -> PreparedData:
    """Read ``source``, split it (or reuse ``split.file``), keep ``cfg.classes`` and ``cfg.subset``."""
    full = read_catalog(source, kind, cfg.reader)
    split_file = Path(cfg.split.file) if cfg.split.file else out / "splits.json"
    ratios, seed = cfg.split.ratios, cfg.split.seed
    if cfg.split.file:
        if not split_file.is_file():
            raise UserError(f"split.file: {split_file} not found")
        try:  # a given file is used as made (its own ratios and seed), e.g. a downstream run's splits.json
            made = json.loads(split_file.read_text())
        except ValueError:
            made = None  # not JSON: load_or_make_splits reports it
        if isinstance(made, dict):
            ratios, seed = made.get("ratios", ratios), int(made.get("seed", seed))
    splits = load_or_make_splits(full, split_file, ratios, seed)
    train_ids = read_subset(cfg.subset, splits.train) if cfg.subset else None
    return from_splits(source, full, splits, cfg.classes, train_ids, need_masks=need_masks, recipe=recipe)


def from_splits(
    source: str,
    full: Catalog,
    splits: Splits,
    classes: Sequence[str],
    train_ids: Sequence[str] | None = None,
    *,
    need_masks: bool = False,
    recipe: str = "",
) -> PreparedData:
    """A recipe's data from a read catalog, its split and (optionally) the label subset ``train_ids``.

    The split is made on the full dataset, then each part is filtered to the recipe's ``classes``,
    so a benign/malignant recipe and a 3-class run share one ``splits.json``.
    """
    catalog = select_classes(full, classes, "classes")
    index = catalog.by_id()
    parts = {p: [index[i] for i in splits.part(p) if i in index] for p in ("train", "val", "test")}
    unlabelled: list[Record] = []
    if train_ids is not None:
        keep = set(train_ids)
        unlabelled = [r for r in parts["train"] if r.id not in keep]
        parts["train"] = [r for r in parts["train"] if r.id in keep]
    if need_masks:
        missing = [r.id for r in catalog.records if not r.masks]
        if missing:
            raise UserError(
                f"{source}: {recipe or 'this recipe'} needs a lesion mask for every image (mask-derived views); "
                f"{len(missing)} of {len(catalog)} have none, e.g. '{missing[0]}' (expected '<name>_mask.png')"
            )
    for p, recs in parts.items():
        if not recs and splits.ratios[("train", "val", "test").index(p)] > 0:
            raise UserError(f"{source}: the '{p}' split has no images of classes {', '.join(catalog.classes)}")
    return PreparedData(source, catalog, parts, unlabelled)


def balanced_subset(records: Sequence[Record], per_class: int, seed: int) -> list[Record]:
    """``per_class`` records of every class (all of a smaller class), seeded; ``per_class <= 0``: all.

    HDKD's data-size sweep (paper 001, §4.4): 50/100/150 images per class; a class with fewer
    images keeps all of them (its HAM-10000 DF and VASC rows)."""
    if per_class <= 0:
        return list(records)
    rng = np.random.default_rng([int(seed), per_class, 0xD5])
    by_class: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_class.setdefault(int(r.label), []).append(i)
    keep: list[int] = []
    for lab in sorted(by_class):
        members = by_class[lab]
        keep.extend(members[j] for j in rng.permutation(len(members))[:per_class])
    return [records[i] for i in sorted(keep)]


class ViewSet(ImageSet):
    """:class:`ImageSet` items plus ``views``: uint8 [3, S, S] whole image, tumour core, boundary band."""

    def __init__(self, records: Sequence[Record], size: int, iterations: int = 5):
        super().__init__(records, size, masks=True, labels=True)
        self.iterations = iterations

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        views = mask_views(item["image"][0].numpy(), item.pop("mask")[0].numpy().astype(bool), self.iterations)
        item["views"] = torch.from_numpy(views)
        del item["image"]
        return item


def augmentation(cfg: FlipRotateConfig) -> torch.nn.Module | None:
    """A paper's geometric augmentation (kornia, batched on the device; ``None`` when all off).

    Channels share one random draw per sample, so the three CSA-MoE views stay aligned."""
    ops: list[torch.nn.Module] = []
    if cfg.hflip > 0:
        ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
    if cfg.vflip > 0:
        ops.append(K.RandomVerticalFlip(p=cfg.vflip))
    if cfg.degrees > 0:
        ops.append(K.RandomRotation(degrees=cfg.degrees, p=1.0))
    return K.AugmentationSequential(*ops, data_keys=["input"]) if ops else None
