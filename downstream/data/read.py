"""Pick the reader for a data location and a task kind (``seg`` needs masks, ``cls`` labels).

:data:`LAYOUTS` lists the dataset layouts in detection order. With ``layout: auto`` a location
starting with a layout's prefix (``hf:``, ``ub:``) is that layout; otherwise the first layout whose
``detect`` recognises the folder reads it. The order matters: an UltraBench folder also holds
``images/`` and ``masks/`` (so ``ub`` comes before ``paired``), and ``classes`` takes any folder, so
it comes last. A new layout is its reader module (a ``detect(root)`` and a reader) plus one row here,
its name in :data:`Layout` and, when the row needs a new reader option, a :class:`ReaderConfig` key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from downstream.data.busi import is_busi_layout, read_busi
from downstream.data.classes import read_class_folders
from downstream.data.grouping import AUTO
from downstream.data.hub import is_saved_dataset, read_hub
from downstream.data.paired import is_paired_layout, read_paired
from downstream.data.pixels import LabelMask, check_mask_values
from downstream.data.record import Catalog, source_file
from downstream.data.ultrabench import is_ultrabench, read_ultrabench
from sonodistill.errors import UserError

Layout = Literal["auto", "busi", "paired", "classes", "hf", "ub"]
Kind = Literal["seg", "cls"]


@dataclass
class ReaderConfig:
    layout: Layout = "auto"  # auto: hf:ID -> hf, ub:DIR or train_val.json+test.json -> ub, image+mask -> paired, BUSI
    group_pattern: str = AUTO  # regex on the file name (the path if it holds "/") -> patient id ("" = none)
    image_column: str = "image"  # hf layout columns
    mask_column: str = "mask"  # hf columns / ub record fields (psfh_mask, mass_mask, tumor_mask, ...)
    label_column: str = "label"  # hf columns / ub record field holding the class label
    group_column: str = ""  # "" = none (hf) / patient or source when every record has it (ub)
    mask_values: list[int] = field(default_factory=list)  # label-map foreground values ([] = each mask's own rule)


@dataclass(frozen=True)
class DatasetLayout:
    detect: Callable[[Path], bool]  # layout auto: does this folder have the layout
    read: Callable[[str, Kind, ReaderConfig, bool], Catalog]  # (data location, task kind, reader options, check)
    prefix: str = ""  # a location starting with it has this layout, folder or not (hf:ID, ub:DIR)


# Each adapter hands its reader the task kind, the ReaderConfig keys it takes and whether to check
# that every image opens, has its mask files and every mask its image's size (the audit reads
# unchecked, to report what is wrong: an image without a mask is then kept, with no masks).
def _hub(data: str, kind: Kind, cfg: ReaderConfig, check: bool) -> Catalog:
    mask = cfg.mask_column if kind == "seg" else ""
    columns = {"image_column": cfg.image_column, "label_column": cfg.label_column, "group_column": cfg.group_column}
    return read_hub(data, mask_column=mask, check=check, need="mask" if kind == "seg" else "label", **columns)


def _ultrabench(data: str, kind: Kind, cfg: ReaderConfig, check: bool) -> Catalog:
    columns = {"mask_column": cfg.mask_column, "label_column": cfg.label_column, "group_column": cfg.group_column}
    return read_ultrabench(data, kind, mask_values=cfg.mask_values, check=check, **columns)


def _paired(data: str, kind: Kind, cfg: ReaderConfig, check: bool) -> Catalog:
    return read_paired(data, group_pattern=cfg.group_pattern, require_masks=check, check=check)


def _busi(data: str, kind: Kind, cfg: ReaderConfig, check: bool) -> Catalog:
    # classification needs no masks
    return read_busi(data, require_masks=(kind == "seg" and check), check=check, group_pattern=cfg.group_pattern)


def _class_folders(data: str, kind: Kind, cfg: ReaderConfig, check: bool) -> Catalog:
    root = Path(data)
    if kind == "seg" and root.is_dir() and sum(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()) < 2:
        # the fallback layout's own message would ask a segmentation user for class folders
        raise UserError(
            f"{data}: no segmentation layout found: expected image/ and mask/ folders (or images/, masks/, "
            "labels/, gt/), class folders of images with their _mask files, a saved dataset, or ub:DIR"
        )
    # classification needs no masks
    return read_class_folders(data, check=check, masks=kind == "seg", group_pattern=cfg.group_pattern)


def _any_folder(root: Path) -> bool:
    return True  # the fallback: read_class_folders says what a folder without class folders lacks


LAYOUTS: dict[str, DatasetLayout] = {  # detection order
    "hf": DatasetLayout(is_saved_dataset, _hub, prefix="hf:"),
    "ub": DatasetLayout(is_ultrabench, _ultrabench, prefix="ub:"),
    "paired": DatasetLayout(is_paired_layout, _paired),
    "busi": DatasetLayout(is_busi_layout, _busi),
    "classes": DatasetLayout(_any_folder, _class_folders),
}


def detect_layout(data: str) -> str:
    for name, layout in LAYOUTS.items():
        if layout.prefix and data.startswith(layout.prefix):
            return name
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"{data}: data folder not found (or use hf:ID for a Hub dataset, ub:DIR for UltraBench)")
    return next(name for name, layout in LAYOUTS.items() if layout.detect(root))


LOSSY = (".jpg", ".jpeg", ".jpe", ".jfif")  # compression moves a label map's values


def _check_lossless(cat: Catalog) -> None:
    """``reader.mask_values`` matches label values exactly: a JPEG mask's values are blurred at every
    edge (a 0/255 mask read by [255] lost a fifth of its lesion), and its noise fakes other labels."""
    for r in cat.records:
        for m in r.masks:
            path = source_file(m)
            if path is not None and Path(path).suffix.lower() in LOSSY:
                raise UserError(
                    f"{path}: reader.mask_values needs lossless masks (PNG, TIFF, BMP), this one is JPEG; "
                    "leave reader.mask_values empty to use the automatic rule, which reads JPEG masks"
                )


def read_catalog(data: str, kind: Kind, cfg: ReaderConfig | None = None, check: bool = True) -> Catalog:
    """Records for ``data`` checked for what ``kind`` needs (masks for seg, labels for cls); with
    ``check``, also that every image opens and every mask has its image's size."""
    cfg = cfg or ReaderConfig()
    layout = detect_layout(data) if cfg.layout == "auto" else cfg.layout
    if layout not in LAYOUTS:
        raise UserError(f"data.layout: expected one of {', '.join(get_args(Layout))}; got '{layout}'")
    cat = LAYOUTS[layout].read(data, kind, cfg, check)
    if kind == "seg" and not (cat.has_masks if check else any(r.masks for r in cat.records)):
        raise UserError(
            f"{data}: segmentation needs a mask for every image ({layout} layout found none or some missing)"
        )
    if kind == "seg" and cfg.mask_values:
        if check:  # the audit reads on, to list what is wrong
            _check_lossless(cat)
        values = tuple(int(v) for v in cfg.mask_values)
        if layout != "ub":  # UltraBench's reader reads its label maps by these values itself
            cat.records = [replace(r, masks=tuple(LabelMask(m, values) for m in r.masks)) for r in cat.records]
        if check:
            check_mask_values(cat.records, values)
    if kind == "cls" and not cat.has_labels:
        raise UserError(f"{data}: classification needs class labels ({layout} layout has none)")
    if kind == "cls" and len(cat.classes) < 2:
        raise UserError(f"{data}: classification needs at least 2 classes, found {len(cat.classes)}")
    return cat
