"""Model checkpoints that know their architecture: safetensors plus a metadata record.

A teacher checkpoint handed to a recipe (``teacher.checkpoint=PATH``) is checked against the
architecture the recipe builds *before* loading, so a wrong file gives one clear line instead
of a wall of missing keys. Files without our metadata (a user's own ``.safetensors`` or
``torch.save`` state dict) are loaded strictly and mismatches are summarised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from sonodistill.atomic import write_bytes
from sonodistill.errors import UserError


def save_model(model: torch.nn.Module, path: str | Path, *, arch: dict[str, Any]) -> None:
    """Write ``model``'s state dict with ``arch`` (a JSON-able description) as metadata, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes(path, save(state, metadata={"arch": json.dumps(arch, sort_keys=True)}))


def read_arch(path: str | Path) -> dict[str, Any] | None:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # not a safetensors file
        return None
    return json.loads(meta["arch"]) if "arch" in meta else None


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
