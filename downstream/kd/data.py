"""Data for the KD recipes: the downstream readers and splits, recipe class subsets, the papers' augmentations.

Records, readers, ``splits.json`` and metrics come from :mod:`downstream` so the recipes run on
exactly the splits the foundation-model evaluation uses (point ``data.split.file`` at that run's
``splits.json``, and ``data.subset`` at its ``subset.json`` to train on the same label subset).
Added here: keeping a subset of classes (CSA-MoE is benign vs malignant), the
HDKD data-size sweep's balanced N-per-class subsets, the mask-derived views, and each paper's own
augmentation (they differ from the ultrasound-aware protocol of :mod:`downstream.data.transforms`:
CSA-MoE flips vertically, for one).
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

from downstream.data import ImageSet, ReaderConfig, Record, read_catalog
from downstream.data.record import Catalog
from downstream.kd.views import mask_views
from downstream.splits import SplitConfig, load_or_make_splits
from sonodistill.errors import UserError


@dataclass
class DataConfig:
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    classes: list[str] = field(default_factory=list)  # keep these classes, in this label order ([] = all)
    img_size: int = 224
    workers: int = 2
    split: SplitConfig = field(default_factory=SplitConfig)
    subset: str = ""  # a subset.json (downstream.run / sweep): train on its "train" ids only ("" = whole split)


@dataclass
class Prepared:
    catalog: Catalog  # with the recipe's classes only
    parts: dict[str, list[Record]]
    unlabelled: list[Record] = field(default_factory=list)  # training-split images outside data.subset

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


def read_subset(path: str | Path, train_ids: Sequence[str]) -> set[str]:
    """The training ids of a ``subset.json``, each checked to lie in the training split."""
    path = Path(path)
    try:
        ids = json.loads(path.read_text())["train"]
    except FileNotFoundError:
        raise UserError(f"data.subset: {path} not found") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"data.subset: {path} is not a subset file (expected a 'train' list of ids)") from None
    known = set(train_ids)
    outside = [i for i in ids if i not in known]
    if outside:
        raise UserError(
            f"data.subset: {len(outside)} id(s) of {path} are not in the training split, e.g. '{outside[0]}' "
            "(made with another split file?)"
        )
    return set(ids)


def prepare(
    data: str,
    cfg: DataConfig,
    out: Path,
    *,
    need_masks: bool = False,
    recipe: str = "",
    kind: Literal["cls", "seg"] = "cls",
) -> Prepared:
    """Read ``data``, split it (or reuse ``split.file``), keep ``cfg.classes`` and ``cfg.subset``.

    The split is made on the full dataset, then each part is filtered to the recipe's classes,
    so a benign/malignant recipe and a 3-class run share one ``splits.json``.
    """
    full = read_catalog(data, kind, cfg.reader)
    split_file = Path(cfg.split.file) if cfg.split.file else out / "splits.json"
    ratios, seed = cfg.split.ratios, cfg.split.seed
    if cfg.split.file:
        if not split_file.is_file():
            raise UserError(f"data.split.file: {split_file} not found")
        try:  # a given file is used as made (its own ratios and seed), e.g. a downstream run's splits.json
            made = json.loads(split_file.read_text())
        except ValueError:
            made = None  # not JSON: load_or_make_splits reports it
        if isinstance(made, dict):
            ratios, seed = made.get("ratios", ratios), int(made.get("seed", seed))
    splits = load_or_make_splits(full, split_file, ratios, seed)
    catalog = select_classes(full, cfg.classes, "data.classes")
    index = catalog.by_id()
    parts = {p: [index[i] for i in splits.part(p) if i in index] for p in ("train", "val", "test")}
    unlabelled: list[Record] = []
    if cfg.subset:
        keep = read_subset(cfg.subset, splits.train)
        unlabelled = [r for r in parts["train"] if r.id not in keep]
        parts["train"] = [r for r in parts["train"] if r.id in keep]
    if need_masks:
        missing = [r.id for r in catalog.records if not r.masks]
        if missing:
            raise UserError(
                f"{data}: {recipe or 'this recipe'} needs a lesion mask for every image (mask-derived views); "
                f"{len(missing)} of {len(catalog)} have none, e.g. '{missing[0]}' (expected '<name>_mask.png')"
            )
    for p, recs in parts.items():
        if not recs and ratios[("train", "val", "test").index(p)] > 0:
            raise UserError(f"{data}: the '{p}' split has no images of classes {', '.join(catalog.classes)}")
    return Prepared(catalog, parts, unlabelled)


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


def augmentation(hflip: float = 0.0, vflip: float = 0.0, degrees: float = 0.0) -> torch.nn.Module | None:
    """A paper's geometric augmentation (kornia, batched on the device; ``None`` when all off).

    Channels share one random draw per sample, so the three CSA-MoE views stay aligned."""
    ops: list[torch.nn.Module] = []
    if hflip > 0:
        ops.append(K.RandomHorizontalFlip(p=hflip))
    if vflip > 0:
        ops.append(K.RandomVerticalFlip(p=vflip))
    if degrees > 0:
        ops.append(K.RandomRotation(degrees=degrees, p=1.0))
    return K.AugmentationSequential(*ops, data_keys=["input"]) if ops else None
