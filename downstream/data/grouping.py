"""Patient/group ids of folder datasets, from ``reader.group_pattern``.

The pattern is searched in an image's path below its folder (the image folder of a paired layout,
the class folder of a class layout), without extension: ``12_3`` or ``P01/003``; the id is its
first capture group that matched (the whole match without one). ``auto`` (the default) takes the
first sub-folder (one folder per patient, a common export) and, in the paired layout, else DDTI's
leading integer. An image the pattern does not match is its own group; ``""`` disables grouping.
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
    """Group ids for one dataset; ``paired`` picks the paired layout's ``auto`` (DDTI's ids too)."""

    def __init__(self, pattern: str, *, paired: bool) -> None:
        self.explicit = pattern not in (AUTO, "")
        if pattern == AUTO:
            pattern = f"{SUB_FOLDER}|{DDTI_GROUP}" if paired else SUB_FOLDER
        try:
            self.regex = re.compile(pattern) if pattern else None
        except re.error as exc:
            raise UserError(f"reader.group_pattern '{pattern}': not a valid regular expression ({exc})") from None
        self.pattern, self.matched, self.seen = pattern, 0, 0

    def group(self, rel: str) -> str | None:
        """The id of the image at ``rel`` (below its folder, no extension); None when unmatched."""
        if self.regex is None:
            return None
        self.seen += 1
        m = self.regex.search(rel)
        if m is None:
            return None
        self.matched += 1
        return next((g for g in m.groups() if g is not None), m.group(0))

    def report(self, where: str) -> None:
        """A pattern the user set that leaves images ungrouped is said once: a typo splits patients."""
        if self.explicit and self.matched < self.seen:
            log.warning(
                "%s: reader.group_pattern '%s' matched %d of %d images; each other image is its own group",
                where,
                self.pattern,
                self.matched,
                self.seen,
            )
