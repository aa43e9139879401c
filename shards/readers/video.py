"""Device videos (mp4/H.264, mov, avi, mkv/webm, mpeg...) through PyAV, streamed frame by frame.

Frames are decoded in order and handed to the sampling rule one at a time; decoding stops as soon
as the rule's cap is reached, so neither a long clip nor its decoded frames ever sit in memory.
Times come from each frame's presentation time stamp (the stream's average rate when a frame has
none), and each frame is turned as its display matrix says (as players show it). A container that
opens but yields no frame is ``empty_video``; a stream that breaks off is ``truncated`` when some
frames came out (they are kept), ``unreadable`` otherwise, and so is an AVI whose decode ends clearly
short of the frame count its index declares (an AVI cut in half just stops without an error).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np

from shards.options import SourceOptions
from shards.readers.base import Frame, Media, ReadError, as_frame_pixels

EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".ogv")


def sniff(head: bytes, name: str) -> bool:
    """ISO-BMFF (mp4/mov/m4v), RIFF ``AVI``, Matroska/WebM, MPEG-PS, MPEG-TS, ASF/WMV."""
    return (
        (head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"))
        or head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free")
        or head[:4] in (b"\x1a\x45\xdf\xa3", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")
        or (head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47")  # MPEG transport stream
        or head[:4] == b"\x30\x26\xb2\x75"  # ASF / WMV
    )


# Only AVI's declared count is checked: its index lists every frame, while an MP4/MOV counts samples
# an edit list hides (a clip trimmed without re-encoding declares 60 frames and plays 40). A decode
# that ends this many frames short of an AVI's count is cut short (an AVI cut in half just stops).
SHORT_BY = 0.02
SHORT_BY_MIN = 2


def _rotated(frame) -> np.ndarray:
    """A decoded frame as players show it: its display matrix's rotation applied (a phone held upright
    records landscape pixels and a 90-degree matrix), as :func:`shards.decode.upright` does for EXIF."""
    pixels = frame.to_ndarray(format="rgb24")
    turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise quarter turns
    return np.rot90(pixels, turns) if turns else pixels


def _cut_short(decoded: int, declared: int | None) -> bool:
    """Did a decode that ran to the stream's end stop clearly before the container's declared count?"""
    return bool(declared) and decoded < declared - max(SHORT_BY_MIN, SHORT_BY * declared)


def _empty_matroska(src: str | bytes) -> bool:
    """Is ``src`` a whole Matroska/WebM file (its segment ends within the file)? FFmpeg fails to open
    one that holds tracks and no frame with an end of file, as it does one cut inside its header.
    Read by hand: only FFmpeg reads Matroska among the project's libraries, and two EBML sizes at the
    file's start are all that is needed."""
    try:
        if isinstance(src, bytes):
            head, size = src[:64], len(src)
        else:
            with open(src, "rb") as fh:
                head, size = fh.read(64), fh.seek(0, 2)
    except OSError:
        return False
    if head[:4] != b"\x1a\x45\xdf\xa3":
        return False
    pos = 4
    header_size, pos = _ebml_size(head, pos)
    pos += header_size
    if head[pos : pos + 4] != b"\x18\x53\x80\x67":  # the Segment
        return False
    segment_size, pos = _ebml_size(head, pos + 4)
    return 0 < segment_size and pos + segment_size <= size


def _ebml_size(buf: bytes, pos: int) -> tuple[int, int]:
    """An EBML variable-length size at ``pos`` and the position after it (-1: unknown or unreadable)."""
    if pos >= len(buf) or buf[pos] == 0:
        return -1, len(buf)
    length = 8 - buf[pos].bit_length() + 1
    raw = buf[pos : pos + length]
    if len(raw) < length:
        return -1, len(buf)
    value = int.from_bytes(raw, "big") & ((1 << (7 * length)) - 1)
    return (-1 if value == (1 << (7 * length)) - 1 else value), pos + length


def read_video(src: str | bytes, opts: SourceOptions, name: str = "") -> Media:
    """The container says what it holds; ``name`` is not needed."""
    import av

    try:
        container = av.open(io.BytesIO(src) if isinstance(src, bytes) else src, mode="r")
    except av.error.EOFError as exc:
        raise ReadError("empty_video" if _empty_matroska(src) else "unreadable", str(exc)) from None
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise ReadError("unreadable", str(exc)) from None
    if not container.streams.video:
        container.close()
        raise ReadError("no_video_stream")
    stream = container.streams.video[0]
    rate = float(stream.average_rate) if stream.average_rate else None
    n = int(stream.frames) if stream.frames else None
    declared = n if "avi" in container.format.name.split(",") else None
    width, height = stream.codec_context.width, stream.codec_context.height
    # bound now: a generator left open is closed at interpreter exit, when av's names may be gone
    decode_errors = (av.FFmpegError, OSError, ValueError, EOFError)
    count, ended = 0, False  # frames decoded; the stream decoded to its end (not stopped at the cap)

    def decoded() -> Iterator[tuple[float | None, object]]:
        nonlocal count, ended
        for frame in container.decode(stream):
            count += 1
            yield frame.time, frame
        ended = True

    def frames() -> Iterator[Frame]:
        got = 0
        try:
            for i, frame in opts.frames.stream(decoded(), rate, opts.max_frames_per_clip):
                got += 1
                yield Frame(as_frame_pixels(_rotated(frame)), i)
        except decode_errors as exc:
            raise ReadError("truncated" if got else "unreadable", str(exc)) from None
        finally:
            container.close()
        if count == 0:
            raise ReadError("empty_video")
        if ended and _cut_short(count, declared):
            raise ReadError("truncated", f"{count} of the {n} frames the container declares")

    return Media(
        frames=frames(),
        multi=True,
        family="video",
        orig_mode=str(stream.codec_context.name),
        orig_size=(width, height),
        n_frames=n,
        fps=rate,
    )
