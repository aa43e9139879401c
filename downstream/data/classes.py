"""Reader for generic class folders: ``ROOT/<class>/<image>`` (any depth below the class).

Class names are the sub-folder names, sorted; label ``i`` is ``classes[i]``. Mask files
(``*_mask*``) inside class folders are attached to their image, so BUSI-like folders with
other class names also work. A class folder without images is an error; so is a root with
fewer than two class folders. ``classes=`` fixes the expected names and their order (a
missing one is an error). ``group_pattern`` gives patient ids (:mod:`downstream.data.grouping`;
none by default: a class folder's sub-folders may be devices or years).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from downstream.data.grouping import AUTO, GroupRule
from downstream.data.naming import images_with_masks, is_data_folder
from downstream.data.pixels import check_records
from downstream.data.record import Catalog, Record
from sonodistill.errors import UserError


def read_class_folders(
    root: str | Path,
    *,
    classes: Sequence[str] | None = None,
    name: str | None = None,
    check: bool = True,
    masks: bool = True,
    group_pattern: str = AUTO,
) -> Catalog:
    """Records of a folder of class folders (images with their ``_mask`` files); ``masks=False``: a
    classification task, which never reads the masks, does not check their sizes."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: data folder not found")
    present = sorted(p.name for p in root.iterdir() if is_data_folder(p))
    if classes is None:
        classes = present
        if len(classes) < 2:
            raise UserError(f"{root}: expected one sub-folder per class (at least 2), found {len(classes)}")
    else:
        missing = [c for c in classes if c not in present]
        if missing and check:  # the audit reads as found, and lists such classes as empty
            raise UserError(f"{root}: missing class folder(s) {', '.join(c + '/' for c in missing)}")
    rule = GroupRule(group_pattern, paired=False)
    records: list[Record] = []
    for label, cls in enumerate(classes):
        folder = root / cls
        pairs = images_with_masks(folder)
        if not pairs and check:
            raise UserError(f"{folder}: class folder '{cls}/' has no images")
        for p, ms in pairs:
            group = rule.group(p.relative_to(folder).with_suffix("").as_posix())
            rec_id = p.relative_to(root).as_posix()
            records.append(Record(id=rec_id, image=str(p), masks=tuple(map(str, ms)), label=label, group=group))
    rule.report(str(root))
    if check:
        check_records(records, masks=masks)
    return Catalog(name=name or root.name, root=str(root), records=records, classes=list(classes))
