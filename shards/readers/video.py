"""Device videos (mp4/H.264, mov, avi, mkv/webm, mpeg...) through PyAV, streamed frame by frame.

Frames are decoded in order and handed to the sampling rule one at a time; decoding stops as soon
as the rule's cap is reached, so neither a long clip nor its decoded frames ever sit in memory.
Times come from each frame's presentation time stamp (the stream's average rate when a frame has
none). A container that opens but yields no frame is ``empty_video``; a stream that breaks off is
``truncated`` when some frames came out, ``unreadable`` otherwise.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

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


def read_video(src: str | bytes, opts: SourceOptions, name: str = "") -> Media:
    """The container says what it holds; ``name`` is not needed."""
    import av

    try:
        container = av.open(io.BytesIO(src) if isinstance(src, bytes) else src, mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise ReadError("unreadable", str(exc)) from None
    if not container.streams.video:
        container.close()
        raise ReadError("no_video_stream")
    stream = container.streams.video[0]
    rate = float(stream.average_rate) if stream.average_rate else None
    n = int(stream.frames) if stream.frames else None
    width, height = stream.codec_context.width, stream.codec_context.height
    # bound now: a generator left open is closed at interpreter exit, when av's names may be gone
    decode_errors = (av.FFmpegError, OSError, ValueError, EOFError)

    def decoded() -> Iterator[tuple[float | None, object]]:
        for frame in container.decode(stream):
            yield frame.time, frame

    def frames() -> Iterator[Frame]:
        got = 0
        try:
            for i, frame in opts.frames.stream(decoded(), rate, opts.max_frames_per_clip):
                got += 1
                yield Frame(as_frame_pixels(frame.to_ndarray(format="rgb24")), i)
        except decode_errors as exc:
            raise ReadError("truncated" if got else "unreadable", str(exc)) from None
        finally:
            container.close()
        if got == 0:
            raise ReadError("empty_video")

    return Media(
        frames=frames(),
        multi=True,
        family="video",
        orig_mode=str(stream.codec_context.name),
        orig_size=(width, height),
        n_frames=n,
        fps=rate,
    )
