"""Exclusion sets: the evaluation images a corpus must not contain (``--exclude``, catalogue ``exclude``).

A set is given as

- ``SPLITS.json`` (a downstream ``splits.json``): its ``test`` and ``val`` images by default,
  ``SPLITS.json:test`` (or ``:val``, ``:train``, ``:test,val``) picks parts. The file names the
  dataset folder (``root``) and each id's image file relative to it (``images``), as
  :mod:`downstream.splits` writes them, so the shards never read a dataset layout;
- ``DIR``: every image under the folder, told by content (any image PIL reads, or a DICOM file's
  first frame; recursive; hidden files left out);

optionally prefixed by ``NAME=`` to name it (default: the dataset and parts, ``busi:test+val``, or
the folder's name). A set is identified by its images' content: ``content_hash`` is the SHA-1 over
the sorted SHA-1s of the image files, so renaming or moving them changes nothing, and any changed,
added or removed image makes another set (and so another build: the set is part of the build
identity). The manifest also lists each image's SHA-1, cut to ``DIGEST_CHARS`` hex digits
(``image_digests``), so a reader can tell that a test split lies inside a larger set (the whole
dataset folder) without the set's files. :func:`build_index` turns the sets into one
:class:`shards.copyindex.CopyIndex`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.copyindex import CopyIndex, reference_views
from shards.decode import IMAGE_EXTENSIONS, read_pixels
from shards.match import MATCHER
from shards.options import SourceOptions
from shards.readers import ReadError, open_media
from shards.readers.detect import HEAD_BYTES, detect_family
from shards.sources import NAME_RE
from sonodistill.errors import UserError

log = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
DEFAULT_PARTS = ("test", "val")
DIGEST_CHARS = 16  # 64 bits of an image's SHA-1: a stray match among 10^5 images is below 10^-9


@dataclass(frozen=True)
class ExclusionSet:
    name: str
    spec: str  # as given on the command line or in the catalogue
    root: Path  # the image paths are relative to it
    images: tuple[str, ...]  # relative paths, sorted
    parts: tuple[str, ...]  # splits.json parts; () for a folder
    content_hash: str
    part_hashes: tuple[tuple[str, str], ...] = ()  # (part, content hash of its images alone), splits.json only
    digests: tuple[str, ...] = ()  # each image file's SHA-1, sorted

    def identity(self) -> dict:
        """What makes the set (and the matching) part of a build's identity."""
        return {
            "name": self.name,
            "images": len(self.images),
            "content_hash": self.content_hash,
            "parts": list(self.parts),
            "matcher": MATCHER,
        }

    def record(self, removed: int) -> dict:
        """The set as the manifest lists it. ``part_hashes`` lets a reader check one part (a task's
        test split: ``load_exclusion("splits.json:test").content_hash``) against a set of several."""
        extra = {"part_hashes": dict(self.part_hashes)} if self.part_hashes else {}
        digests = {"image_digests": image_digests(self.digests)}
        return {
            **self.identity(),
            **extra,
            **digests,
            "spec": self.spec,
            "root": str(self.root),
            "frames_removed": removed,
        }


PUBLIC_KEYS = ("name", "images", "content_hash", "parts", "part_hashes", "image_digests", "matcher", "frames_removed")


def image_digests(sha1s: Sequence[str]) -> list[str]:
    """The images' SHA-1s as a set records them: cut to ``DIGEST_CHARS`` digits, sorted, once each."""
    return sorted({d[:DIGEST_CHARS] for d in sha1s})


def public_record(record: dict) -> dict:
    """A manifest's exclusion set without its local parts (``spec``, ``root``): what an exported
    encoder may publish about it."""
    return {k: record[k] for k in PUBLIC_KEYS if k in record}


def file_sha1(path: Path) -> str:
    """SHA-1 of a file's bytes (one image of a set)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(digests: list[str]) -> str:
    """SHA-1 over the sorted SHA-1s of the files: names and order do not count."""
    return hashlib.sha1("\n".join(sorted(digests)).encode()).hexdigest()


def add_argument(parser: argparse.ArgumentParser, flag: str, what: str) -> None:
    """A repeatable command-line option taking exclusion sets as ``--exclude`` does."""
    parser.add_argument(
        flag,
        action="append",
        default=[],
        metavar="[NAME=]SPLITS.json[:PARTS]|DIR",
        help=f"{what} (repeat): a downstream splits.json (its test and val images, or the parts named: "
        ":test, :test,val) or a folder of images",
    )


def split_name(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); (None, spec) without a name (a path that exists keeps its '=')."""
    head, sep, rest = spec.partition("=")
    if sep and NAME_RE.match(head) and not os.path.exists(spec):
        return head, rest
    return None, spec


