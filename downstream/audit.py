"""``python -m downstream.audit``: what is wrong with a downstream dataset before anyone trains on it.

    python -m downstream.audit --task busi-cls --data data/BUSI --out runs/audit-busi
    python -m downstream.audit --task seg --data ub:data/ultrabench/camus --out runs/audit-camus reader.mask_column=mask

Reads the task's dataset as a run would (any layout of :mod:`downstream.data.read`), without the
readers' size check, and writes into ``--out``:

- ``audit.json``: groups of exact and near-duplicate images (the shards' copy matching,
  :mod:`downstream.groups`), label conflicts (a group under two or more classes), lesion-class
  images whose masks are empty (every class but a normal one; in a dataset without classes every
  image), masks whose size differs from their image's, and images that cannot be read; every path
  relative to the dataset folder;
- ``groups/group-NNNN.png``: a contact sheet of each duplicate group (captioned with path and class);
- ``config.yaml``: the resolved config.

Nothing is changed in the data. Splits leave label conflicts out and keep each group on one side by
default (:mod:`downstream.splits`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from downstream.config import TASK_KIND, Task, read_task_data
from downstream.data.naming import image_files
from downstream.data.pixels import image_size, load_gray, load_mask
from downstream.data.read import ReaderConfig
from downstream.data.record import Catalog, Record, Source, describe_source, source_file
from downstream.groups import DuplicateGroup, duplicate_groups, image_pixels
from shards.decode import read_pixels, to_gray
from shards.match import MATCHER
from sonodistill.atomic import write_json
from sonodistill.cli_parser import CommandParser
from sonodistill.config import save_config
from sonodistill.config_cli import add_config_args, config_from_flags, parse_command_line
from sonodistill.errors import UserError, cli_main
from sonodistill.figures import image_sheet, sheet_tile
from sonodistill.outdir import claimed
from sonodistill.stop import StopRequest
from sonodistill.workers import loader_workers

log = logging.getLogger(__name__)
NORMAL_CLASSES = ("normal", "negative", "healthy", "background", "no_lesion")


@dataclass
class AuditConfig:
    task: Task = "busi-seg"  # busi-seg | busi-cls | ddti-seg | seg | cls: decides the layout and what is read
    data: str = ""  # dataset folder, hf:ID, a saved dataset or ub:DIR
    out: str = "runs/audit"  # audit.json, groups/*.png and config.yaml go here
    num_workers: int = 4  # processes matching images (capped at the cores this process may use)
    max_sheets: int = 500  # at most this many group contact sheets (every group is in audit.json)
    reader: ReaderConfig = field(default_factory=ReaderConfig)


def _rel(src: Source, root: str) -> str:
    """A source's path relative to the dataset folder (its description when it is not a file)."""
    path = source_file(src)
    if path is not None and root and os.path.exists(path):
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        return Path(rel).as_posix() if not rel.startswith("..") else path
    text = describe_source(src)  # a saved dataset's row: "<folder>[3].mask" -> "[3].mask"
    prefixes = {root, os.path.abspath(root), str(Path(root).resolve())} if root else set()
    return next((text[len(p) :] for p in sorted(prefixes, key=len, reverse=True) if text.startswith(f"{p}[")), text)


def _class(catalog: Catalog, rec: Record) -> str | None:
    return catalog.classes[rec.label] if rec.label is not None and catalog.classes else None


def unreadable(catalog: Catalog) -> list[dict]:
    """Records whose image or a mask does not decode -- truncated, junk, an unknown format -- (left
    out of every other check); the error names files by their path in the dataset."""
    out = []
    roots = {f"{p}{os.sep}" for p in (catalog.root, str(Path(catalog.root).resolve()))} if catalog.root else set()
    for r in catalog.records:
        try:
            for src in (r.image, *r.masks):
                load_gray(src)
        except UserError as exc:
            error = str(exc)
            for root in sorted(roots, key=len, reverse=True):
                error = error.replace(root, "")
            out.append({"path": r.id, "error": error})
    return out


