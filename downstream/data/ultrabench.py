"""Reader for UltraBench's processed datasets (``ub:DIR``; Tupper & Gagné, TMLR 2025,
github.com/adamtupper/ultrabench).

``ultrabench <dataset> RAW OUT`` writes one folder per task family::

    DIR/train_val.json   DIR/test.json          JSON arrays, one object per image
    DIR/images/...       DIR/masks/<kind>/...   paths in the records are relative to DIR

Every record has ``image`` and ``scan_mask``; the target field differs per dataset: ``label``
(an integer class, with its name in ``pathology`` or ``class`` where the dataset gives one) for
classification, and a mask field for segmentation (``mask`` for CAMUS, ``psfh_mask`` for PSFHS,
``mass_mask`` / ``liver_mask`` for AUL, ``tumor_mask_binary`` for MMOTU, ``capsule_mask`` for Open
Kidney, ``tumor_mask`` for Stanford Thyroid). The field is a reader option
(``reader.mask_column`` / ``reader.label_column``), checked against the records: a missing field
is an error that lists the fields the records have. Multi-class masks (CAMUS structures, PSFHS
pubic symphysis / fetal head) become binary by ``reader.mask_values`` (the label values counted as
foreground; default: every non-zero value). Patient ids (``patient``, or ``source`` for POCUS
videos; ``reader.group_column``) keep splits patient-level. The dataset's own test split
(``test.json``) is honoured: :mod:`downstream.splits` splits only ``train_val.json`` into training
and validation. ``scan_mask`` is not used (our augmentations do not need the scan region).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from downstream.data.pixels import LabelMask, check_records
from downstream.data.record import Catalog, Record
from sonodistill.errors import UserError

FILES = ("train_val.json", "test.json")
NAME_FIELDS = ("pathology", "class")  # where a dataset names its integer labels
GROUP_FIELDS = ("patient", "source")


def is_ultrabench(root: Path) -> bool:
    """A processed UltraBench folder: ``train_val.json`` and ``test.json`` side by side."""
    return all((root / name).is_file() for name in FILES)


def _records(root: Path, name: str) -> list[dict[str, Any]]:
    path = root / name
    if not path.is_file():
        other = sorted(p.name for p in root.glob("*.json"))
        raise UserError(
            f"{root}: no {name}; an UltraBench dataset folder holds train_val.json and test.json"
            + (f" (found {', '.join(other)})" if other else "")
        )
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) and "image" in r for r in data):
        raise UserError(f"{path}: expected a JSON array of objects with an 'image' path")
    return data


def _check_field(rows: list[tuple[str, dict]], field: str, what: str, option: str) -> None:
    missing = [(f, r) for f, r in rows if r.get(field) is None]
    if missing:
        fields = sorted({k for _, r in rows for k, v in r.items() if v is not None and k != "image"})
        f, r = missing[0]
        mine = [x for x, _ in rows if x == f]
        raise UserError(
            f"{f}: {sum(x == f for x, _ in missing)} of its {len(mine)} records have no {what} field '{field}' "
            f"(e.g. image '{r['image']}'); set {option} to one of the records' fields: {', '.join(fields)}"
        )


def _check_labels(rows: list[tuple[str, dict]], field: str) -> None:
    """Labels are integers or strings, and every class has training images (not only test ones)."""
    for f, r in rows:
        v = r[field]
        if not isinstance(v, (int, str)) or isinstance(v, bool):
            raise UserError(
                f"{f}: image '{r['image']}' has {field} {json.dumps(v)}; expected one class (an integer or a "
                "name) per image"
            )
    train = {r[field] for f, r in rows if not f.endswith("test.json")}
    only_test = sorted({r[field] for f, r in rows if f.endswith("test.json")} - train, key=str)
    if only_test:
        f, r = next((f, r) for f, r in rows if r[field] == only_test[0])
        raise UserError(
            f"{f}: class {json.dumps(only_test[0])} (e.g. image '{r['image']}') has no image in train_val.json: "
            "a model cannot learn it"
        )


def _classes(rows: list[tuple[str, dict]], field: str) -> tuple[list[str], dict[Any, int]]:
    """Class names and value -> index. Integer labels keep their order and take their names from a
    name field when it maps one-to-one; other values are sorted and named by themselves."""
    values = sorted({r[field] for _, r in rows}, key=lambda v: (isinstance(v, str), v))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        for nf in NAME_FIELDS:
            pairs = {(r[field], r.get(nf)) for _, r in rows}
            if all(n is not None for _, n in pairs) and len(pairs) == len(values):
                names = dict(pairs)
                if len(set(names.values())) == len(values):
                    return [str(names[v]) for v in values], {v: i for i, v in enumerate(values)}
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


def read_ultrabench(
    spec: str,
    kind: Literal["seg", "cls"],
    *,
    mask_column: str = "mask",
    label_column: str = "label",
    group_column: str = "",
    mask_values: Sequence[int] = (),
    check: bool = True,
) -> Catalog:
    """Records of an UltraBench dataset folder (``ub:DIR`` or ``DIR``) for a segmentation or
    classification task, with the dataset's test split fixed."""
    root = Path(spec[3:] if spec.startswith("ub:") else spec)
    if not root.is_dir():
        raise UserError(f"{spec}: UltraBench dataset folder not found")
    rows = []
    for name in FILES:
        mine = _records(root, name)
        if not mine:  # an empty test split would silently be replaced by one cut from train_val.json
            raise UserError(f"{root / name}: holds no records (UltraBench's {name} is never empty)")
        rows += [(str(root / name), r) for r in mine]
    if kind == "seg":
        _check_field(rows, mask_column, "mask", "reader.mask_column")
    else:
        _check_field(rows, label_column, "label", "reader.label_column")
        _check_labels(rows, label_column)
    group = group_column or next((g for g in GROUP_FIELDS if all(r.get(g) is not None for _, r in rows)), "")
    if group_column:
        _check_field(rows, group_column, "patient/group", "reader.group_column")
    classes, index = _classes(rows, label_column) if kind == "cls" else ([], {})
    values = tuple(int(v) for v in mask_values)
    records, test_ids, seen = [], [], set()
    for where, r in rows:
        rid = str(r["image"])
        if rid in seen:
            raise UserError(f"{where}: image '{rid}' is listed twice in {root}")
        seen.add(rid)
        records.append(
            Record(
                id=rid,
                image=str(root / rid),
                masks=(LabelMask(str(root / r[mask_column]), values),) if kind == "seg" else (),
                label=index[r[label_column]] if kind == "cls" else None,
                group=str(r[group]) if group else None,
            )
        )
        if where.endswith("test.json"):
            test_ids.append(rid)
    if check:
        check_records(records)
    # every other path a record names (scan masks, the masks of other tasks): not data the run leaves out
    named = {str(root / v) for _, r in rows for k, v in r.items() if k != "image" and isinstance(v, str)}
    return Catalog(
        name=root.name, root=str(root), records=records, classes=classes, test_ids=test_ids, other_files=sorted(named)
    )
