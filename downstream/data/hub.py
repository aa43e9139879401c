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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from downstream.data.pixels import check_records
from downstream.data.record import Catalog, Record
from sonodistill.errors import UserError
from sonodistill.hub import hub_reachable, offline_unless_reachable


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
    """``need``: ``mask`` or ``label``, the column the task cannot do without (named in the error)."""
    import datasets

    loaded = _load(spec)
    parts = list(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    cols = parts[0][1].column_names
    wanted = {"image": image_column, "mask": mask_column if need == "mask" else "", "label": label_column}
    for what, column in wanted.items():
        if (what == "image" or what == need) and column not in cols:
            raise UserError(
                f"{spec}: no {what} column '{column}' (columns: {', '.join(cols)}); set reader.{what}_column"
            )
    has_mask = bool(mask_column) and mask_column in cols
    has_label = bool(label_column) and label_column in cols
    if group_column and group_column not in cols:
        raise UserError(f"{spec}: no group column '{group_column}' (columns: {', '.join(cols)})")

    classes: list[str] = []
    to_index: dict[Any, int] = {}
    if has_label:
        feat = parts[0][1].features[label_column]
        if isinstance(feat, datasets.ClassLabel):
            classes = list(feat.names)
            to_index = {i: i for i in range(len(classes))}
        else:
            values = sorted({v for _, t in parts for v in t[label_column]}, key=lambda v: (str(type(v)), v))
            classes = [str(v) for v in values]
            to_index = {v: i for i, v in enumerate(values)}

    records: list[Record] = []
    for split, table in parts:
        # read only the light columns row-wise; images stay lazy in HubImage
        light = table.select_columns([c for c in (label_column if has_label else None, group_column or None) if c])
        for row in range(len(table)):
            meta = light[row] if light.column_names else {}
            rid = f"{split}/{row}" if split else str(row)
            records.append(
                Record(
                    id=rid,
                    image=HubImage(table, row, image_column, spec),
                    masks=(HubImage(table, row, mask_column, spec),) if has_mask else (),
                    label=to_index[meta[label_column]] if has_label else None,
                    group=str(meta[group_column]) if group_column else None,
                )
            )
    if not records:
        raise UserError(f"{spec}: the dataset has no rows")
    split_names = [split for split, _ in parts]
    test_ids = [r.id for r in records if r.id.startswith("test/")] if "test" in split_names and len(parts) > 1 else []
    if check:
        check_records(records)
    name = spec[3:].rstrip("/").split("/")[-1] if spec.startswith("hf:") else Path(spec).name
    return Catalog(name=name, root=spec, records=records, classes=classes, test_ids=test_ids)
