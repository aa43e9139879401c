"""Which command's output a folder holds: one command never writes into another's folder.

Each command that writes a run folder marks it (``.sonodistill-stage``: the command's name) and
refuses a folder marked by another, so ``--out`` pointed at the wrong folder (a pretraining run, an
export, another evaluation) ends with one line instead of replacing its ``config.yaml`` and
results. A folder written before marks existed is recognised by the files that only that
command writes. Export keeps its own rule (:mod:`pretrain.export`: it replaces only an export).
"""

from __future__ import annotations

from pathlib import Path

from sonodistill.atomic import write_once
from sonodistill.errors import UserError

MARK = ".sonodistill-stage"

# Files (or folders) that only one command writes: an unmarked folder holding one is that command's.
SIGNATURES = {
    "pretraining (pretrain/run.py)": ("checkpoints", "metrics.jsonl"),
    "a shard build (shards.build)": ("manifest.json", ".build-journal.jsonl"),
    "a model (pretrain.export or a teacher)": ("model.safetensors",),
    "downstream.run": ("subset.json",),
    "downstream.sweep": ("sweep.yaml",),
    "downstream.kd train": ("report.md",),
    "downstream.audit": ("audit.json",),
    "downstream.embed": ("embed.json",),
}


def owner(out: Path) -> str | None:
    """The command whose output ``out`` holds (None: nobody's, or a folder of other files)."""
    mark = out / MARK
    if mark.is_file():
        return mark.read_text(encoding="utf-8").strip()
    if not out.is_dir():
        return None
    for stage, names in SIGNATURES.items():
        if any((out / n).exists() for n in names):
            return stage
    return None


def claim(out: str | Path, stage: str, key: str = "--out", write: bool = True) -> None:
    """Refuse ``out`` when it holds another command's output; else mark it as ``stage``'s (``stage``
    is a key of :data:`SIGNATURES`; ``write=False``: check only, as every rank but the first does)."""
    out = Path(out)
    held = owner(out)
    if held is not None and held != stage:
        raise UserError(f"{key} {out}: holds the output of {held}; give {stage} a folder of its own")
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_once(out / MARK, stage + "\n")
