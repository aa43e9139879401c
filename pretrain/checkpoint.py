"""Checkpoints of a pretraining run: atomic folders under ``<out>/checkpoints/step_<8-digit step>``.

A checkpoint folder holds accelerate's ``save_state`` output (model, optimiser, scheduler, scaler,
per-rank RNG states; DeepSpeed's own layout under DeepSpeed), one ``loader_rank{r}.json`` per rank
(the stream position), ``student.safetensors`` (backbone + head, plain state dict, what export
reads) and ``meta.json`` (step, resolved config, teacher statistics). It is written under a hidden
temporary name and renamed into place, so a kill mid-save never leaves a half checkpoint that
``resume=auto`` could pick; only folders with ``meta.json`` count.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sonodistill.atomic import share_like_others, write_json
from sonodistill.errors import UserError

CKPT_RE = re.compile(r"^step_(\d{8})$")


def checkpoints_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_dir(out_dir: str | Path, step: int) -> Path:
    return checkpoints_root(out_dir) / f"step_{step:08d}"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with ``meta.json``), oldest first."""
    root = checkpoints_root(out_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def read_meta(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{ckpt}: not a complete pretraining checkpoint (no meta.json)") from None
    except ValueError as exc:  # not JSON, or not UTF-8 text at all
        raise UserError(f"{path}: unreadable ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(meta, dict) or "step" not in meta:
        raise UserError(f"{path}: not a pretraining checkpoint's meta.json (no step)")
    return meta


def saved_config(meta: dict[str, Any]):
    """The run's :class:`~pretrain.config.PretrainConfig` as its checkpoint recorded it (a checkpoint
    written before a key was renamed reads under the new names)."""
    from pretrain.config import PretrainConfig
    from sonodistill.config import config_from_dict

    return config_from_dict(PretrainConfig, meta["config"])


# What a run trains -- its views, models, batch and random streams: a resume with other values would
# continue one run as another (the schedule's length, the optimiser's values, paths and speed settings
# may change; the teacher is compared by its weights, not its path).
FIXED_ON_RESUME = (
    "image_size", "seed", "augment", "mixup", "teacher.layers", "teacher.norm", "teacher.aggregate",
    "student.name", "student.head_hidden", "student.out_dim", "train.global_batch", "data.mode",
    "data.source_weights",
)  # fmt: skip
TEACHER_IDENTITY = ("model_type", "hub_id", "weights_sha256")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _canonical_weights(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` with ``data.source_weights`` as parsed: a YAML map and the same map typed on the
    command line (a string), in any order, with or without a source at 0, are one setting."""
    from shards.balance import parse_weights

    data = tree.get("data")
    if not isinstance(data, dict) or "source_weights" not in data:
        return tree
    w = parse_weights(data["source_weights"])
    if isinstance(w, dict):
        w = {k: v for k, v in sorted(w.items()) if v}
    return {**tree, "data": {**data, "source_weights": w}}


def changed_on_resume(meta: dict[str, Any], cfg: Any, teacher: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every setting of :data:`FIXED_ON_RESUME` that ``cfg`` changes against the
    checkpoint's ``meta``, and the teacher when ``teacher`` (its provenance) names other weights."""
    from sonodistill.config import to_dict

    saved = to_dict(saved_config(meta))
    with contextlib.suppress(UserError):  # weights an older version accepted (tau=inf): compared as written
        saved = _canonical_weights(saved)
    old = _flat(saved)
    new = _flat(_canonical_weights(to_dict(cfg)))
    fixed = [k for k in sorted(set(old) | set(new)) if any(k == f or k.startswith(f + ".") for f in FIXED_ON_RESUME)]
    out = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in fixed if old.get(k) != new.get(k)]
    was = {k: meta.get("teacher", {}).get(k) for k in TEACHER_IDENTITY}
    if any(was.values()) and was != {k: teacher.get(k) for k in TEACHER_IDENTITY}:
        out.append("teacher: other weights than the checkpoint's")
    return out


def resolve_resume(resume: str, out_dir: str | Path) -> Path | None:
    """``auto``: newest complete checkpoint in out (None if none); ``none``; or an explicit folder."""
    value = (resume or "none").strip()
    found = list_checkpoints(out_dir)
    if value.lower() == "auto":
        return found[-1][1] if found else None
    path = None if value.lower() in ("none", "no", "false", "") else Path(value)
    if path is not None and not path.exists():
        kept = ", ".join(p.name for _, p in found[-3:]) or "none"
        raise UserError(
            f"resume: '{value}' does not exist (the newest checkpoints in {out_dir}: {kept}; "
            "train.keep_last removes older ones)"
        )
    if path is not None and not (path / "meta.json").is_file():
        raise UserError(f"resume: '{value}' is not a complete checkpoint folder (expected {path}/meta.json)")
    # A run started (or restarted from an older step) beside newer checkpoints would write its own
    # between them, and keep_last would delete the new ones: the folder would hold two runs.
    step = -1 if path is None else int(read_meta(path).get("step", -1))
    newer = [p for s, p in found if s > step]
    if newer:
        raise UserError(
            f"resume={value}: out {out_dir} holds checkpoints of a run up to {newer[-1].name}; "
            "use another out for a new run (or resume=auto to continue that one)"
        )
    return path


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its newest checkpoint)."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1][1]
    raise UserError(f"--checkpoint: '{path}' is neither a checkpoint folder nor a run folder with checkpoints")


def save_checkpoint(
    accelerator,
    out_dir: str | Path,
    step: int,
    meta: dict[str, Any],
    loader_state: dict[str, Any],
    write_weights: Callable[[Path], None],
    keep_last: int,
) -> Path:
    """Collective: every rank calls it. Returns the final folder."""
    final = step_dir(out_dir, step)
    # A fixed hidden name (not mkdtemp): every rank must write into the same temporary folder.
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    write_json(tmp / f"loader_rank{accelerator.process_index}.json", loader_state)
    write_weights(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / "meta.json", meta)
        share_like_others(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune(out_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def prune(out_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (0 keeps all), and any save a kill
    left half-written."""
    for stale in checkpoints_root(out_dir).glob(".step_*.tmp"):  # our own, cut short by a kill mid-save
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last <= 0:
        return
    for _, path in list_checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
