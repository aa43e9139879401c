"""Reader for `datasets` data: ``hf:ID`` (Hub, or its local cache when offline), a folder saved
with ``save_to_disk``, or an ``imagefolder`` folder (loaded through ``datasets``).

Columns (configurable): ``image`` (Image), ``mask`` (Image, optional), ``label`` (ClassLabel,
strings or ints, optional), ``group`` (patient id, optional). A DatasetDict's splits are
concatenated (ids ``<split>/<row>``); its ``test`` split, when it has one besides others, is kept
as the test split (as UltraBench's ``test.json``: numbers stay comparable with the dataset's
published ones) and :mod:`downstream.splits` splits only the rest into training and validation;
without one, every row is split by the same reproducible protocol.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from downstream.data.pixels import check_records
from downstream.data.record import Catalog, Record
from sonodistill.errors import UserError
from sonodistill.hub import hub_reachable, offline_unless_reachable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubImage:
    """One image cell of a `datasets` table (pickles by reference to its Arrow files)."""

    table: Any
    row: int
    column: str
    where: str

    def open(self) -> Image.Image:
        img = self.table[self.row][self.column]
        if not isinstance(img, Image.Image):
            raise UserError(f"{self.describe()}: column '{self.column}' is not an image column")
        return img

    def describe(self) -> str:
        return f"{self.where}[{self.row}].{self.column}"

    def stamp(self) -> str:
        return str(getattr(self.table, "_fingerprint", ""))  # datasets' own hash of the table's content


def is_saved_dataset(root: Path) -> bool:
    """A folder written by ``save_to_disk`` (a DatasetDict or one Dataset)."""
    return (root / "dataset_dict.json").is_file() or (root / "state.json").is_file()


def _load(spec: str):
    import datasets

    try:
        if spec.startswith("hf:"):
            if is_saved_dataset(Path(spec[3:])):
                raise UserError(f"{spec}: a folder written by save_to_disk; give it without 'hf:' ({spec[3:]})")
            with offline_unless_reachable():
                return datasets.load_dataset(spec[3:])
        root = Path(spec)
        if not root.is_dir():
            raise UserError(f"{spec}: dataset folder not found")
        if is_saved_dataset(root):
            return datasets.load_from_disk(str(root))
        return datasets.load_dataset("imagefolder", data_dir=str(root))
    except UserError:
        raise
    except Exception as exc:  # offline Hub, missing cache, unreadable Arrow: one clear line
        if isinstance(exc, ConnectionError) and not hub_reachable():
            raise UserError(f"{spec}: not in the local datasets cache, and the Hub is not reachable") from None
        msg = " ".join(str(exc).split())[:300]
        raise UserError(f"{spec}: cannot load the dataset ({type(exc).__name__}: {msg})") from None


def _columns_of(spec: str, parts: list[tuple[str, Any]], wanted: dict[str, str], need: str) -> list[tuple[str, Any]]:
    """The splits that hold the columns a task needs: the image column and ``need``'s in every split
    (an error naming the column and the columns there are otherwise), except a split without
    ``need``'s column beside others that have it (a Hub dataset's unlabelled ``test`` split), which is
    left out with a warning."""
    kept = []
    for split, table in parts:
        cols = table.column_names
        where = f"{spec}" + (f" split '{split}'" if split else "")
        for what, column in wanted.items():
            if column and column not in cols and (what == "image" or what == need or what == "group"):
                if what == need and len(parts) > 1 and any(wanted[need] in t.column_names for _, t in parts):
                    log.warning("%s has no %s column '%s': its %d rows are left out", where, what, column, len(table))
                    break
                raise UserError(
                    f"{where}: no {what} column '{column}' (columns: {', '.join(cols)}); set reader.{what}_column"
                )
        else:
            kept.append((split, table))
    return kept


def _class_index(parts: list[tuple[str, Any]], column: str) -> tuple[list[str], dict[Any, int]]:
    """Class names and the label value -> index map: a ClassLabel's names, or the sorted values of a
    string/integer column (no label -- None, ClassLabel's -1 -- is a class)."""
    import datasets

    feat = parts[0][1].features[column]
    if isinstance(feat, datasets.ClassLabel):
        return list(feat.names), {i: i for i in range(len(feat.names))}
    values = {v for _, t in parts for v in t[column]} - {None}
    ordered = sorted(values, key=lambda v: (str(type(v)), v))
    return [str(v) for v in ordered], {v: i for i, v in enumerate(ordered)}


def read_hub(
    spec: str,
    *,
    image_column: str = "image",
    mask_column: str = "mask",
    label_column: str = "label",
    group_column: str = "",
    check: bool = True,
    need: str = "",
) -> Catalog:
    """``need``: ``mask`` or ``label``, the column the task cannot do without (named in the error).
    Rows without a label (None, or ClassLabel's -1: a Hub test split whose labels are withheld) are
    left out of a classification task with a warning."""
    import datasets

    loaded = _load(spec)
    parts = list(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    wanted = {"image": image_column, "mask": mask_column if need == "mask" else "", "label": label_column}
    parts = _columns_of(spec, parts, {**wanted, "group": group_column}, need)
    cols = set.intersection(*(set(t.column_names) for _, t in parts))
    has_mask = bool(mask_column) and mask_column in cols
    has_label = bool(label_column) and label_column in cols
    classes, to_index = _class_index(parts, label_column) if has_label else ([], {})
    # ClassLabel's -1 is its "no label"; in a plain column -1 may be a class
    class_label = has_label and isinstance(parts[0][1].features[label_column], datasets.ClassLabel)
    no_label = {None, -1} if class_label else {None}

    records: list[Record] = []
    for split, table in parts:
        # read only the light columns row-wise; images stay lazy in HubImage
        light = table.select_columns([c for c in (label_column if has_label else None, group_column or None) if c])
        unlabelled = 0
        for row in range(len(table)):
            meta = light[row] if light.column_names else {}
            rid = f"{split}/{row}" if split else str(row)
            label = meta[label_column] if has_label else None
            if has_label and label in no_label:
                if need == "label":
                    unlabelled += 1
                    continue
                label = None  # a segmentation task keeps the row
            elif has_label and label not in to_index:
                raise UserError(f"{spec}[{rid}].{label_column}: {label!r} is not one of the {len(classes)} classes")
            records.append(
                Record(
                    id=rid,
                    image=HubImage(table, row, image_column, spec),
                    masks=(HubImage(table, row, mask_column, spec),) if has_mask else (),
                    label=None if label is None else to_index[label],
                    group=str(meta[group_column]) if group_column else None,
                )
            )
        if unlabelled and need == "label":
            where = spec + (f" split '{split}'" if split else "")
            log.warning("%s: %d rows without a label are left out", where, unlabelled)
    if not records:
        raise UserError(f"{spec}: the dataset has no rows" + (" with a label" if has_label else ""))
    split_names = {split for split, _ in parts}
    test_ids = [r.id for r in records if r.id.startswith("test/")] if "test" in split_names and len(parts) > 1 else []
    if check:
        check_records(records, masks=has_mask)
    name = spec[3:].rstrip("/").split("/")[-1] if spec.startswith("hf:") else Path(spec).name
    return Catalog(name=name, root=spec, records=records, classes=classes, test_ids=test_ids)
