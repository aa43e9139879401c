"""Reader for paired image/mask folders (DDTI and any generic segmentation folder).

::

    ROOT/image/12_1.png   ROOT/mask/12_1.png        (DDTI-style: patient 12, image 1)
    ROOT/images/a.jpg     ROOT/masks/a.png  (or a_mask.png, plus a_mask_1.png ... merged)

Image and mask folders are found by name (``image(s)``/``img(s)`` and ``mask(s)``/``label(s)``/
``gt``/``annotation(s)``, case-insensitive); masks match images by relative path and stem, any
extension. The patient/group id comes from ``group_pattern`` (:mod:`downstream.data.grouping`:
by default the first sub-folder, one per patient, else DDTI's leading integer); an image it does not match is its
own group. ``group_pattern=""`` disables grouping.
"""

from __future__ import annotations

from pathlib import Path

from downstream.data.grouping import AUTO, GroupRule
from downstream.data.naming import image_files, mask_order, mask_stem, natural_key
from downstream.data.pixels import check_records
from downstream.data.record import Catalog, Record
from sonodistill.errors import UserError

IMAGE_DIRS = ("image", "images", "img", "imgs")
MASK_DIRS = ("mask", "masks", "label", "labels", "gt", "annotation", "annotations")


def _pick(root: Path, names: tuple[str, ...], what: str) -> Path:
    found = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() in names]
    if not found:
        raise UserError(f"{root}: expected {what} folder named one of {', '.join(n + '/' for n in names)}")
    if len(found) > 1:
        raise UserError(f"{root}: several {what} folders ({', '.join(p.name for p in found)}); keep one")
    return found[0]


def is_paired_layout(root: Path) -> bool:
    names = {p.name.lower() for p in root.iterdir() if p.is_dir()}
    return bool(names & set(IMAGE_DIRS)) and bool(names & set(MASK_DIRS))


def read_paired(
    root: str | Path,
    *,
    group_pattern: str = AUTO,
    name: str | None = None,
    require_masks: bool = True,
    check: bool = True,
) -> Catalog:
    """Records of an image/mask folder pair; every image needs at least one mask (``require_masks=False``
    keeps an image without one, with no masks, for the audit to list)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: data folder not found")
    image_dir = _pick(root, IMAGE_DIRS, "image")
    mask_dir = _pick(root, MASK_DIRS, "mask")
    rule = GroupRule(group_pattern, paired=True)

    masks: dict[str, list[Path]] = {}
    for p in image_files(mask_dir):
        rel = p.relative_to(mask_dir).with_suffix("").as_posix()
        masks.setdefault(mask_stem(rel) or rel, []).append(p)

    records: list[Record] = []
    missing: list[str] = []
    images = image_files(image_dir)
    if not images:
        raise UserError(f"{image_dir}: no images")
    for p in sorted(images, key=lambda q: natural_key(q.relative_to(image_dir).as_posix())):
        rel = p.relative_to(image_dir).with_suffix("").as_posix()
        ms = sorted(masks.get(rel, []), key=lambda m: mask_order(m.stem))
        if not ms:
            missing.append(p.relative_to(root).as_posix())
            if require_masks:
                continue
        group = rule.group(rel)
        if group is None and rule.regex is not None:
            group = rel
        records.append(
            Record(id=p.relative_to(root).as_posix(), image=str(p), masks=tuple(str(m) for m in ms), group=group)
        )
    if missing and require_masks:
        raise UserError(
            f"{root}: {len(missing)} image(s) without a mask in {mask_dir.name}/ "
            f"(same name, or '<name>_mask'), e.g. {missing[0]}"
        )
    rule.report(str(root))
    if check:
        check_records(records)
    return Catalog(name=name or root.name, root=str(root), records=records)
