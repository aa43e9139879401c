"""Whether the Hugging Face Hub answers from here, asked once per process in a few seconds.

On a compute node without internet, huggingface_hub retries every request five times with
back-off (about 25 s per file, and a screen of warnings) before it falls back to its cache, for
weights that are often already there; a sweep that loads an encoder per cell pays that per cell.
Asked once, loaders go straight to the cache (``local_files_only``) or fail in one line. Written
here because neither huggingface_hub nor timm asks before retrying.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0


@functools.cache
def hub_reachable() -> bool:
    """False in offline mode (``HF_HUB_OFFLINE``) or when the Hub endpoint gives no HTTP answer
    within :data:`PROBE_TIMEOUT_S` (no DNS, refused, a firewall that accepts and never answers, a
    TLS failure); asked through huggingface_hub's own HTTP session, so its proxy settings apply."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception:  # httpx's errors, whatever the transport: each means no answer
        return False
    return True  # any status: the Hub (or the mirror in HF_ENDPOINT) answers


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[None]:
    """Hub offline mode inside the block when the Hub does not answer: ``datasets.load_dataset``
    then reads its cache at once (or fails in one line) instead of retrying every request first.
    Set on the two module flags both libraries read at call time; datasets 5.2 has no per-call
    ``local_files_only``."""
    if hub_reachable():
        yield
        return
    import datasets.config
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def in_reach(repo_id: str) -> bool:
    """A Hub model that loads from here: a local folder, a Hub that answers, or its config in the
    local cache (a sweep checks its encoders before the first cell, not hours later at theirs)."""
    if Path(repo_id).expanduser().is_dir() or hub_reachable():
        return True
    return cached_file(repo_id, "config.json") is not None


def cached_file(repo_id: str, filename: str) -> str | None:
    """``filename`` of Hub model ``ID`` or ``ID@REVISION`` (timm's form) in the local cache, nothing
    fetched; None when it is not there or ``repo_id`` is no repo id."""
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = repo_id.partition("@")
    try:
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
    except ValueError:  # not a repo id (huggingface_hub's validation error is a ValueError)
        return None
    return found if isinstance(found, str) else None


def timm_pretrained_source(name: str) -> tuple[str, dict] | None:
    """``(model name, create_model keyword arguments)`` that load timm model ``name``'s pretrained
    weights without a Hub request when the Hub does not answer: its cached weight file (``hf-hub:ID``:
    its cached snapshot as ``local-dir:``); None when they are not in the local cache. Unchanged
    when the Hub answers or timm does not fetch these weights from it."""
    if hub_reachable():
        return name, {}
    from huggingface_hub import hf_hub_download, snapshot_download
    from timm.models import get_pretrained_cfg

    if name.startswith(("hf-hub:", "hf_hub:")):
        repo, _, revision = name[7:].partition("@")
        try:
            return "local-dir:" + snapshot_download(repo, revision=revision or None, local_files_only=True), {}
        except (OSError, ValueError):
            return None
    cfg = get_pretrained_cfg(name)
    if cfg is None:  # an unknown architecture: timm says so
        return name, {}
    if not cfg.hf_hub_id:  # weights behind a URL (GitHub releases): torch.hub's cache, where timm keeps them
        if not cfg.url:
            return name, {}
        import torch

        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(cfg.url).path).name
        return (name, {"pretrained_cfg_overlay": {"file": str(cached)}}) if cached.is_file() else None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    for filename in ("model.safetensors", cfg.hf_hub_filename or "pytorch_model.bin"):  # timm's order
        try:
            path = hf_hub_download(repo, filename, revision=revision or None, local_files_only=True)
        except (OSError, ValueError):
            continue
        return name, {"pretrained_cfg_overlay": {"file": path}}
    return None