def _split_spec(spec: str, flag: str) -> tuple[str | None, str, tuple[str, ...] | None]:
    """``[NAME=]PATH[:PARTS]`` -> (name, path, parts); a path that exists as given keeps its colons."""
    name, spec = split_name(spec)
    if os.path.exists(spec) or ":" not in spec:
        return name, spec, None
    path, parts = spec.rsplit(":", 1)
    picked = tuple(p for p in re.split(r"[,+]", parts) if p)
    bad = [p for p in picked if p not in PARTS]
    if bad or not picked:
        raise UserError(f"{flag} {spec}: unknown split part '{(bad or [parts])[0]}'; expected {', '.join(PARTS)}")
    return name, path, picked


def _from_splits(
    spec: str, path: Path, parts: tuple[str, ...], flag: str
) -> tuple[str, Path, dict[str, tuple[str, ...]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{flag} {spec}: {path} is not a readable splits.json ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(p), list) for p in PARTS):
        raise UserError(f"{flag} {spec}: {path} is not a splits.json (expected train/val/test id lists)")
    if not isinstance(data.get("root"), str) or not isinstance(data.get("images"), dict):
        if not any(k in data for k in ("counts", "ratios", "dataset")):  # ours always held these
            raise UserError(
                f"{flag} {spec}: {path} is not a splits.json of a downstream run (no 'root' and 'images' naming "
                "the files); write one with `python -m downstream.sweep ... --splits-only`, or give a folder of images"
            )
        raise UserError(
            f"{flag} {spec}: {path} does not name its images' files (made before splits.json recorded "
            "'root' and 'images'); delete it and let the downstream run write it again"
        )
    ids = [str(i) for p in parts for i in data[p]]
    if not ids:
        raise UserError(f"{flag} {spec}: {path} holds no {'/'.join(parts)} images: nothing to exclude")
    odd = next((k for k, v in data["images"].items() if not isinstance(v, str) or not v), None)
    if odd is not None:
        raise UserError(f"{flag} {spec}: {path}: image of id '{odd}' is {data['images'][odd]!r}, expected a file path")
    missing = [i for i in ids if i not in data["images"]]
    if missing:
        raise UserError(f"{flag} {spec}: id '{missing[0]}' has no image file in {path} (a Hub dataset?)")
    label = data.get("dataset") or path.stem
    images = {p: tuple(sorted({data["images"][str(i)] for i in data[p]})) for p in parts}
    root = Path(data["root"]).expanduser()
    # ours are absolute; a hand-written relative root means the folder beside the file, not the working directory
    return f"{label}:{'+'.join(parts)}", root if root.is_absolute() else path.parent / root, images


def _is_dicom(head: bytes, name: str) -> bool:
    """A DICOM file by its ``DICM`` preamble or its ``.dcm`` name (the preamble-less rule the build
    also knows is too weak to pick files out of a folder of anything)."""
    return detect_family(head, name) == "dicom" and (head[128:132] == b"DICM" or name.endswith(".dcm"))


def _is_reference(path: Path, spec: str, flag: str) -> bool:
    """An evaluation image, told by content as the build tells its inputs: any image PIL reads
    (whatever its name) or a DICOM image. A file the set cannot read is one line naming it: a test
    image silently left out would let its copies into the corpus."""
    name = path.name.lower()
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:  # unreadable, a dangling link
        raise UserError(f"{flag} {spec}: {path}: cannot read it ({exc.strerror or exc})") from None
    # by content even where the name says image: a README.png of text is no evaluation image
    return detect_family(head, name) == "image" or _is_dicom(head, name)


def read_reference(path: str) -> np.ndarray:
    """An evaluation image's pixels: through PIL, or a DICOM file's first frame through the build's
    own DICOM reader (so a DICOM test set excludes its copies too); one ``UserError`` line otherwise."""
    name = Path(path).name.lower()
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:
        raise UserError(f"{path}: cannot read image ({exc})") from None
    if not _is_dicom(head, name):
        return read_pixels(path)
    try:
        return next(iter(open_media(path, name, SourceOptions()).frames)).pixels
    except (ReadError, StopIteration) as exc:
        raise UserError(f"{path}: cannot read image ({getattr(exc, 'reason', 'no frame')})") from None


