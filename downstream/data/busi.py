"""Reader for BUSI's real layout.

::

    ROOT/benign/benign (1).png          ROOT/benign/benign (1)_mask.png
    ROOT/benign/benign (4).png          ROOT/benign/benign (4)_mask.png  benign (4)_mask_1.png
    ROOT/malignant/malignant (1).png    ...
    ROOT/normal/normal (1).png          ROOT/normal/normal (1)_mask.png   (all zero)

Classes are ``normal, benign, malignant`` (label 0, 1, 2: the paper's order). Several masks
of one image are merged by union when loaded; normal images keep their all-zero mask, so
segmentation treats them as "no lesion". ROOT may also be a folder holding exactly one
sub-folder with that layout (the archive unpacks to ``Dataset_BUSI_with_GT/``); class folder
names are matched whatever their case (``Benign/``). A folder with a fourth class folder of images
is not detected as BUSI (the class-folder layout reads every class). BUSI has no patient ids:
records carry a group only from ``group_pattern`` (:mod:`downstream.data.grouping`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from downstream.data.grouping import AUTO, GroupRule
from downstream.data.naming import image_files, images_with_masks, is_data_folder
from downstream.data.pixels import check_records
from downstream.data.record import Catalog, Record
from sonodistill.errors import UserError

log = logging.getLogger(__name__)

BUSI_CLASSES = ("normal", "benign", "malignant")


def _class_dirs(root: Path) -> dict[str, Path]:
    """BUSI's class folders in ``root`` by class name, matched whatever their case."""
    found = {p.name.lower(): p for p in sorted(root.iterdir()) if is_data_folder(p)}
    return {c: found[c] for c in BUSI_CLASSES if c in found}


def _has_classes(root: Path) -> bool:
    return len(_class_dirs(root)) == len(BUSI_CLASSES)


def _other_classes(root: Path) -> list[str]:
    """Sub-folders beside BUSI's three that hold images: more classes than BUSI has."""
    own = set(_class_dirs(root).values())
    return [p.name for p in sorted(root.iterdir()) if is_data_folder(p) and p not in own and image_files(p)]


def is_busi_layout(root: Path) -> bool:
    """The three class folders (and no other folder of images), in ROOT or in a sub-folder of it."""
    return any(_has_classes(d) and not _other_classes(d) for d in (root, *filter(is_data_folder, root.iterdir())))


def _find_root(root: Path) -> Path:
    if _has_classes(root):
        return root
    subs = [p for p in root.iterdir() if is_data_folder(p) and _has_classes(p)]
    if len(subs) == 1:
        return subs[0]
    missing = [c + "/" for c in BUSI_CLASSES if c not in _class_dirs(root)]
    raise UserError(
        f"{root}: expected BUSI class folders {', '.join(c + '/' for c in BUSI_CLASSES)}; missing: {', '.join(missing)}"
    )


def read_busi(
    root: str | Path, *, require_masks: bool = True, check: bool = True, group_pattern: str = AUTO
) -> Catalog:
    """Records of a BUSI folder. ``require_masks=False`` keeps images without a mask file
    (classification does not need masks); otherwise a missing mask is an error."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: BUSI folder not found")
    base = _find_root(root)
    if other := _other_classes(base):
        log.warning(
            "%s: BUSI layout reads %s only; left out: %s (layout=classes reads every class folder)",
            base,
            ", ".join(c + "/" for c in BUSI_CLASSES),
            ", ".join(o + "/" for o in other),
        )
    rule = GroupRule(group_pattern, paired=False)
    records: list[Record] = []
    missing: list[str] = []
    for label, (cls, folder) in enumerate(_class_dirs(base).items()):
        pairs = images_with_masks(folder)
        if not pairs:
            if not check:  # the audit reads as found, and lists the class as empty
                continue
            raise UserError(f"{folder}: no images in BUSI class folder '{cls}/'")
        for p, ms in pairs:
            if not ms:
                missing.append(p.relative_to(base).as_posix())
            records.append(
                Record(
                    id=p.relative_to(base).as_posix(),
                    image=str(p),
                    masks=tuple(str(m) for m in ms),
                    label=label,
                    group=rule.group(p.relative_to(folder).with_suffix("").as_posix()),
                )
            )
    rule.report(str(base))
    if missing and require_masks:
        raise UserError(
            f"{base}: {len(missing)} image(s) without a mask file (expected '<name>_mask.png'), e.g. {missing[0]}"
        )
    if check:
        check_records(records, masks=require_masks)  # classification never reads the masks
    return Catalog(name="busi", root=str(base), records=records, classes=list(BUSI_CLASSES))
