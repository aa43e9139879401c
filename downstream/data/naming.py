"""File-name conventions shared by the folder readers: image extensions and mask suffixes.

A mask of image ``X.png`` is ``X_mask.png``; extra masks of the same image are ``X_mask_1.png``,
``X_mask_2.png``... (BUSI's convention, also common in generic image/mask folders).
"""

from __future__ import annotations

import re
from pathlib import Path

from shards.decode import IMAGE_EXTENSIONS as IMAGE_EXTS

_MASK = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)


SYSTEM_FOLDERS = frozenset({"__MACOSX"})  # a zip unpacked on a Mac: AppleDouble copies, not data


def is_data_folder(p: Path) -> bool:
    """A sub-folder that may hold data: not hidden (``.git``, ``.ipynb_checkpoints``), not a system folder."""
    return p.is_dir() and not p.name.startswith(".") and p.name not in SYSTEM_FOLDERS


def is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def mask_stem(stem: str) -> str | None:
    """The image stem a mask file stem belongs to (``'a (1)_mask_1'`` -> ``'a (1)'``), else None."""
    m = _MASK.match(stem)
    return m.group("stem") if m else None


def mask_order(stem: str) -> int:
    """0 for ``X_mask`` / ``X``, k for ``X_mask_k`` (keeps merged masks in a stable order)."""
    m = _MASK.match(stem)
    return int(m.group("k")) if m and m.group("k") else 0


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by relative path; hidden folders
    (``.ipynb_checkpoints``, ``.git``, ``.Trash``) hold copies and other tools' files, not data."""
    found = (p for p in folder.rglob("*") if is_image_file(p))
    visible = (
        p
        for p in found
        if not any(part.startswith(".") or part in SYSTEM_FOLDERS for part in p.relative_to(folder).parts)
    )
    return sorted(visible, key=lambda p: p.relative_to(folder).as_posix())


def natural_key(text: str) -> list:
    """Sort key that orders 'benign (2)' before 'benign (10)'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def images_with_masks(folder: Path) -> list[tuple[Path, list[Path]]]:
    """Every image under ``folder`` (natural order) with its mask files (``_mask``, ``_mask_1``...);
    images of one stem (``a.png`` and ``a.jpg``) are both kept, each with the stem's masks."""
    images: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = {}
    for p in image_files(folder):
        stem = p.relative_to(folder).with_suffix("").as_posix()
        owner = mask_stem(stem)
        if owner is None:
            images.setdefault(stem, []).append(p)
        else:
            masks.setdefault(owner, []).append(p)
    return [
        (p, sorted(masks.get(s, []), key=lambda m: mask_order(m.stem)))
        for s in sorted(images, key=natural_key)
        for p in images[s]
    ]
