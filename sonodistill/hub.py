"""Whether the Hugging Face Hub answers from here, asked once per process in a few seconds.

On a compute node without internet, huggingface_hub retries every request five times with
back-off (about 25 s per file, and a screen of warnings) before it falls back to its cache, for
weights that are often already there; a sweep that loads an encoder per cell pays that per cell.
Asked once, loaders go straight to the cache (``local_files_only``) or fail in one line. Written
here because neither huggingface_hub nor timm asks before retrying.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@functools.cache
def hub_reachable() -> bool:
    """False in offline mode (``HF_HUB_OFFLINE``) or when the Hub endpoint does not accept a TCP
    connection within :data:`PROBE_TIMEOUT_S`; True behind a proxy (the proxy decides)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    if any(os.environ.get(v) for v in PROXY_VARS):
        return True
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:  # no DNS, refused, unreachable or timed out
        return False


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
    if cfg is None or not cfg.hf_hub_id:  # an unknown architecture (timm says so) or weights behind a URL
        return name, {}
    repo, _, revision = cfg.hf_hub_id.partition("@")
    for filename in ("model.safetensors", cfg.hf_hub_filename or "pytorch_model.bin"):  # timm's order
        try:
            path = hf_hub_download(repo, filename, revision=revision or None, local_files_only=True)
        except (OSError, ValueError):
            continue
        return name, {"pretrained_cfg_overlay": {"file": path}}
    return None
