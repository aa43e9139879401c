"""Shard sets in object storage: ``https://``, ``s3://``, ``gs://`` (any fsspec URL), read with retries.

A remote shard set is named by its folder URL (``https://host/us-shards``, ``s3://bucket/us-shards``);
its ``manifest.json`` is read from there and every shard is fetched whole with fsspec
(``cat_file``: one request per shard). A failed read — a dropped connection, a timeout, a short
body — is retried ``SHARD_RETRIES`` times with exponential back-off; a shard that still fails is
reported to the caller, which skips and counts it (never fatal). HTTP(S) needs ``aiohttp``
(installed with sonodistill); ``s3://`` and ``gs://`` need the optional extras
``sonodistill[s3]`` (s3fs) and ``sonodistill[gcs]`` (gcsfs).
"""

from __future__ import annotations

import logging
import os
import time

from sonodistill.errors import UserError

log = logging.getLogger(__name__)

SHARD_RETRIES = int(os.environ.get("SONODISTILL_SHARD_RETRIES", 3))  # retries after the first attempt
RETRY_BACKOFF_S = float(os.environ.get("SONODISTILL_SHARD_BACKOFF", 0.5))  # first wait; doubles each time
# A server that accepts a connection and then says nothing must not hold a read forever.
READ_TIMEOUT_S = float(os.environ.get("SONODISTILL_SHARD_TIMEOUT", 30))
_EXTRA = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


class RemoteReadError(Exception):
    """A remote object could not be read after every retry."""


def is_remote(url: str) -> bool:
    """An fsspec URL other than a local file (``pipe:`` commands are webdataset's, not remote here)."""
    return "://" in url and not url.startswith("file://")


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def filesystem(url: str):
    """The fsspec filesystem for ``url`` (a clear error when its back-end is not installed)."""
    import fsspec

    protocol = url.split("://", 1)[0]
    options = {}
    if protocol in ("http", "https"):
        import aiohttp

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(sock_connect=30, sock_read=READ_TIMEOUT_S)}
    try:
        fs, _ = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        extra = _EXTRA.get(protocol)
        hint = f"pip install 'sonodistill[{extra}]'" if extra else "install the fsspec back-end for it"
        raise UserError(f"{url}: no fsspec back-end for {protocol}:// ({exc}); {hint}") from None
    except ValueError as exc:
        raise UserError(f"{url}: not a URL fsspec knows ({exc})") from None
    return fs


def read_bytes(url: str, retries: int | None = None, backoff: float | None = None) -> bytes:
    """The whole object at ``url``; :class:`RemoteReadError` after ``retries`` failed retries.

    A missing object is not retried (it will not appear); anything else — connection reset,
    timeout, a body shorter than announced — is treated as transient.
    """
    retries = SHARD_RETRIES if retries is None else retries
    wait = RETRY_BACKOFF_S if backoff is None else backoff
    fs = filesystem(url)
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            return fs.cat_file(url)
        except FileNotFoundError as exc:
            raise RemoteReadError(f"{url}: not found") from exc
        except Exception as exc:  # aiohttp/botocore/google errors have no common base but Exception
            last = exc
            if attempt < retries:
                log.warning(f"{url}: read failed ({_why(exc)}); retry {attempt + 1}/{retries}")
                time.sleep(wait * 2**attempt)
    raise RemoteReadError(f"{url}: {retries + 1} attempts failed ({_why(last)})") from last


def _why(exc: BaseException | None) -> str:
    """An error's class and text; a timeout, whose text is often empty, says how long it waited."""
    name = type(exc).__name__
    text = str(exc).strip()
    if "Timeout" in name or isinstance(exc, TimeoutError):
        text = text or f"no answer in time (http: {READ_TIMEOUT_S:g} s, SONODISTILL_SHARD_TIMEOUT)"
    return f"{name}: {text}" if text else name
