"""Pick the reader for a data location and a task kind (``seg`` needs masks, ``cls`` labels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from downstream.data.busi import BUSI_CLASSES, read_busi
from downstream.data.classes import read_class_folders
from downstream.data.hub import read_hub
from downstream.data.paired import DDTI_GROUP, is_paired_layout, read_paired
from downstream.data.record import Catalog
from downstream.data.ultrabench import read_ultrabench
from sonodistill.errors import UserError

Layout = Literal["auto", "busi", "paired", "classes", "hf", "ub"]


@dataclass
class ReaderConfig:
    layout: Layout = "auto"  # auto: hf:ID -> hf, ub:DIR or train_val.json+test.json -> ub, image+mask -> paired, BUSI
    group_pattern: str = DDTI_GROUP  # paired layout: regex on the image stem, group 1 = patient id ("" = none)
    image_column: str = "image"  # hf layout columns
    mask_column: str = "mask"  # hf columns / ub record fields (psfh_mask, mass_mask, tumor_mask, ...)
    label_column: str = "label"  # hf columns / ub record field holding the class label
    group_column: str = ""  # "" = none (hf) / patient or source when every record has it (ub)
    mask_values: list[int] = field(default_factory=list)  # ub label maps: foreground values ([] = non-zero)


def _is_busi(root: Path) -> bool:
    if all((root / c).is_dir() for c in BUSI_CLASSES):
        return True
    return any(p.is_dir() and all((p / c).is_dir() for c in BUSI_CLASSES) for p in root.iterdir())


def _is_saved_dataset(root: Path) -> bool:
    return (root / "dataset_dict.json").is_file() or (root / "state.json").is_file()


def detect_layout(data: str) -> str:
    if data.startswith("hf:"):
        return "hf"
    if data.startswith("ub:"):
        return "ub"
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"{data}: data folder not found (or use hf:ID for a Hub dataset, ub:DIR for UltraBench)")
    if _is_saved_dataset(root):
        return "hf"
    if (root / "train_val.json").is_file() and (root / "test.json").is_file():
        return "ub"
    if is_paired_layout(root):
        return "paired"
    if _is_busi(root):
        return "busi"
    return "classes"


def read_catalog(data: str, kind: Literal["seg", "cls"], cfg: ReaderConfig | None = None) -> Catalog:
    """Records for ``data`` checked for what ``kind`` needs (masks for seg, labels for cls)."""
    cfg = cfg or ReaderConfig()
    layout = detect_layout(data) if cfg.layout == "auto" else cfg.layout
    if layout == "busi":
        cat = read_busi(data, require_masks=(kind == "seg"))
    elif layout == "paired":
        cat = read_paired(data, group_pattern=cfg.group_pattern)
    elif layout == "classes":
        cat = read_class_folders(data)
    elif layout == "hf":
        cat = read_hub(
            data,
            image_column=cfg.image_column,
            mask_column=cfg.mask_column if kind == "seg" else "",
            label_column=cfg.label_column,
            group_column=cfg.group_column,
        )
    elif layout == "ub":
        cat = read_ultrabench(
            data,
            kind,
            mask_column=cfg.mask_column,
            label_column=cfg.label_column,
            group_column=cfg.group_column,
            mask_values=cfg.mask_values,
        )
    else:
        raise UserError(f"data.layout: expected one of auto, busi, paired, classes, hf, ub; got '{layout}'")
    if kind == "seg" and not cat.has_masks:
        raise UserError(
            f"{data}: segmentation needs a mask for every image ({layout} layout found none or some missing)"
        )
    if kind == "cls" and not cat.has_labels:
        raise UserError(f"{data}: classification needs class labels ({layout} layout has none)")
    if kind == "cls" and len(cat.classes) < 2:
        raise UserError(f"{data}: classification needs at least 2 classes, found {len(cat.classes)}")
    return cat
