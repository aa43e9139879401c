"""What a published model may say about where it came from: names and content hashes, never a
local path.

A teacher loaded from the Hub is named by its Hub id (and the commit transformers resolved); one
loaded from a local folder by its model type and the SHA-256 of its weight files; a shard set by its
folder's name and the SHA-256 of its manifest. :func:`local_paths` finds what slipped through, so
an upload can refuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def files_sha256(paths: Iterable[str | Path]) -> str:
    """One SHA-256 over the files' names and bytes, in name order (a folder's weights as a whole)."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def json_sha256(obj: Any) -> str:
    """SHA-256 of a JSON value in canonical form (sorted keys): a manifest's content hash."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def model_provenance(name_or_path: str, model_type: str, revision: str | None = None) -> dict[str, Any]:
    """``{model_type, hub_id, revision, weights_sha256}`` of a transformers model: the Hub id when it
    came from the Hub, the weights' content hash when it came from a local folder."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        weights = [p for pat in WEIGHT_PATTERNS for p in path.glob(pat)]
        return {
            "model_type": model_type,
            "hub_id": None,
            "revision": None,
            "weights_sha256": files_sha256(weights) if weights else None,
        }
    if not _hub_id(name_or_path):  # a folder that is gone (an older checkpoint's teacher): no local path published
        return {"model_type": model_type, "hub_id": None, "revision": None, "weights_sha256": None}
    return {"model_type": model_type, "hub_id": name_or_path, "revision": revision, "weights_sha256": None}


def repo_id_problem(name: str) -> str | None:
    """Why the Hub would refuse ``name`` as a repo id (huggingface_hub's own rules), or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        return " ".join(str(exc).split())[:200]
    return None


def _hub_id(name: str) -> bool:
    """``name`` can be a Hub repo id (``org/name`` or ``name``), not a path."""
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        return False
    return repo_id_problem(name) is None


def public_model_name(prov: dict[str, Any]) -> str:
    """How a model card names a model: ``org/name`` (Hub), else ``a local <type> checkpoint (sha256 ...)``."""
    if prov.get("hub_id"):
        rev = f" @ {prov['revision'][:12]}" if prov.get("revision") else ""
        return f"{prov['hub_id']}{rev}"
    sha = prov.get("weights_sha256")
    return f"a local {prov.get('model_type') or 'model'} checkpoint" + (f" (weights sha256 {sha[:16]})" if sha else "")


def public_source_name(spec: str) -> str:
    """A shard set or dataset location without its local part: the folder's (or URL's path's) last
    name; never a URL's host, user, password or query (a signed URL's token)."""
    text = str(spec)
    remote = "://" in text
    if remote:
        parts = urlsplit(text)
        scheme, text = parts.scheme, parts.path
    text = text.rstrip("/")
    if text.endswith("manifest.json"):
        text = text[: -len("manifest.json")].rstrip("/")
    name = re.split(r"[/\\]", text)[-1]
    if remote:
        return name or f"remote shards ({scheme})"
    return name or text


# scheme://user:password@host, or a query holding a key, token, signature or password
_URL_SECRET = re.compile(
    r"\b[a-z][a-z0-9+.-]*://[^\s/@'\"`]+:[^\s/@'\"`]*@[^\s'\"`]*"
    r"|\b[a-z][a-z0-9+.-]*://[^\s'\"`]*[?&](?:[\w.-]*[_-])?(?:token|signature|sig|key|password|secret|credential)s?=[^\s'\"`]*",
    re.IGNORECASE,
)


def url_secrets(text: str) -> list[str]:
    """URLs in ``text`` that carry credentials (``user:password@``) or a signed query."""
    return sorted(set(_URL_SECRET.findall(text)))


def local_paths(text: str, roots: Iterable[str | Path] = ()) -> list[str]:
    """Absolute local paths in ``text``: this machine's home, working directory and temp folder, the
    given ``roots``, and any ``/home/``, ``/Users/``, ``/tmp/``, ``/scratch/`` or ``/data/`` path."""
    prefixes = {str(Path(r).resolve()) for r in roots} | {os.path.expanduser("~"), os.getcwd(), "/tmp"}
    # a whole path only: "lab/tmp-encoder" (a repo id) does not name /tmp
    found = [p for p in prefixes if len(p) > 1 and re.search(rf"(?<![\w.:/-]){re.escape(p)}(?=$|[/\s'\"`)\]|,])", text)]
    found += re.findall(r"(?<![\w.:/-])/(?:home|Users|tmp|scratch|data|work|mnt)/[^\s'\"`)\]|,]+", text)
    return sorted(set(found))
