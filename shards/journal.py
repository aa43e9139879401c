"""Append-only build journal: what an interrupted shard build had finished, so a re-run resumes.

Line 1 is the build identity (settings + sources + input fingerprints) and the sources' stamps
(their files' modification times: a file edited between the interruption and the resume is found).
Each further line is one completed shard: its file name, size, SHA-1, the number of input items
consumed when it closed, the per-source/per-reason counts it adds, and the hashes of its samples (to
rebuild the duplicate index). A shard is renamed into place *before* its line is appended, so a crash
in between only means that shard is written again — identically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sonodistill.errors import UserError

JOURNAL = ".build-journal.jsonl"


class Journal:
    def __init__(self, out: Path):
        self.path = Path(out) / JOURNAL
        self.stamps: dict[str, str] | None = None  # per source, its files' modification times (None: not recorded)

    def exists(self) -> bool:
        return self.path.exists()

    def _head(self, identity: dict) -> str:
        head = {"identity": identity} if self.stamps is None else {"identity": identity, "stamps": self.stamps}
        return json.dumps(head, sort_keys=True) + "\n"

    def start(self, identity: dict, stamps: dict[str, str] | None = None) -> None:
        self.stamps = stamps
        with open(self.path, "w", encoding="utf-8") as fh:
            fh.write(self._head(identity))
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> tuple[dict, list[dict]]:
        """(identity, completed shard records); a torn last line (crash mid-append) is dropped. The
        sources' stamps, when the journal has them, are left in :attr:`stamps`."""
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            head = json.loads(lines[0])
            identity = head["identity"]
        except (IndexError, ValueError, KeyError, TypeError):
            raise UserError(f"{self.path}: unreadable build journal; delete the output folder to rebuild") from None
        self.stamps = head.get("stamps")
        records = []
        for line in lines[1:]:
            try:
                records.append(json.loads(line))
            except ValueError:
                break
        return identity, records

    def rewrite(self, identity: dict, records: list[dict]) -> None:
        """Keep only ``records`` (used when a recorded shard file has gone missing)."""
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(self._head(identity))
            for r in records:
                fh.write(json.dumps(r, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
