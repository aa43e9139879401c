"""Export the distilled encoder as a Hub-ready timm model folder, and optionally publish it.

    python -m pretrain.export --checkpoint RUN_OR_CKPT --out DIR [--push-to-hub REPO_ID [--private]] [--dry-run]

The folder holds the student backbone only (no projection head) written by timm's ``save_for_hf``:
``model.safetensors`` + a timm ``config.json`` (architecture, ``num_classes: 0``, input size and the
teacher's mean/std), plus a model card ``README.md``. It loads with
``timm.create_model("local-dir:DIR", pretrained=True)`` (``hf-hub:REPO_ID`` once pushed) and its
state dict loads strictly into ``segmentation_models_pytorch.Unet(<arch>).encoder``.
``--push-to-hub`` uploads the three files with huggingface_hub (token from ``HF_TOKEN`` or
``huggingface-cli login``); ``--dry-run`` prints exactly what would be uploaded and touches no
network. Neither the card nor config.json names a local path: the teacher is its Hub id or its model
type and weights hash, the shards their folder name and manifest hash.

``--out`` must be new or empty (its files written into it), or an earlier export (recognised by its
files, replaced atomically as a whole, unless it is the current folder: then file by file);
export never deletes what it did not write (``--overwrite`` writes its files beside others, and is
refused for a folder holding a pretraining run or another command's output; the refusal without it
names the files it would replace).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import find_checkpoint, list_checkpoints, read_meta, saved_config
from pretrain.model_card import GRAYSCALE_NOTE, data_provenance, model_card, teacher_provenance
from sonodistill.atomic import atomic_dir, scratch_dir
from sonodistill.cli_parser import CommandParser
from sonodistill.errors import UserError, cli_main
from sonodistill.outdir import MODEL, make_folder, owner
from sonodistill.provenance import local_paths, public_model_name, repo_id_problem, url_secrets
from sonodistill.stop import Stopped

log = logging.getLogger(__name__)


def load_backbone(checkpoint: str | Path) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """The student's timm backbone (no head) from a checkpoint or run folder, plus its meta."""
    import timm
    from safetensors.torch import load_file

    ckpt = find_checkpoint(checkpoint)
    meta = read_meta(ckpt)
    if "config" not in meta:
        raise UserError(f"{ckpt}/meta.json: records no config: not a checkpoint this version wrote")
    weights = ckpt / "student.safetensors"
    if not weights.is_file():
        raise UserError(f"--checkpoint: {ckpt} has no student.safetensors")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors' own error type for a file cut short or garbled
        raise UserError(
            f"--checkpoint: {weights}: unreadable ({' '.join(str(exc).split())[:200]}); "
            "export an earlier checkpoint (--checkpoint <run>/checkpoints/step_...)"
        ) from None
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    name = saved_config(meta).student.name
    model = timm.create_model(name, pretrained=False, num_classes=0)
    try:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
    except RuntimeError as exc:  # a tensor of another shape: torch lists them all
        first = " ".join(str(exc).split("\n\t")[1:2]) or " ".join(str(exc).split())[:200]
        raise UserError(f"{weights}: does not match timm '{name}' ({first.strip()})") from None
    if missing or unexpected:
        raise UserError(f"{weights}: does not match timm '{name}' (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), meta, ckpt


EXPORT_FILES = ("model.safetensors", "config.json", "README.md")


def _is_own_export(folder: Path) -> bool:
    """A folder this command wrote before: only export files, and a config.json naming sonodistill."""
    names = {p.name for p in folder.iterdir()}
    if not names <= set(EXPORT_FILES) or "config.json" not in names:
        return False
    try:
        return "sonodistill" in json.loads((folder / "config.json").read_text())
    except (ValueError, OSError):
        return False


def _has_checkpoints(folder: Path) -> bool:
    """A run by its complete checkpoints (an ancestor of --out: a project's own ``checkpoints/`` of
    downloaded weights is no run)."""
    try:
        return bool(list_checkpoints(folder))
    except OSError:  # a folder above that this user may not list
        return False


def _holds_run(folder: Path) -> bool:
    return (folder / "meta.json").is_file() or (folder / "checkpoints").is_dir() or bool(list_checkpoints(folder))


def out_mode(out: Path, ckpt: Path, overwrite: bool = False) -> str:
    """How export may write ``out``: ``new`` (absent or empty), ``replace`` (a previous export of its
    own, replaced as a whole) or ``into`` (``--overwrite``: the export files written beside what the
    folder holds). Anything else is refused with one line: export never deletes what it did not write."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    if ckpt.resolve().is_relative_to(out.resolve()):
        raise UserError(f"--out {out}: holds the checkpoint being exported ({ckpt}); choose a new folder")
    run = next((p for p in out.resolve().parents if _has_checkpoints(p)), None)
    if run is not None:  # its tb/, keys/ or a folder beside them: the run's own
        raise UserError(f"--out {out}: inside the pretraining run {run}; export never writes into one")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    if _is_own_export(out):
        return "replace"
    if _holds_run(out):
        raise UserError(f"--out {out}: holds a pretraining run (checkpoints); export never writes into one")
    stage = owner(out)
    if stage is not None and stage != MODEL:  # a teacher from init-tiny, a shard build, an evaluation ...
        raise UserError(f"--out {out}: holds the output of {stage}; export never writes into it")
    if overwrite:
        return "into"
    held = sorted(p.name for p in out.iterdir())
    clash = [name for name in EXPORT_FILES if name in held]
    raise UserError(
        f"--out {out}: not empty and not an earlier export (holds {', '.join(held[:4])}"
        f"{', ...' if len(held) > 4 else ''}); choose a new folder, or --overwrite to write the export files "
        + (f"beside them, replacing {', '.join(clash)}" if clash else "beside them")
    )
    return "into"


def _loadable_by_transformers(config: Path) -> None:
    """Drop ``num_classes`` from the ``model_args`` timm records: transformers' ``TimmWrapperModel``
    (``AutoModel.from_pretrained``, the Hub's snippet) passes its own and fails on a second one;
    timm reads the same 0 from the top-level ``num_classes``."""
    from sonodistill.atomic import write_text

    cfg = json.loads(config.read_text())
    cfg.get("model_args", {}).pop("num_classes", None)
    write_text(config, json.dumps(cfg, indent=2) + "\n")


def export(checkpoint: str | Path, out: str | Path, title: str | None = None, overwrite: bool = False) -> Path:
    """Write the Hub-ready folder ``out`` and return it. A new folder and an earlier export are written
    atomically as a whole; into an existing empty folder, the current folder, or with ``overwrite`` a
    folder holding other files (kept), each export file is written atomically; anything else is
    refused (:func:`out_mode`)."""
    from timm.models import save_for_hf

    from sonodistill.atomic import write_text

    model, meta, ckpt = load_backbone(checkpoint)
    # resolved: "." has no name to stage beside, and a link to an earlier export is written where it points
    out = Path(out).expanduser().resolve()
    mode = out_mode(out, ckpt, overwrite)
    cfg = saved_config(meta)
    size = cfg.image_size
    t = meta.get("teacher")
    if not isinstance(t, dict) or not {"mean", "std"} <= set(t):
        raise UserError(f"{ckpt}/meta.json: records no teacher (mean, std): not a checkpoint this version wrote")
    data_config = {
        "input_size": (3, size, size),
        "mean": tuple(t["mean"]),
        "std": tuple(t["std"]),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }
    teacher = teacher_provenance(meta)
    model_config = {
        "input_note": GRAYSCALE_NOTE,
        "sonodistill": {
            "checkpoint_step": meta["step"],
            "teacher": public_model_name(teacher),
            "teacher_provenance": teacher,
            "data": data_provenance(meta),
            "teacher_layers": t["layers"],
            "augment": cfg.augment.preset,
        },
    }
    # Drop the provenance timm attaches to its ImageNet weights (tag, licence, paper): not ours.
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "tag": "sonodistill",
        "license": "other",
        "origin_url": None,
        "paper_ids": None,
        "paper_name": None,
        "hf_hub_id": None,
        "url": None,
        "notes": None,
        "description": None,
    }
    make_folder(out.parent)
    # Files written into an existing folder, not the folder swapped: an empty one may be a mount
    # point or carry its own permissions, and a shell standing in it (`--out .`) would be left in
    # the deleted old folder. An earlier export elsewhere is still replaced as a whole.
    in_place = mode == "into" or (out.is_dir() and (mode == "new" or Path.cwd().is_relative_to(out)))
    with contextlib.ExitStack() as staging:
        try:  # into an existing folder: staged in a hidden folder of its own there
            tmp = staging.enter_context(scratch_dir(out, "export") if in_place else atomic_dir(out))
        except OSError as exc:  # a folder that takes no files (/proc), or no room for the staging folder
            raise UserError(f"--out {out}: cannot write the export there ({exc.strerror or exc})") from None
        save_for_hf(model, str(tmp), model_config=model_config, data_config=data_config, safe_serialization=True)
        _loadable_by_transformers(tmp / "config.json")
        write_text(tmp / "README.md", model_card(meta, model, title or out.name))
        tmp.chmod(0o755)  # a publishable folder, not a private temp dir
        for f in tmp.iterdir():
            f.chmod(0o644)
        if in_place:  # each file replaced atomically; what else the folder holds stays
            for name in EXPORT_FILES:
                os.replace(tmp / name, out / name)
    log.info(f"exported {meta['config']['student']['name']} (step {meta['step']} of {ckpt}) to {out}")
    return out


def upload_files(folder: Path) -> list[str]:
    """What an upload of ``folder`` sends: the export files, nothing else the folder may hold."""
    return sorted(name for name in EXPORT_FILES if (folder / name).is_file())


def check_public(folder: Path, files: Sequence[str]) -> None:
    """Refuse to publish a text file that names a local path (the export never writes one; this
    guards hand edits and older exports)."""
    for name in files:
        if name.endswith((".md", ".json")):
            text = (folder / name).read_text(encoding="utf-8", errors="replace")
            found = local_paths(text, [folder])
            if found:
                raise UserError(f"{folder / name}: names the local path {found[0]}; remove it before publishing")
            secret = url_secrets(text)
            if secret:
                raise UserError(
                    f"{folder / name}: names a URL with credentials ({secret[0][:60]}); remove it before publishing"
                )


def check_repo_id(repo_id: str) -> None:
    """One line for a repo id the Hub would refuse (huggingface_hub's own rules), before any work."""
    problem = repo_id_problem(repo_id)
    if problem is not None:
        raise UserError(f"--push-to-hub {repo_id}: not a Hub repo id ({problem})")


def push(folder: str | Path, repo_id: str, private: bool = False, dry_run: bool = False) -> list[str]:
    """Upload the export files of ``folder`` to the Hub model repo ``repo_id``; ``dry_run`` lists
    exactly what would be uploaded. Both refuse a file that names a local path."""
    check_repo_id(repo_id)
    folder = Path(folder)
    files = upload_files(folder)
    check_public(folder, files)
    if dry_run:
        print(f"dry run: would create/update {'private' if private else 'public'} model repo '{repo_id}' and upload:")
        for f in files:
            print(f"  {f}  ({(folder / f).stat().st_size / 1e6:.2f} MB)")
        print("  (checked: no local path in README.md or config.json)")
        return files
    from huggingface_hub import HfApi, constants

    from sonodistill.hub import hub_reachable

    if not hub_reachable():  # offline mode or no answer: one line now, not huggingface_hub's retries
        raise UserError(
            f"--push-to-hub {repo_id}: the Hub ({constants.ENDPOINT}) is not reachable from here (or "
            f"HF_HUB_OFFLINE is set); the export is in {folder}: push it from a machine that reaches the Hub"
        )
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            allow_patterns=files,
            commit_message="sonodistill: distilled ultrasound encoder",
        )
    except Exception as exc:  # HTTP, connection (httpx's own types) and file errors: one line, the export kept
        raise UserError(
            f"--push-to-hub {repo_id}: upload failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
            "log in with `huggingface-cli login` or set HF_TOKEN, and check that the Hub is reachable"
        ) from None
    log.info(f"pushed {len(files)} files to https://huggingface.co/{repo_id}")
    return files


def _interrupted(signum: int, frame: object) -> None:
    raise Stopped(
        f"{signal.Signals(signum).name}: the export was not finished (its staging folder removed); run it again"
    )


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    parser = CommandParser(prog="python -m pretrain.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (newest checkpoint)")
    parser.add_argument(
        "--out", required=True, help="a new or empty folder, or an earlier export (replaced as a whole)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write the export files into a folder that holds other files (kept, but a model.safetensors, "
        "config.json or README.md there is replaced; never a run's or another command's folder)",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list what would be uploaded")
    parser.add_argument(
        "--title", help="model card title (default: the --push-to-hub repo id, else the output folder name)"
    )
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        raise UserError("--private: only meaningful with --push-to-hub")
    if args.dry_run and not args.push_to_hub:
        raise UserError("--dry-run: only meaningful with --push-to-hub (it lists what would be uploaded)")
    if args.push_to_hub:
        check_repo_id(args.push_to_hub)  # before the export, not at the upload
    before = signal.signal(signal.SIGTERM, _interrupted)  # a staging folder is removed, as on Ctrl-C
    try:
        out = export(args.checkpoint, args.out, title=args.title or args.push_to_hub, overwrite=args.overwrite)
    finally:
        signal.signal(signal.SIGTERM, before)
    if args.push_to_hub:
        push(out, args.push_to_hub, private=args.private, dry_run=args.dry_run)


if __name__ == "__main__":
    main()