def mask_problems(catalog: Catalog) -> tuple[list[dict], list[dict]]:
    """(masks whose size differs from their image's, lesion-class images whose masks are all empty)."""
    sizes, empty = [], []
    for r in catalog.records:
        if not r.masks:
            continue
        size = image_size(r.image)
        wrong = [m for m in r.masks if image_size(m) != size]
        for m in wrong:
            sizes.append({"path": r.id, "mask": _rel(m, catalog.root), "image_size": list(size),
                          "mask_size": list(image_size(m))})  # fmt: skip
        cls = _class(catalog, r)
        lesion = cls is None or cls.lower() not in NORMAL_CLASSES
        if lesion and not wrong and not load_mask(r.masks).any():
            empty.append({"path": r.id, "class": cls, "masks": [_rel(m, catalog.root) for m in r.masks]})
    return sizes, empty


def missing_masks(catalog: Catalog, kind: str) -> list[str]:
    """Images of a segmentation dataset without a mask file (left out of the mask checks)."""
    return [r.id for r in catalog.records if not r.masks] if kind == "seg" else []


def unused_images(catalog: Catalog) -> list[str]:
    """Image files under the dataset folder that no record uses as image or mask (a mask whose image
    is missing, a misnamed file): what a run silently leaves out."""
    if not catalog.root or not Path(catalog.root).is_dir():
        return []
    root = Path(catalog.root).resolve()
    paths = [r.image for r in catalog.records] + [source_file(m) for r in catalog.records for m in r.masks]
    used = {str(Path(p).resolve()) for p in paths + catalog.other_files if isinstance(p, str)}
    return [p.relative_to(root).as_posix() for p in image_files(root) if str(p.resolve()) not in used]


def _group_json(catalog: Catalog, k: int, g: DuplicateGroup, sheet: str | None) -> dict:
    index = catalog.by_id()
    return {
        "group": k,
        "kind": "exact" if g.exact else "near",
        "label_conflict": g.label_conflict,
        "images": [{"path": i, "class": _class(catalog, index[i])} for i in g.ids],
        "sheet": sheet,
    }


def group_sheet(catalog: Catalog, k: int, g: DuplicateGroup, path: Path) -> None:
    index = catalog.by_id()
    tiles = []
    for i in g.ids:
        src = index[i].image
        pixels = read_pixels(src) if isinstance(src, str) else image_pixels(src)
        name = i if len(i) <= 32 else "..." + i[-29:]  # the end of a long path: its file name
        tiles.append((sheet_tile(to_gray(pixels)), f"{name}\n{_class(catalog, index[i]) or ''}"))
    kind = ("exact" if g.exact else "near") + (" duplicates, LABEL CONFLICT" if g.label_conflict else " duplicates")
    rows = [tiles[j : j + 6] for j in range(0, len(tiles), 6)]
    image_sheet(rows, path, titles=[f"group {k}: {len(g.ids)} {kind}"] + [""] * (len(rows) - 1))


def read_audited(cfg: AuditConfig) -> Catalog:
    """The dataset as found (:func:`read_task_data` unchecked); :class:`UserError` for settings that
    cannot work, before ``--out`` is made."""
    if cfg.num_workers < 1:
        raise UserError(f"num_workers: expected at least 1, got {cfg.num_workers}")
    if cfg.max_sheets < 0:
        raise UserError(f"max_sheets: expected 0 or more, got {cfg.max_sheets}")
    catalog = read_task_data(cfg.task, cfg.data, cfg.reader, check=False)
    if catalog.root and Path(cfg.out).resolve().is_relative_to(Path(catalog.root).resolve()):
        raise UserError(
            f"--out {cfg.out}: inside the dataset {catalog.root}; the audit's contact sheets would be read "
            "as images of it: give a folder outside"
        )
    return catalog