def _read_member(item: tuple[str, str]) -> np.ndarray:
    """:func:`read_reference` of one set's image, its error naming the set (a broken test image
    stops the build: it cannot be told apart from the corpus's copies of it)."""
    label, path = item
    try:
        return read_reference(path)
    except UserError as exc:
        raise UserError(f"{label}: {exc}") from None


def _from_folder(spec: str, root: Path, flag: str) -> tuple[str, Path, dict[str, tuple[str, ...]]]:
    images, odd = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            if _is_reference(Path(dirpath, f), spec, flag):
                images.append(Path(dirpath, f).relative_to(root).as_posix())
            elif f.lower().endswith(IMAGE_EXTENSIONS):
                odd.append(Path(dirpath, f).relative_to(root).as_posix())
    if odd:  # named as images, not images by their bytes (empty, text, a format the build cannot read)
        log.warning(
            f"{flag} {spec}: {len(odd)} file(s) named as images are none by their content and are not in the "
            f"set, e.g. {odd[0]}"
        )
    if not images:
        raise UserError(f"{flag} {spec}: no images (any PIL reads, or DICOM; told by content) under {root}")
    return root.resolve().name, root, {"": tuple(sorted(images))}


def load_exclusion(spec: str, flag: str = "--exclude") -> ExclusionSet:
    """Parse ``[NAME=]PATH[:PARTS]`` and list the set's images (checked to exist) and content hash;
    messages name ``flag`` (``--overlap``, a catalogue's ``exclude``)."""
    name, path_text, parts = _split_spec(spec, flag)
    path = Path(os.path.expanduser(path_text))
    if path.is_dir():
        if parts is not None:
            raise UserError(f"{flag} {spec}: ':{','.join(parts)}' picks parts of a splits.json, not of a folder")
        label, root, by_part = _from_folder(spec, path, flag)
    elif path.is_file():
        label, root, by_part = _from_splits(spec, path, parts or DEFAULT_PARTS, flag)
    else:
        raise UserError(f"{flag} {spec}: {path} is neither a splits.json nor a folder of images")
    images = tuple(sorted({rel for rels in by_part.values() for rel in rels}))
    absent = [rel for rel in images if not (root / rel).is_file()]
    if absent:
        raise UserError(f"{flag} {spec}: {len(absent)} image(s) not found, e.g. {root / absent[0]}")
    digests = {rel: file_sha1(root / rel) for rel in images}
    parts = tuple(p for p in by_part if p)
    part_hashes = tuple((p, content_hash([digests[r] for r in by_part[p]])) for p in parts)
    whole = content_hash(list(digests.values()))
    return ExclusionSet(name or label, spec, root, images, parts, whole, part_hashes, tuple(sorted(digests.values())))


def load_exclusions(specs: list[str], flags: Sequence[str] = (), flag: str = "--exclude") -> list[ExclusionSet]:
    """The sets of ``specs``; messages name ``flags[i]`` for the i-th (where given), else ``flag``."""
    named = [*flags, *[flag] * (len(specs) - len(flags))]
    sets = [load_exclusion(s, f) for s, f in zip(specs, named, strict=True)]
    names = [s.name for s in sets]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise UserError(f"{flag}: two sets are named '{twice}'; name them apart with NAME=PATH")
    return sets


@dataclass
class Exclusions:
    """The sets and one index over all their images (references in set order)."""

    sets: list[ExclusionSet]
    offsets: list[int]  # first reference of each set

    @classmethod
    def of(cls, sets: list[ExclusionSet]) -> Exclusions:
        offsets = np.cumsum([0] + [len(s.images) for s in sets[:-1]]).tolist()
        return cls(sets, offsets)

    def set_of(self, ref: int) -> ExclusionSet:
        return self.sets[bisect_right(self.offsets, ref) - 1]

    def build_index(self, folder: str | Path, workers: int = 1) -> CopyIndex:
        """Index every image of every set (in ``workers`` processes) and save it in ``folder``."""
        items = [(f"evaluation set '{s.name}' ({s.spec})", str(s.root / rel)) for s in self.sets for rel in s.images]
        names = [rel for s in self.sets for rel in s.images]
        index = CopyIndex.build(names, reference_views(_read_member, items, workers))
        index.save(folder)
        return index
