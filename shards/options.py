"""Per-source options: one typed value from the catalogue to the source, the readers and the build identity.

Every field of :class:`SourceOptions` is a catalogue key (:mod:`shards.catalogue`), checked by its
type when the catalogue is read (a ``Literal`` lists the valid values, ``int | None`` is a positive
integer or null, ``str | None`` a string or null, ``tuple[str, ...]`` a glob or a list of globs,
``Sampling`` a frame rule), handed to every reader with each item, and part of the build identity
stored in ``manifest.json`` (a build refuses to resume when an option changed). A new per-source
option is one field here, with its default and a comment. ``--source NAME=PATH`` gets the defaults.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from shards.frames import DEFAULT, Sampling, parse_sampling
from sonodistill.errors import UserError


@dataclass(frozen=True)
class SourceOptions:
    # How an item is read. The field order is the order of the identity in manifest.json.
    frames: Sampling = DEFAULT  # clips: {fps: F, max: M}, {every: N, max: M} or all (shards.frames)
    max_frames_per_clip: int | None = 1000  # hard cap whatever the sampling rule ('all' included)
    array_key: str | None = None  # .mat/.h5/.npz: the array to read (None: the only one)
    array_layout: Literal["auto", "thw", "hwt"] = "auto"  # 3-D arrays: frames first or last
    volume: Literal["sequence", "slices", "skip"] = "sequence"  # 3D images: axis 0 is time | slices | skip
    volume_axis: Literal[0, 1, 2] = 0  # slices: the axis (numpy order z, y, x) to cut along
    # Which items are kept, and what they are tagged with.
    include: tuple[str, ...] = ()  # globs on the relative path; empty: every file
    exclude: tuple[str, ...] = ()
    max_images: int | None = None  # at most this many samples kept from this source
    anatomy: str | None = None  # tag written into each sample's JSON
    # What becomes of a frame with annotations inside its scan area (shards.annotations): keep them,
    # inpaint them (OpenCV), or drop the frame. Every sample's JSON lists what was found.
    annotations: Literal["keep", "inpaint", "drop"] = "inpaint"

    def identity(self) -> dict:
        """Every option as a JSON value (part of the build identity)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def keeps(self, rel: str) -> bool:
        """Whether the file at ``rel`` (relative to the source folder) passes ``include``/``exclude``."""
        rel = rel.replace(os.sep, "/")
        if self.include and not any(fnmatch.fnmatch(rel, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatch(rel, g) for g in self.exclude)

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str) -> SourceOptions:
        """Catalogue values -> options; a bad value is one ``UserError`` line naming ``where`` and the key."""
        values = {}
        for kind in KINDS:  # kind by kind: an entry with several bad values reports the first kind's
            for name, (k, parse) in FIELD_PARSERS.items():
                if k == kind and name in entry:
                    values[name] = parse(name, entry[name], where)
        return cls(**values)


def _plain(value: object) -> object:
    if isinstance(value, Sampling):
        return value.spec()
    return list(value) if isinstance(value, tuple) else value


def _globs(key: str, value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        raise UserError(f"{where}: '{key}' expects a glob or a list of globs, got {value!r}")
    return tuple(value)


def _choice(choices: tuple) -> Callable[[str, object, str], object]:
    def check(key: str, value: object, where: str) -> object:
        # YAML's true and 1.0 equal 1 to `in`; neither is the choice 1
        if value not in choices or type(value) not in {type(c) for c in choices}:
            raise UserError(f"{where}: '{key}' expects one of {', '.join(map(str, choices))}, got {value!r}")
        return value

    return check


def _positive(key: str, value: object, where: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise UserError(f"{where}: '{key}' expects a positive integer, got {value!r}")
    return value


def _string(key: str, value: object, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: '{key}' expects a string, got {value!r}")
    return value


def _sampling(key: str, value: object, where: str) -> Sampling:
    return parse_sampling(value, where)


KINDS = ("globs", "choice", "positive", "string", "sampling")  # the order values are checked in


def _parser(name: str, tp: object) -> tuple[str, Callable[[str, object, str], object]]:
    if tp == tuple[str, ...]:
        return "globs", _globs
    if get_origin(tp) is Literal:
        return "choice", _choice(get_args(tp))
    if tp == int | None:
        return "positive", _positive
    if tp == str | None:
        return "string", _string
    if tp is Sampling:
        return "sampling", _sampling
    raise TypeError(f"SourceOptions.{name}: no catalogue parser for {tp}; add one in shards/options.py")


FIELD_PARSERS = {name: _parser(name, tp) for name, tp in get_type_hints(SourceOptions).items()}
