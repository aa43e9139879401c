"""Input sources for the shard builder: folders (or one file, or file globs) and Hugging Face datasets.

``NAME=DIR`` is a folder scanned recursively in sorted order (hidden files and folders are
ignored; every other file is an item, read by what its content is: :mod:`shards.readers`), and a
path with glob characters (``/data/camus/**/*_sequence.mhd``) lists the matching files, relative to
the folder before the first glob character. The source's ``include``/``exclude`` globs
(:class:`shards.options.SourceOptions`) filter relative paths; the data files of MetaImage/Analyze
headers (``.raw`` beside a ``.mhd``) are read through their header, not as items.
``NAME=hf:ID[:SPLIT]`` is a dataset read through ``datasets``: a folder written by
``save_to_disk``, a local dataset folder/script, or a Hub id already in the local cache (offline).
Its first ``Image`` column is used, undecoded, so decoding happens in the build workers.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import stat as stat_mod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shards.options import SourceOptions
from shards.readers.detect import COMPANION_EXTENSIONS, HEAD_BYTES, detect_family, is_media_name
from sonodistill.errors import UserError
from sonodistill.hub import hub_reachable, offline_unless_reachable

GLOB_CHARS = re.compile(r"[*?\[]")
SNIFF_FILES = 64  # files without a media extension whose content is checked before "no readable files"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Item:
    source: str
    relpath: str
    path: str | None = None  # read by the worker (folder sources)
    data: bytes | None = None  # already in memory (dataset sources)
    reject: str | None = None  # decided when listed, never opened: symlink_loop, broken_link, special_file

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as fh:  # type: ignore[arg-type]
            return fh.read()


class Source(Protocol):
    """A named list of items with a fingerprint of what it contains."""

    name: str
    spec: str
    options: SourceOptions

    def __len__(self) -> int: ...

    def items(self, start: int = 0) -> Iterator[Item]: ...

    def sizes(self) -> list[int]: ...  # bytes per item, in item order: the expected cost of reading it

    def fingerprint(self) -> str: ...

    # the items' modification times: checked when a build resumes, not part of its identity (a copy
    # of the same files, with other times, is the same build)
    def stamp(self) -> str: ...


def _companion(rel: str, present: set[str]) -> bool:
    """A data file read through its header (``x.raw`` beside ``x.mhd``, ``x.img`` beside ``x.hdr``)."""
    stem, ext = os.path.splitext(rel)
    return any(stem + h in present for h in COMPANION_EXTENSIONS.get(ext.lower(), ()))


def walk_files(root: Path, skip: Sequence[Path] = ()) -> list[str]:
    """Every non-hidden entry below ``root`` that is not a folder, in sorted order, leaving out the
    folders ``skip`` (a build's own ``--out`` inside its source). Symlinked folders are followed
    once; one that leads back to a folder already on the way is listed as an entry of its own,
    which :func:`unreadable_entry` names a ``symlink_loop``."""
    out: list[str] = []
    seen: set[str] = set()
    skipped = {os.path.realpath(p) for p in skip}

    def walk(folder: str) -> None:
        if os.path.realpath(folder) in skipped:
            return
        seen.add(os.path.realpath(folder))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:  # a link loop: listed, and counted by unreadable_entry
                is_dir = False
            if is_dir:
                if e.is_symlink() and os.path.realpath(e.path) in seen:
                    out.append(e.path)
                else:
                    walk(e.path)
            else:
                out.append(e.path)
        seen.discard(os.path.realpath(folder))

    walk(str(root))
    return out


def unreadable_entry(path: str) -> str | None:
    """Why a listed entry cannot be read as a file (``None``: a regular file): a symlink that loops,
    one that points nowhere, or a named pipe, socket or device (opening a pipe would block forever)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return "symlink_loop" if exc.errno == errno.ELOOP else "broken_link" if os.path.islink(path) else "unreadable"
    if stat_mod.S_ISDIR(st.st_mode):
        return "symlink_loop"  # a folder reached again through a link
    return None if stat_mod.S_ISREG(st.st_mode) else "special_file"


def _inside(path: str, folders: set[str]) -> bool:
    real = os.path.realpath(path)
    return any(real.startswith(f + os.sep) for f in folders)


def source_root(spec: str) -> Path:
    """The folder a folder, glob or one-file source's relative paths start from."""
    match = GLOB_CHARS.search(spec)
    if match:
        base = spec[: match.start()]
        return Path(base if base.endswith(os.sep) else os.path.dirname(base) or ".")
    return Path(spec).parent if Path(spec).is_file() else Path(spec)


class FolderSource:
    def __init__(
        self,
        name: str,
        root: str | Path,
        options: SourceOptions | None = None,
        skip: Sequence[Path] = (),
        where: str = "",
    ):
        self.name, self.spec = name, str(root)
        where = where or f"--source {name}={root}"  # what a message names: the flag, or the catalogue entry
        self.options = options or SourceOptions()
        spec = str(root)
        if "://" in spec:
            raise UserError(f"{where}: a URL; sources are read from local folders (only shard sets can be remote)")
        paths: list[str] = []
        self.root = source_root(spec)
        if GLOB_CHARS.search(spec):
            paths = sorted(p for p in glob.glob(spec, recursive=True) if not os.path.isdir(p))
            paths = [p for p in paths if not any(part.startswith(".") for part in Path(p).relative_to(self.root).parts)]
            skipped = {os.path.realpath(p) for p in skip}
            paths = [p for p in paths if not _inside(p, skipped)]
            if not paths:
                raise UserError(f"{where}: no file matches the pattern")
        elif Path(spec).is_file():  # one file (an HDF5 dataset, a long cine): a source of one item
            paths = [spec]
        else:
            if not Path(spec).exists():
                raise UserError(f"{where}: folder does not exist")
            if not Path(spec).is_dir():
                raise UserError(f"{where}: neither a folder nor a file")
            paths = walk_files(self.root, skip)
        rels = [(os.path.relpath(p, self.root), p) for p in paths]
        present = {rel for rel, _ in rels}
        kept = [(rel, p) for rel, p in rels if self.options.keeps(rel) and not _companion(rel, present)]
        self.rejects = {rel: reason for rel, p in kept if (reason := unreadable_entry(p))}
        stats = {rel: os.stat(p) for rel, p in kept if rel not in self.rejects}
        self.files: list[tuple[str, int]] = sorted((rel, stats[rel].st_size if rel in stats else -1) for rel, _ in kept)
        self._mtimes = {rel: st.st_mtime_ns for rel, st in stats.items()}
        if not self._readable():
            raise UserError(f"{where}: no image files (nor DICOM, video, volume or array files) to read")

    def _readable(self) -> bool:
        files = [rel for rel, _ in self.files if rel not in self.rejects]  # a pipe would block open()
        if any(is_media_name(rel) for rel in files):
            return True
        for rel in files[:SNIFF_FILES]:  # DICOM often comes without an extension
            try:
                with open(self.root / rel, "rb") as fh:
                    family = detect_family(fh.read(HEAD_BYTES), rel)
            except OSError:
                continue
            if family not in (None, "unsupported"):
                return True
        return False

    def __len__(self) -> int:
        return len(self.files)

    def items(self, start: int = 0) -> Iterator[Item]:
        for rel, _ in self.files[start:]:
            yield Item(self.name, rel, path=str(self.root / rel), reject=self.rejects.get(rel))

    def sizes(self) -> list[int]:
        return [max(size, 0) for _, size in self.files]  # an entry never opened (a dangling link: -1) costs nothing

    def stamp(self) -> str:
        h = hashlib.sha1()
        for rel, _ in self.files:
            h.update(f"{rel}\0{self._mtimes.get(rel, -1)}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for rel, size in self.files:
            # a name that is not UTF-8 (an old Latin-1 archive) is hashed as the bytes it is
            h.update(f"{rel}\0{size}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()


class DatasetSource:
    def __init__(self, name: str, spec: str, options: SourceOptions | None = None, where: str = ""):
        import datasets

        self.name, self.spec = name, spec
        where = where or f"--source {name}={spec}"
        self.options = options or SourceOptions()
        ident = spec[len("hf:") :]
        split = None
        if ":" in ident and not Path(ident).exists():
            ident, split = ident.rsplit(":", 1)
        try:
            if (
                Path(ident).is_dir()
                and (Path(ident) / "state.json").exists()
                or (Path(ident) / "dataset_dict.json").exists()
            ):
                ds = datasets.load_from_disk(ident)
            else:
                with offline_unless_reachable():
                    ds = datasets.load_dataset(ident, split=split) if split else datasets.load_dataset(ident)
        except Exception as exc:  # datasets raises many types for "not found / offline"
            if isinstance(exc, ConnectionError) and not hub_reachable():
                raise UserError(
                    f"{where}: '{ident}' is not in the datasets cache, and the Hub is not reachable"
                ) from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{where}: cannot load dataset '{ident}' ({first})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                split = "train" if "train" in ds else sorted(ds)[0]
            if split not in ds:
                raise UserError(f"{where}: no split '{split}' (has {', '.join(ds)})")
            ds = ds[split]
        self.split = split or "train"
        image_cols = [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]
        if not image_cols:
            raise UserError(f"{where}: the dataset has no Image column ({', '.join(ds.features)})")
        self.column = image_cols[0]
        self.ds = ds.cast_column(self.column, datasets.Image(decode=False)).select_columns([self.column])
        if len(self.ds) == 0:
            raise UserError(f"{where}: the dataset is empty")

    def __len__(self) -> int:
        return len(self.ds)

    def items(self, start: int = 0) -> Iterator[Item]:
        for i in range(start, len(self.ds)):
            cell = self.ds[i][self.column] or {}
            data = cell.get("bytes")
            if data is None and cell.get("path"):
                try:
                    data = Path(cell["path"]).read_bytes()
                except OSError:
                    data = b""
            name = Path(cell.get("path") or "").name
            rel = f"{self.split}/{i:08d}" + (f"/{name}" if name else "")
            yield Item(self.name, rel, data=data or b"")

    def sizes(self) -> list[int]:
        """The mean item size for every item: exact sizes would mean reading every image's bytes."""
        return [max(1, self.ds.data.nbytes // len(self.ds))] * len(self.ds)

    def fingerprint(self) -> str:
        return hashlib.sha1(f"{self.spec}\0{len(self.ds)}\0{self.ds._fingerprint}".encode()).hexdigest()

    def stamp(self) -> str:
        return ""  # the dataset's fingerprint already follows its content


def items_from(sources: Sequence[Source], start: int = 0) -> Iterator[Item]:
    """Every item of ``sources`` in input order (source after source), from the ``start``-th on."""
    for source in sources:
        n = len(source)
        if start >= n:
            start -= n
            continue
        yield from source.items(start)
        start = 0


def parse_source(arg: str) -> tuple[str, str]:
    """``NAME=DIR``, ``NAME=GLOB`` or ``NAME=hf:ID[:SPLIT]`` -> (name, spec)."""
    if "=" not in arg:
        raise UserError(f"--source {arg}: expected NAME=DIR, NAME=GLOB or NAME=hf:ID[:SPLIT]")
    name, spec = arg.split("=", 1)
    if not NAME_RE.match(name):
        raise UserError(f"--source {arg}: source name must match {NAME_RE.pattern}")
    if not spec:
        raise UserError(f"--source {arg}: empty path")
    # the shell expands ~ at the start of a word only, not after NAME=
    return name, os.path.expanduser(spec) if spec.startswith("~") else spec


def open_source(
    name: str, spec: str, options: SourceOptions | None = None, skip: Sequence[Path] = (), where: str = ""
) -> Source:
    """The source ``spec`` names; a folder or glob source never lists what lies in ``skip``. Messages
    name ``where`` (default ``--source NAME=SPEC``; a catalogue entry names its file and source)."""
    if spec.startswith("hf:"):
        return DatasetSource(name, spec, options, where)
    return FolderSource(name, spec, options, skip, where)
