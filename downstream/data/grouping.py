"""Patient/group ids of folder datasets, from ``reader.group_pattern``.

A pattern is searched in an image's file name without extension (``12_3``), or, when it holds a
``/``, in its path below its folder (the image folder of a paired layout, the class folder of a
class layout: ``P01/003``); the id is its first capture group that matched (the whole match
without one). ``auto`` (the default) in the paired layout takes the first sub-folder (one folder per
patient, as video-derived sets are exported) and otherwise DDTI's leading integer (``12_3.png``:
patient 12); class folders get no ids unless a pattern is given. An image the pattern does not
match is its own group; ``""`` disables grouping.
"""

from __future__ import annotations

import logging
import re

from sonodistill.errors import UserError

log = logging.getLogger(__name__)

AUTO = "auto"
DDTI_GROUP = r"^(\d+)"  # DDTI's patient id: the leading integer of 12_3.png
SUB_FOLDER = r"^([^/]+)/"


class GroupRule:
    """Group ids for one dataset; ``paired``: the paired layout's ``auto`` (class folders have none)."""

    def __init__(self, pattern: str, *, paired: bool) -> None:
        self.explicit = pattern not in (AUTO, "")
        if pattern == AUTO:
            pattern = f"{SUB_FOLDER}|{DDTI_GROUP}" if paired else ""
        try:
            self.regex = re.compile(pattern) if pattern else None
        except re.error as exc:
            raise UserError(f"reader.group_pattern '{pattern}': not a valid regular expression ({exc})") from None
        self.on_path = "/" in pattern  # else the file name alone, as before patterns could see folders
        self.pattern, self.matched, self.seen, self.folders = pattern, 0, 0, set()

    def group(self, rel: str) -> str | None:
        """The id of the image at ``rel`` (below its folder, no extension); None when unmatched."""
        if self.regex is None:
            return None
        self.seen += 1
        m = self.regex.search(rel if self.on_path else rel.rsplit("/", 1)[-1])
        if m is None:
            return None
        self.matched += 1
        if not self.explicit and m.group(1) is not None:
            self.folders.add(m.group(1))
        return next((g for g in m.groups() if g is not None), m.group(0))

    def report(self, where: str) -> None:
        """Say where ids came from when it is not the file name: a pattern that leaves images ungrouped
        (a typo splits patients), or patient sub-folders found by ``auto``."""
        if self.explicit and self.matched < self.seen:
            log.warning(
                "%s: reader.group_pattern '%s' matched %d of %d images; each other image is its own group",
                where,
                self.pattern,
                self.matched,
                self.seen,
            )
        if self.folders:
            log.info(
                "%s: patient ids from the first sub-folder of the images (%d groups); reader.group_pattern "
                "sets another rule",
                where,
                len(self.folders),
            )


# a name, then a frame number: clip7_0012, case-3-frame-45 (not benign (12): BUSI's counter is in brackets)
NUMBERED = re.compile(r"^(.+?)(?:[_\-. ]+|(?<=[^\d_\-. ]))\d+$")


def numbered_runs(ids: list[str], classes: list[str]) -> dict[str, list[int]]:
    """Positions of the images whose file names share a name before a trailing number in one folder
    (the frames of a clip exported as ``clip7_0012.png``), one list per folder and name held by two
    images or more. Empty when fewer than two runs repeat or one holds most images: a counter
    (``IM_0001``) is a numbering, not clips; a class's name (``benign_3``) is no clip either."""
    skip = {c.lower() for c in classes}
    runs: dict[str, list[int]] = {}
    for k, rel in enumerate(ids):
        folder, _, name = rel.rpartition("/")
        m = NUMBERED.match(name.rsplit(".", 1)[0])
        if m and m.group(1).lower() not in skip:
            runs.setdefault(f"{folder}/{m.group(1)}" if folder else m.group(1), []).append(k)
    runs = {name: members for name, members in runs.items() if len(members) > 1}
    if len(runs) < 2 or max(len(m) for m in runs.values()) > len(ids) / 2:
        return {}
    return runs
