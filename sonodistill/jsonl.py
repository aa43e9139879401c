"""JSON-lines logs that survive a kill: append with fsync, read past a torn last line, truncate on resume.

Used for per-step training metrics, sweep results and audit trails; a process killed mid-write
leaves at most one torn line, which readers skip and the next append fences off.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sonodistill.atomic import write_text


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete record; unparsable lines (a torn tail) are skipped."""
    out = []
    path = Path(path)
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record and fsync; a torn line left by a kill is fenced off by a newline."""
    path = Path(path)
    line = json.dumps(record, sort_keys=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = "\n" + line
        fh.write(line.encode())
        fh.flush()
        os.fsync(fh.fileno())


def filter_jsonl(path: str | os.PathLike, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite ``path`` (atomically) with the records ``keep`` accepts; a torn line is dropped."""
    path = Path(path)
    if path.is_file():
        write_text(path, "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if keep(r)))


def truncate_jsonl(path: str | os.PathLike, max_step: int) -> None:
    """Keep only records with ``step <= max_step`` (a resumed run drops what came after its checkpoint)."""
    filter_jsonl(path, lambda r: int(r.get("step", 0)) <= max_step)
