"""Was an encoder's pretraining corpus checked against this task's test split?

An encoder exported by ``pretrain.export`` carries, in its ``config.json``, the exclusion sets its
shards were built against (``sonodistill.data.exclusions``: name, image count, content hash, and
for a ``splits.json`` set each part's own hash, and each image's SHA-1 cut short). A task's test
split has a hash computed the same way (:func:`shards.exclusions.content_hash` over the SHA-1s of
its image files): the split is covered when a set, or one part of it, has that hash, or when every
test image is among the sets' images (a set larger than the split: the whole dataset folder, a
folder of several datasets' test images). Names and paths play no part: a copied or renamed
dataset hashes the same.

A :class:`Check` is one of ``checked``, ``untrained`` (random init: it has seen no data) or
``unchecked`` with the reason: ``no provenance`` (ImageNet timm weights, DINOv3, a folder not
written by ``pretrain.export``), ``no exclusion set`` (shards built without ``--exclude``),
``set differs`` (built against other images), ``no image files`` (a test split held in a Hub
dataset cannot be hashed). Results tables mark unchecked cells; ``strict_decontamination=true``
refuses to run them (:func:`enforce`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from downstream.data.record import Catalog
from shards.exclusions import content_hash, file_sha1, image_digests
from sonodistill.errors import UserError
from sonodistill.hub import cached_file

Status = Literal["checked", "unchecked", "untrained"]


@dataclass(frozen=True)
class Check:
    status: Status
    reason: str = ""  # why not checked: no provenance | no exclusion set | set differs | no image files
    detail: str = ""  # one sentence for a footnote or an error line
    test_hash: str | None = None
    matched_set: str | None = None  # the exclusion set that covers the split

    def record(self) -> dict[str, Any]:
        return asdict(self)


def split_digests(catalog: Catalog, test_ids: list[str]) -> list[str] | None:
    """The SHA-1s of the test images' files; None when an image is not a file (a Hub dataset)."""
    index = catalog.by_id()
    paths = [index[i].image for i in test_ids]
    if not all(isinstance(p, str) for p in paths):
        return None
    return [file_sha1(Path(p)) for p in paths]


def _export_config(spec: str) -> dict[str, Any] | None:
    """The ``config.json`` of an export folder (``PATH``, ``local-dir:PATH``) or of a Hub model in
    the local cache (``hf-hub:ID[@REVISION]``; nothing is fetched); None when there is none."""
    if spec.startswith("hf-hub:"):
        cached = cached_file(spec[7:], "config.json")
        path = Path(cached) if cached else None
    else:
        path = Path(spec.removeprefix("local-dir:")) / "config.json"
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def encoder_exclusions(spec: str) -> list[dict[str, Any]] | None:
    """The exclusion sets an encoder's corpus was built against; None when it carries no data
    provenance."""
    if spec.startswith(("timm:", "dinov3:")):
        return None
    data = ((_export_config(spec) or {}).get("sonodistill") or {}).get("data")
    if not data:
        return None
    return data.get("exclusions") or []


def check_encoder(spec: str, test_digests: list[str] | None) -> Check:
    """Compare an encoder's exclusion sets with the test split (its images' SHA-1s)."""
    spec = spec.strip()
    test_hash = None if test_digests is None else content_hash(test_digests)
    if spec == "rand" or spec.startswith("rand:"):
        return Check("untrained", test_hash=test_hash)
    sets = encoder_exclusions(spec)
    if sets is None:
        why = "its weights carry no data provenance (not a pretrain.export encoder), so its pretraining images"
        return Check("unchecked", "no provenance", f"{why} were not checked against this test split", test_hash)
    if not sets:
        why = "its corpus was built without --exclude, so its pretraining images"
        return Check("unchecked", "no exclusion set", f"{why} were not checked against this test split", test_hash)
    if test_digests is None or test_hash is None:
        why = "this test split's images are not files, so no exclusion set can name them"
        return Check("unchecked", "no image files", why, test_hash)
    for x in sets:
        if test_hash == x.get("content_hash") or test_hash in (x.get("part_hashes") or {}).values():
            return Check("checked", test_hash=test_hash, matched_set=x["name"])
    wanted = set(image_digests(test_digests))
    covering = [x for x in sets if wanted & set(x.get("image_digests") or ())]
    if wanted and covering and wanted <= {d for x in covering for d in x["image_digests"]}:
        return Check("checked", test_hash=test_hash, matched_set="+".join(x["name"] for x in covering))
    names = ", ".join(x["name"] for x in sets)
    detail = f"its corpus was built against other images ({names}), not this test split (sha1 {test_hash[:12]})"
    return Check("unchecked", "set differs", detail, test_hash)


def enforce(check: Check, encoder: str, task: str, strict: bool) -> None:
    """``strict_decontamination``: refuse a run whose encoder was not checked against its test split."""
    if strict and check.status == "unchecked":
        raise UserError(
            f"strict_decontamination: encoder '{encoder}' on {task}: {check.reason}: {check.detail}; "
            "build its shards with --exclude SPLITS.json of this task, or set strict_decontamination=false"
        )


def footnote(check: dict[str, Any]) -> str | None:
    """The table footnote of an unchecked cell (from a run's recorded check); None otherwise."""
    if not check or check.get("status") != "unchecked":
        return None
    return f"not checked for test-set contamination ({check['reason']}): {check['detail']}"


def status_text(check: dict[str, Any]) -> str:
    """A cell of the contamination table (from a run's recorded check)."""
    if check.get("status") == "checked":
        return f"checked ({check.get('matched_set')})"
    if check.get("status") == "untrained":
        return "random init"
    return f"not checked: {check.get('reason')}"