def audit(cfg: AuditConfig, catalog: Catalog | None = None) -> dict:
    """Run every check and write the outputs; returns the ``audit.json`` content. ``catalog``:
    :func:`read_audited` of ``cfg``, when the caller has it already."""
    catalog = catalog or read_audited(cfg)
    out = Path(cfg.out)
    no_mask = missing_masks(catalog, TASK_KIND[cfg.task])
    unused = unused_images(catalog)
    bad = unreadable(catalog)
    broken = {b["path"] for b in bad}
    readable = dataclasses.replace(catalog, records=[r for r in catalog.records if r.id not in broken])
    sizes, empty = mask_problems(readable)
    labels = {r.label for r in catalog.records}
    empty_classes = [c for k, c in enumerate(catalog.classes) if k not in labels]
    groups = duplicate_groups(readable, loader_workers(cfg.num_workers))
    entries = []
    for k, g in enumerate(groups, 1):
        sheet = f"groups/group-{k:04d}.png" if k <= cfg.max_sheets else None
        if sheet:
            group_sheet(readable, k, g, out / sheet)
        entries.append(_group_json(readable, k, g, sheet))
    for stale in out.glob("groups/group-*.png"):  # an earlier audit's sheets beyond this one's
        m = re.fullmatch(r"group-(\d{4,})\.png", stale.name)
        if m and int(m.group(1)) > min(len(groups), cfg.max_sheets):
            stale.unlink()
    report = {
        "task": cfg.task,
        "dataset": catalog.name,
        "root": catalog.root,  # as given (a relative --data stays relative)
        "images": len(catalog.records),
        "classes": catalog.classes,
        "matcher": MATCHER,
        "summary": {
            "duplicate_groups": len(groups),
            "exact_groups": sum(g.exact for g in groups),
            "images_in_groups": sum(len(g.ids) for g in groups),
            "label_conflicts": sum(g.label_conflict for g in groups),
            "empty_lesion_masks": len(empty),
            "mask_size_mismatches": len(sizes),
            "unreadable": len(bad),
            "missing_masks": len(no_mask),
            "unused_images": len(unused),
            "empty_classes": len(empty_classes),
        },
        "duplicate_groups": entries,
        "label_conflicts": [e["group"] for e in entries if e["label_conflict"]],
        "empty_lesion_masks": empty,
        "mask_size_mismatches": sizes,
        "unreadable": bad,
        "missing_masks": no_mask,
        "unused_images": unused,
        "empty_classes": empty_classes,  # class folders missing or without an image (a run refuses them)
    }
    write_json(out / "audit.json", report)
    save_config(cfg, out / "config.yaml")
    return report


def parse(argv: Sequence[str] | None = None) -> AuditConfig:
    p = CommandParser(prog="python -m downstream.audit", description=__doc__.splitlines()[0])
    p.add_argument("--task", help="busi-seg, busi-cls, ddti-seg, or generic seg / cls")
    p.add_argument("--data", help="dataset: BUSI folder, image/mask folders, class folders, hf:ID, ub:DIR")
    p.add_argument("--out", help="output folder")
    add_config_args(p, AuditConfig)
    return config_from_flags(AuditConfig, parse_command_line(p, argv), ("task", "data", "out"))


@cli_main
def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse(argv)
    catalog = read_audited(cfg)  # bad input refused before --out is made
    # Ctrl-C, SIGTERM: one `stopped:` line, exit 75; audit.json is written last
    with claimed(cfg.out, "downstream.audit", only_own=True), StopRequest():
        report = audit(cfg, catalog)
    s = report["summary"]
    empty = report["empty_classes"]
    print(
        f"{report['images']} images: {s['duplicate_groups']} duplicate groups ({s['exact_groups']} exact, "
        f"{s['images_in_groups']} images), {s['label_conflicts']} label conflicts, {s['empty_lesion_masks']} "
        f"lesion images with empty masks, {s['mask_size_mismatches']} mask size mismatches, "
        f"{s['unreadable']} unreadable, {s['missing_masks']} without a mask, {s['unused_images']} image files "
        f"unused"
        + (f", classes without images: {', '.join(empty)}" if empty else "")
        + f" -> {Path(cfg.out) / 'audit.json'}"
    )
    return report


if __name__ == "__main__":
    main()
