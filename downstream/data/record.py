"""The common record type every reader returns, and the catalogue that holds a dataset's records.

A :class:`Record` is one labelled image: where its pixels come from (a file path or an
:class:`ImageSource` for pixels that live elsewhere, e.g. a `datasets` row), its mask file(s)
(several are merged by union), its class index and its patient/group id. Readers build a
:class:`Catalog`; splits, label fractions, the torch datasets and the KD recipes all work on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from shards.decode import upright


@runtime_checkable
class ImageSource(Protocol):
    """Pixels that are not a plain file: ``open()`` returns a PIL image (lazily decoded)."""

    def open(self) -> Image.Image: ...

    def describe(self) -> str: ...


Source = str | ImageSource


def open_source(src: Source) -> Image.Image:
    """A PIL image for a path or an :class:`ImageSource`, upright (:func:`shards.decode.upright`; not
    yet decoded unless its EXIF turns it: ``.size`` is cheap)."""
    return upright(Image.open(src) if isinstance(src, str) else src.open())


def source_file(src: Source) -> str | None:
    """The file behind a source: the path itself, a label map's file (:class:`LabelMask` wraps one
    in ``src``); None for pixels that are no file of their own (a saved dataset's row)."""
    if isinstance(src, str):
        return src
    inner = getattr(src, "src", None)
    return source_file(inner) if inner is not None else None


def describe_source(src: Source) -> str:
    return src if isinstance(src, str) else src.describe()


def source_stamp(src: Source) -> str:
    """What changes when the pixels behind ``src`` change: a file's size and modification time, or
    an :class:`ImageSource`'s own ``stamp()`` (a label-map file's, a `datasets` table's fingerprint)."""
    if not isinstance(src, str):
        stamp = getattr(src, "stamp", None)
        return stamp() if stamp is not None else ""
    try:
        st = Path(src).stat()
    except OSError:  # gone: the reader that needs it says so
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class Record:
    """One labelled image. ``masks`` is empty when the dataset has no masks; an all-zero mask
    file (BUSI ``normal``) is still listed so "no lesion" and "no annotation" stay distinct."""

    id: str  # stable, unique within the catalog (relative path or ``split/index``): splits store it
    image: Source
    masks: tuple[Source, ...] = ()
    label: int | None = None
    group: str | None = None  # patient id; splits never put one group in two parts


@dataclass
class Catalog:
    """A dataset as records plus its class names (``classes[label]``; empty when unlabelled)."""

    name: str
    root: str
    records: list[Record]
    classes: list[str] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)  # the dataset's own test split (UltraBench), kept as is
    other_files: list[str] = field(default_factory=list)  # files the records name for other uses (scan masks)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def has_masks(self) -> bool:
        return bool(self.records) and all(r.masks for r in self.records)

    @property
    def has_labels(self) -> bool:
        return bool(self.classes) and all(r.label is not None for r in self.records)

    @property
    def has_groups(self) -> bool:
        return any(r.group is not None for r in self.records)

    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def labels(self) -> list[int | None]:
        return [r.label for r in self.records]

    def by_id(self) -> dict[str, Record]:
        return {r.id: r for r in self.records}

    def subset(self, ids: Sequence[str]) -> list[Record]:
        """Records for ``ids`` in that order (KeyError names the first unknown id)."""
        index = self.by_id()
        return [index[i] for i in ids]

    def fingerprint(self) -> str:
        """Hash of ids, labels, groups, sources and the image and mask files' sizes and modification
        times: keys feature caches, KD stages and sweep cells."""
        h = hashlib.sha1()
        h.update(json.dumps(self.classes).encode())
        if self.test_ids:
            h.update(json.dumps(self.test_ids).encode())
        for r in self.records:
            parts = [r.id, describe_source(r.image), *map(describe_source, r.masks), str(r.label), str(r.group)]
            h.update("\x1f".join(parts).encode() + b"\x1e")
            for f in (r.image, *r.masks):  # a replaced file (same name, new pixels) changes the key
                h.update(source_stamp(f).encode())
        return h.hexdigest()[:16]
