"""The shard set's ``manifest.json`` and how a shard set is named on the command line.

A shard set can be given as a folder holding ``manifest.json``, the manifest file itself, a brace
pattern (``/data/shard-{000000..000099}.tar``, webdataset's syntax) or a list of shard paths/URLs.
Folders and manifests may be remote: ``https://host/us-shards``, ``s3://bucket/us-shards`` or
``gs://...`` (read through fsspec, see :mod:`shards.remote`), so sample counts, sources and epochs
are known for object storage too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import braceexpand

from shards import remote
from sonodistill.errors import UserError

MANIFEST = "manifest.json"
REQUIRED = ("num_samples", "sources", "rejected", "shards", "settings")


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: no shard manifest (build shards with `python -m shards.build`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: manifest is not valid JSON ({exc})") from None
    return _checked(manifest, str(path))


def _checked(manifest: dict, where: str) -> dict:
    if not isinstance(manifest, dict):
        raise UserError(f"{where}: manifest is not a JSON object")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise UserError(f"{where}: manifest lacks {', '.join(missing)}")
    return manifest


def read_remote_manifest(url: str) -> dict:
    """``manifest.json`` at a folder URL (or the manifest's own URL), read with retries."""
    if not url.rstrip("/").endswith(MANIFEST):
        url = remote.join(url, MANIFEST)
    try:
        data = remote.read_bytes(url)
    except remote.RemoteReadError as exc:
        raise UserError(f"{url}: cannot read the shard manifest ({exc})") from None
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise UserError(f"{url}: manifest is not valid JSON ({exc})") from None
    return _checked(manifest, url)


def encoding_of(manifest: dict | None) -> str | None:
    """The shard set's image encoding (``png`` for builds from before encodings were recorded)."""
    if manifest is None:
        return None
    return manifest.get("encoding") or manifest.get("settings", {}).get("encoding") or "png"


def _exists(url: str) -> bool:
    """False only for a shard the store says is not there; any other failure (a busy or flaky
    store) keeps it, for the reads to retry and count, so every rank deals the same list."""
    if not remote.is_remote(url):
        return url.startswith("pipe:") or Path(url.removeprefix("file://")).exists()
    try:
        remote.filesystem(url).info(url)
    except FileNotFoundError:
        return False
    except UserError:
        raise
    except Exception:  # aiohttp/botocore/google errors share no base but Exception
        return True
    return True


def present_shards(urls: list[str], what: str) -> tuple[list[str], list[str]]:
    """(the shards of a list without a manifest that exist, those that do not), asked of every store
    at once (one request each, 16 at a time). Dealt to the loader's workers, a missing shard would
    leave a worker with nothing to read; none present is an error."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, len(urls))) as pool:
        there = list(pool.map(_exists, urls))
    present = [u for u, ok in zip(urls, there) if ok]
    missing = [u for u, ok in zip(urls, there) if not ok]
    if not present:
        raise UserError(f"{what}: none of the {len(urls)} listed shard(s) could be found, e.g. {missing[0]}")
    return present, missing


# what to do with several shard sets: the loader reads one (its manifest gives epochs, sources, sizes)
ONE_SET = (
    "shards are one folder, URL or pattern of .tar files: build several sources into one set "
    "(shards.build with one --source each), or give a pattern of the .tar files of each folder"
)


def resolve_shards(spec: str | Path | Sequence[str]) -> tuple[list[str], dict | None]:
    """Shard URLs and the manifest (None for patterns/lists without one)."""
    if isinstance(spec, (list, tuple)):
        urls = [str(s) for s in spec]
        if not urls:
            raise UserError("shards: empty shard list")
        return urls, None
    spec = str(spec)
    if "{" not in spec and re.search(r",\s*\[?'?\"?[a-z][a-z0-9+.-]*://", spec):  # url1,url2 or [url1, url2]
        raise UserError(f"shards {spec[:120]}: a list of URLs; {ONE_SET}")
    if remote.is_remote(spec) and "{" not in spec and not spec.endswith(".tar"):
        manifest = read_remote_manifest(spec)
        root = spec.rstrip("/")
        root = root[: -len(MANIFEST)].rstrip("/") if root.endswith(MANIFEST) else root
        if not manifest["shards"]:
            raise UserError(f"{root}: manifest lists no shards")
        return [remote.join(root, s) for s in manifest["shards"]], manifest
    p = Path(spec)
    if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tar"):
        raise UserError(f"shards {spec}: expected a shard folder, its {MANIFEST}, a .tar shard or a pattern of them")
    if not p.exists() and "{" not in spec and "://" not in spec and not spec.startswith("pipe:"):
        several = "," in spec and all(Path(x.strip(" []'\"")).exists() for x in spec.split(","))
        raise UserError(f"shards {spec}: no such shard folder or file" + (f"; {ONE_SET}" if several else ""))
    if p.is_dir() or p.name == MANIFEST:
        manifest = read_manifest(p)
        root = p if p.is_dir() else p.parent
        urls = [str(root / s) for s in manifest["shards"]]
        missing = [u for u in urls if not Path(u).exists()]
        if missing:
            raise UserError(f"{root}: manifest lists {len(missing)} missing shard(s), e.g. {missing[0]}")
        if not urls:
            raise UserError(f"{root}: manifest lists no shards")
        return urls, manifest
    urls = list(braceexpand.braceexpand(spec))
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    # folders of shards named in a pattern (a ".tar" that is a folder is an unreadable shard, counted)
    if folders := [u for u in local if Path(u).is_dir() and not u.endswith(".tar")]:
        raise UserError(f"shards {spec}: the pattern names folders ({', '.join(folders[:3])}); {ONE_SET}")
    missing = [u for u in local if not Path(u).exists()]
    if missing:
        raise UserError(f"shards {spec}: {len(missing)} shard file(s) not found, e.g. {missing[0]}")
    return urls, None
