"""The corpus catalogue: every source of a corpus, with its reading options, in one YAML file.

    python -m shards.build --corpus corpus.yaml --out /data/shards --workers 16

```yaml
exclude:                          # evaluation images the corpus must not contain (shards.exclusions)
  - /runs/busi/splits.json        # a downstream splits.json: its test and val images
  - /runs/ddti/splits.json:test   # or the parts named; or a folder of images
sources:
  - name: busi                    # source name kept with every sample
    path: /data/Dataset_BUSI_with_GT   # folder, one file, file glob, or hf:ID[:SPLIT]
    exclude: ["*_mask*.png"]     # globs on the relative path (include: likewise)
    anatomy: breast               # tag written into each sample's JSON
  - name: pocus_lung
    path: /data/covid19_ultrasound/data/pocus_videos
    frames: {fps: 3, max: 30}     # or {every: N, max: M}, or all
    max_frames_per_clip: 1000
    max_images: 5000              # at most this many samples kept from this source
```

Other keys: ``array_key``, ``array_layout`` (auto | thw | hwt), ``volume`` (sequence | slices |
skip), ``volume_axis`` (0 | 1 | 2) and ``annotations`` (keep | inpaint | drop: what becomes of a
frame with marks inside its scan area; ``--annotations`` sets it for entries without it). Every
key but ``name`` and ``path`` is a field of :class:`shards.options.SourceOptions`, which checks its
value. An unknown key, a missing path or a bad value is a one-line error naming the source.
``exclude`` (top level: an evaluation overlap concerns the whole corpus, not one source) lists
exclusion sets as ``--exclude`` takes them; relative paths are relative to the catalogue.
``shards/catalogues/public_ultrasound.yaml`` is a
template for the public B-mode datasets (docs/data.md "The catalogue").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from shards.exclusions import split_name
from shards.options import SourceOptions
from shards.sources import NAME_RE
from sonodistill.errors import UserError
from sonodistill.yaml_file import read_yaml


@dataclass
class SourceConfig:
    """One source of the corpus: its name (kept with every sample), where it is, and its options."""

    name: str
    path: str  # folder, one file, file glob, or hf:ID[:SPLIT]
    options: SourceOptions = field(default_factory=SourceOptions)
    given: frozenset[str] = frozenset()  # the options the catalogue entry sets itself
    where: str = ""  # the catalogue entry, as messages name it ("" for --source)


def with_default(config: SourceConfig, key: str, value: object) -> SourceConfig:
    """``config`` with option ``key`` set to ``value`` unless its catalogue entry sets it (a command-line
    default such as ``--annotations``)."""
    if key in config.given:
        return config
    return replace(config, options=replace(config.options, **{key: value}))


@dataclass
class Corpus:
    """A catalogue: its sources and its exclusion sets (``[NAME=]PATH[:PARTS]``, as ``--exclude``)."""

    sources: list[SourceConfig]
    exclude: list[str] = field(default_factory=list)


KEYS = ["name", "path", *(f.name for f in fields(SourceOptions))]
TOP_KEYS = ("sources", "exclude")


def _check(entry: dict, where: str) -> SourceConfig:
    unknown = [k for k in entry if k not in KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}'; valid keys: {', '.join(KEYS)}")
    for k in ("name", "path"):
        if not entry.get(k) or not isinstance(entry[k], str):
            raise UserError(f"{where}: '{k}' is required (a string)")
    if not NAME_RE.match(entry["name"]):
        raise UserError(f"{where}: name '{entry['name']}' must match {NAME_RE.pattern}")
    given = {k: v for k, v in entry.items() if k not in ("name", "path")}
    return SourceConfig(entry["name"], entry["path"], SourceOptions.parse(given, where), frozenset(given))


def _relative_to(path: Path, spec: str) -> str:
    """A catalogue path made relative to the catalogue's folder (``[NAME=]`` kept)."""
    name, target = split_name(spec)
    target = os.path.expanduser(target)
    return (f"{name}=" if name else "") + (target if os.path.isabs(target) else str(path.parent / target))


def _exclude(path: Path, value: object) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(x, str) and x for x in items):
        raise UserError(f"--corpus {path}: 'exclude' expects a path or a list of paths, got {value!r}")
    return [_relative_to(path, x) for x in items]


def load_corpus(path: str | Path) -> Corpus:
    """Read and validate a catalogue; relative paths are relative to the catalogue file."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "file not found"
        raise UserError(f"--corpus {path}: {what} (expected a catalogue YAML file, e.g. corpus.yaml)")
    data = read_yaml(path, f"--corpus {path}")
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list) or not data["sources"]:
        raise UserError(f"--corpus {path}: expected a mapping with a non-empty 'sources' list")
    extra = [k for k in data if k not in TOP_KEYS]
    if extra:
        raise UserError(f"--corpus {path}: unknown top-level key '{extra[0]}'; valid keys: {', '.join(TOP_KEYS)}")
    out: list[SourceConfig] = []
    for i, entry in enumerate(data["sources"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"--corpus {path}: source '{name}'" if name else f"--corpus {path}: source #{i + 1}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping with name and path")
        cfg = _check(entry, where)
        if not cfg.path.startswith("hf:") and not os.path.isabs(os.path.expanduser(cfg.path)):
            cfg.path = str(path.parent / cfg.path)
        cfg.path = os.path.expanduser(cfg.path)
        cfg.where = f"{where} (path {entry['path']})"
        if any(c.name == cfg.name for c in out):
            raise UserError(f"{where}: source name '{cfg.name}' given twice")
        out.append(cfg)
    return Corpus(out, _exclude(path, data["exclude"]) if "exclude" in data else [])


def load_catalogue(path: str | Path) -> list[SourceConfig]:
    """The sources of a catalogue (:func:`load_corpus` without its exclusion sets)."""
    return load_corpus(path).sources
