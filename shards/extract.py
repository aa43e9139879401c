"""Worker side of the build: one input item -> its cleaned frames and rejections, in frame order.

Runs in the build's worker processes. The item is read by :mod:`shards.readers` (content-detected)
and its sampled frames are cleaned one at a time (:func:`shards.clean.clean_frame`). The frames of a
clip share one scan area, found from its first ``CLIP_MASK_FRAMES`` sampled frames
(:mod:`shards.clip_mask`), so they share one crop; only those frames are held at once. The build
then drops consecutive near-identical frames and global duplicates in input order. A file that
cannot be read is one rejection under its reason; a clip that breaks off keeps the frames decoded
before the break and adds one rejection for the rest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shards.clean import Cleaned, Rejected, clean_frame
from shards.clip_mask import clip_scan_area
from shards.codec import Codec
from shards.options import SourceOptions
from shards.readers import Frame, Media, ReadError, open_media
from shards.scan_area import ScanArea
from shards.sources import Item
from shards.thresholds import CLIP_MASK_FRAMES


@dataclass(frozen=True)
class ExtractSettings:
    size: int
    codec: Codec


@dataclass
class FrameOutcome:
    frame: int | None  # index in the clip; None for a single image or a whole-file rejection
    result: Cleaned | Rejected


@dataclass
class ItemOutcome:
    family: str | None = None
    multi: bool = False
    decoded: int = 0  # frames decoded (sampled), kept or not
    frames: list[FrameOutcome] = field(default_factory=list)
    skipped: bool = False  # over the source's max_images: not read


def _detail(exc: ReadError, item: Item | None = None) -> str:
    """The library's message, without memory addresses (the output must not depend on the run) and
    without the file's absolute path (every output names files relative to their source)."""
    text = exc.detail
    if item is not None and item.path:
        text = text.replace(str(Path(item.path).resolve()), item.relpath).replace(item.path, item.relpath)
    return re.sub(r"\(?0x[0-9a-fA-F]+\)?", "", text)[:200]


def _file_sha1(item: Item) -> str:
    if item.data is not None:
        return hashlib.sha1(item.data).hexdigest()
    h = hashlib.sha1()
    with open(item.path, "rb") as fh:  # type: ignore[arg-type]
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _library_error(exc: Exception) -> ReadError:
    """A decoding library's own exception (each raises its own kinds on a damaged file) as ``unreadable``:
    a corrupt sample is counted under its reason, never the end of the build."""
    return ReadError("unreadable", f"{type(exc).__name__}: {' '.join(str(exc).split())}")


def _read_frames(media: Media) -> Iterator[Frame]:
    """The media's frames; what a library raises while decoding one ends the clip as :class:`ReadError`."""
    frames = iter(media.frames)
    while True:
        try:
            fr = next(frames)
        except StopIteration:
            return
        except (ReadError, MemoryError):
            raise
        except Exception as exc:  # any library's own error on a damaged file
            raise _library_error(exc) from exc
        yield fr


def frames_with_area(media: Media) -> Iterator[tuple[Frame, ScanArea | None]]:
    """The media's frames, each with its clip's scan area (None: a single image, found per frame).

    The first ``CLIP_MASK_FRAMES`` frames are held to find the area; a read error among them is
    raised after the frames decoded before it."""
    frames = _read_frames(media)
    if not media.multi:
        yield from ((fr, None) for fr in frames)
        return
    head: list[Frame] = []
    error: BaseException | None = None
    try:
        for fr in frames:
            head.append(fr)
            if len(head) >= CLIP_MASK_FRAMES:
                break
    except (ReadError, MemoryError) as exc:
        error = exc
    usable = [f for f in head if f.reject is None]
    # one size, grey or colour: a video's exactly grey frame comes as HxW, its next ones (chroma noise) as HxWx3
    size = usable[0].pixels.shape[:2] if usable else None
    area = clip_scan_area([f.pixels for f in usable if f.pixels.shape[:2] == size], media.region) if usable else None
    for fr in head:
        yield fr, area if fr.pixels.shape[:2] == size else None
    if error is not None:
        raise error
    for fr in frames:
        yield fr, area if fr.pixels.shape[:2] == size else None


def extract_item(item: Item, opts: SourceOptions, settings: ExtractSettings) -> ItemOutcome:
    """Never raises for bad data: every failure becomes a :class:`Rejected` with its reason."""
    out = ItemOutcome()
    if item.reject:  # a link loop, a dangling link or a pipe: counted, never opened
        out.frames.append(FrameOutcome(None, Rejected(item.reject)))
        return out
    src = item.data if item.data is not None else item.path
    try:
        try:
            media = open_media(src, item.relpath, opts)  # type: ignore[arg-type]
        except (ReadError, MemoryError):
            raise
        except Exception as exc:  # any library's own error on a damaged file
            raise _library_error(exc) from exc
    except ReadError as exc:
        detail = {"detail": _detail(exc, item)} if exc.detail else {}
        out.frames.append(FrameOutcome(None, Rejected(exc.reason, detail)))
        return out
    except MemoryError:
        out.frames.append(FrameOutcome(None, Rejected("too_large")))
        return out
    out.family, out.multi = media.family, media.multi
    try:
        sha1 = _file_sha1(item)
    except OSError:
        out.frames.append(FrameOutcome(None, Rejected("unreadable")))
        return out
    try:
        for fr, area in frames_with_area(media):
            out.decoded += 1
            if fr.reject is not None:  # this frame alone (NaN pixels): the clip goes on
                rejected = Rejected(fr.reject.reason, {"detail": _detail(fr.reject, item)})
                out.frames.append(FrameOutcome(fr.index if media.multi else None, rejected))
                continue
            res = clean_frame(fr.pixels, settings.size, settings.codec, media.region, area, opts.annotations)
            index = fr.index if media.multi else None
            if isinstance(res, Cleaned):
                h, w = fr.pixels.shape[:2]
                meta = {"orig_size": [w, h], "orig_mode": media.orig_mode, "sha1": sha1, **res.meta}
                scale = meta.pop("scale")
                if media.spacing_mm:
                    meta["spacing_mm"] = [round(media.spacing_mm[0] * scale, 6), round(media.spacing_mm[1] * scale, 6)]
                if media.multi:
                    meta["clip"] = item.relpath
                    meta["frame"] = fr.index
                meta.update(media.meta)
                res.meta = meta
            out.frames.append(FrameOutcome(index, res))
    except ReadError as exc:
        detail = {"detail": _detail(exc, item), "after": out.decoded}
        out.frames.append(FrameOutcome(None, Rejected(exc.reason, detail)))
    except MemoryError:
        out.frames.append(FrameOutcome(None, Rejected("too_large", {"after": out.decoded})))
    return out


def extract_job(job: tuple[Item, SourceOptions, ExtractSettings]) -> tuple[Item, ItemOutcome]:
    """:func:`extract_item` as a worker's task (:func:`shards.ordered_pool.ordered_map`): the item and its outcome."""
    item, opts, settings = job
    return item, extract_item(item, opts, settings)
