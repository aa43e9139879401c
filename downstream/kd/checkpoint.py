"""Model checkpoints that know their architecture: safetensors plus a metadata record.

A teacher checkpoint handed to a recipe (``teacher.checkpoint=PATH``) is checked against the
architecture the recipe builds *before* loading, so a wrong file gives one clear line instead
of a wall of missing keys. Files without our metadata (a user's own ``.safetensors`` or
``torch.save`` state dict) are loaded strictly and mismatches are summarised.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from downstream.data.record import Record
from shards.exclusions import file_sha1
from sonodistill.atomic import write_bytes
from sonodistill.errors import UserError


def image_digests(records: Iterable[Record]) -> dict[str, str]:
    """SHA-1 of each record's image file -> its id (images that are not files, Hub rows, are left out)."""
    return {file_sha1(Path(r.image)): r.id for r in records if isinstance(r.image, str)}


def save_model(
    model: torch.nn.Module, path: str | Path, *, arch: dict[str, Any], trained_on: Iterable[str] = ()
) -> None:
    """Write ``model``'s state dict with ``arch`` (a JSON-able description) and the SHA-1s of the
    images it learnt from (``trained_on``: so a later run can tell it never saw its test split) as
    metadata, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"arch": json.dumps(arch, sort_keys=True), "trained_on": json.dumps(sorted(trained_on))}
    write_bytes(path, _metadata_in_key_order(save(state, metadata=meta)))


def _metadata_in_key_order(blob: bytes) -> bytes:
    """safetensors writes its metadata map in an order that changes from process to process (a Rust
    HashMap): rewrite the header with the map in key order, so the same model is the same bytes. The
    header keeps its length (only the order changes), so the tensors' offsets stay valid."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # an escape written differently: keep safetensors' own header
        return blob
    return blob[:8] + text.ljust(n) + blob[8 + n :]


def _metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except Exception:  # not a safetensors file
        return {}


def read_arch(path: str | Path) -> dict[str, Any] | None:
    meta = _metadata(path)
    return json.loads(meta["arch"]) if "arch" in meta else None


def check_unseen(path: str | Path, test: Sequence[Record], key: str = "teacher.checkpoint") -> None:
    """Refuse a checkpoint trained on any of ``test``'s images (one line naming one of them): a
    teacher handed to a run must not have seen that run's test split. A checkpoint that does not
    record its training images (a user's own file, one written before they were recorded) passes."""
    seen = set(json.loads(_metadata(path).get("trained_on", "[]")))
    if not seen:
        return
    test_images = image_digests(test)
    overlap = [i for d, i in test_images.items() if d in seen]
    if overlap:
        raise UserError(
            f"{key}: {path} was trained on {len(overlap)} of this run's {len(test_images)} test images "
            f"(e.g. {overlap[0]}); train the teacher on this split, or give split.file of the run that trained it"
        )


def _describe(arch: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(arch.items()))


def load_model(model: torch.nn.Module, path: str | Path, *, arch: dict[str, Any], key: str = "checkpoint") -> None:
    """Load ``path`` into ``model`` (strict) after checking it was saved for ``arch``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: checkpoint {path} not found")
    saved = read_arch(path)
    if saved is not None and saved != arch:
        diff = {k: (saved.get(k), arch.get(k)) for k in sorted(set(saved) | set(arch)) if saved.get(k) != arch.get(k)}
        detail = "; ".join(f"{k}: file has {a!r}, recipe builds {b!r}" for k, (a, b) in diff.items())
        raise UserError(f"{key}: {path} is a checkpoint of a different architecture ({detail})")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    except Exception as exc:
        raise UserError(
            f"{key}: cannot read {path} ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
        ) from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise UserError(
            f"{key}: {path} does not fit the architecture this recipe builds ({_describe(arch)}): " + "; ".join(parts)
        )
    model.load_state_dict(state)
