"""Reader for BUSI's real layout.

::

    ROOT/benign/benign (1).png          ROOT/benign/benign (1)_mask.png
    ROOT/benign/benign (4).png          ROOT/benign/benign (4)_mask.png  benign (4)_mask_1.png
    ROOT/malignant/malignant (1).png    ...
    ROOT/normal/normal (1).png          ROOT/normal/normal (1)_mask.png   (all zero)

Classes are ``normal, benign, malignant`` (label 0, 1, 2: the paper's order). Several masks
of one image are merged by union when loaded; normal images keep their all-zero mask, so
segmentation treats them as "no lesion". ROOT may also be a folder holding exactly one
sub-folder with that layout (the archive unpacks to ``Dataset_BUSI_with_GT/``). BUSI has no
patient ids, so records carry no group.
"""

from __future__ import annotations

from pathlib import Path

from downstream.data.naming import images_with_masks
from downstream.data.pixels import check_records
from downstream.data.record import Catalog, Record
from sonodistill.errors import UserError

BUSI_CLASSES = ("normal", "benign", "malignant")


def _has_classes(root: Path) -> bool:
    return all((root / c).is_dir() for c in BUSI_CLASSES)


def is_busi_layout(root: Path) -> bool:
    """The three class folders, in ROOT or in a sub-folder of it."""
    return _has_classes(root) or any(p.is_dir() and _has_classes(p) for p in root.iterdir())


def _find_root(root: Path) -> Path:
    if _has_classes(root):
        return root
    subs = [p for p in root.iterdir() if p.is_dir() and _has_classes(p)]
    if len(subs) == 1:
        return subs[0]
    missing = [c + "/" for c in BUSI_CLASSES if not (root / c).is_dir()]
    raise UserError(
        f"{root}: expected BUSI class folders {', '.join(c + '/' for c in BUSI_CLASSES)}; missing: {', '.join(missing)}"
    )


def read_busi(root: str | Path, *, require_masks: bool = True, check: bool = True) -> Catalog:
    """Records of a BUSI folder. ``require_masks=False`` keeps images without a mask file
    (classification does not need masks); otherwise a missing mask is an error."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: BUSI folder not found")
    base = _find_root(root)
    records: list[Record] = []
    missing: list[str] = []
    for label, cls in enumerate(BUSI_CLASSES):
        folder = base / cls
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
                )
            )
    if missing and require_masks:
        raise UserError(
            f"{base}: {len(missing)} image(s) without a mask file (expected '<name>_mask.png'), e.g. {missing[0]}"
        )
    if check:
        check_records(records, masks=require_masks)  # classification never reads the masks
    return Catalog(name="busi", root=str(base), records=records, classes=list(BUSI_CLASSES))
