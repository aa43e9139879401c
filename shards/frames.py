"""Which frames of a clip become samples: the per-source ``frames`` sampling rule.

- ``{fps: F, max: M}`` (default ``{fps: 3, max: 30}``, what the public lung-POCUS benchmarks use):
  one frame every ``1/F`` seconds from the first frame, at most ``M``. Needs a frame rate (video time
  stamps, DICOM ``FrameTime``/``CineRate``/``RecommendedDisplayFrameRate``); without one it falls
  back to ``every`` with the step that spreads ``M`` frames evenly over the clip (``ceil(n / M)``).
- ``{every: N, max: M}``: frames 0, N, 2N, ... at most ``M``.
- ``all``: every frame.

``max`` may be omitted (no cap) and every rule is further capped by the source's
``max_frames_per_clip``, which bounds what one clip can add to a shard.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from sonodistill.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Sampling:
    mode: str = "fps"  # fps | every | all
    fps: float = 3.0
    every: int = 1
    max: int | None = 30

    def spec(self) -> str:
        """Canonical text form (part of the build identity)."""
        if self.mode == "all":
            return "all"
        cap = "" if self.max is None else f",max={self.max}"
        return f"fps={self.fps:g}{cap}" if self.mode == "fps" else f"every={self.every}{cap}"

    def cap(self, max_frames_per_clip: int | None) -> int | None:
        caps = [c for c in (self.max if self.mode != "all" else None, max_frames_per_clip) if c is not None]
        return min(caps) if caps else None

    def indices(self, n: int, rate: float | None, max_frames_per_clip: int | None = None) -> list[int]:
        """Frame indices to take from a clip of ``n`` frames at ``rate`` frames/s (None: unknown)."""
        cap = self.cap(max_frames_per_clip)
        if self.mode == "all":
            out = range(n)
        elif self.mode == "every":
            out = range(0, n, self.every)
        elif rate and rate > 0:
            step = rate / self.fps
            if step <= 1:
                out = range(n)
            else:
                seen: list[int] = []
                k = 0
                while (i := int(round(k * step))) < n:
                    seen.append(i)
                    k += 1
                out = seen
        else:  # no frame rate: spread the cap evenly over the clip
            out = range(0, n, max(1, math.ceil(n / cap)) if cap else 1)
        out = list(out)
        return out if cap is None else out[:cap]

    def stream(
        self, frames: Iterable[tuple[float | None, T]], rate: float | None, max_frames_per_clip: int | None = None
    ) -> Iterator[tuple[int, T]]:
        """Select from a stream of ``(time_s, frame)`` in decode order; yields ``(index, frame)`` and
        stops as soon as the cap is reached, so a long video is decoded only as far as needed.

        Times count from the first frame's (an MPEG-TS clip starts at its own clock's time), and a
        time that jumps back (segments joined, a clock reset) starts a new timeline that continues the
        old one, so the frames after it are sampled as the clip plays."""
        cap = self.cap(max_frames_per_clip)
        taken = 0
        period = 1.0 / self.fps if self.mode == "fps" else 0.0
        half = 0.5 / rate if rate else 0.0  # tolerate time-stamp jitter of half a frame
        clock = _Clock(1.0 / rate if rate else 0.0, half)
        next_t = 0.0
        for i, (t, frame) in enumerate(frames):
            if cap is not None and taken >= cap:
                return
            if self.mode == "all":
                keep = True
            elif self.mode == "every":
                keep = i % self.every == 0
            else:
                t = clock.played(i / rate if rate else float(i)) if t is None else clock.played(t)
                keep = t + half >= next_t
                if keep:
                    while next_t <= t + half:
                        next_t += period
            if keep:
                taken += 1
                yield i, frame


@dataclass
class _Clock:
    """A clip's time stamps as time played since its first frame, across resets of its clock."""

    step: float  # one frame's duration (0: unknown), the gap put where the clock went back
    jitter: float  # a step back this small is time-stamp jitter, not a reset
    offset: float | None = None  # added to a time stamp to give time played
    last: float = 0.0  # the last time played

    def played(self, t: float) -> float:
        if self.offset is None:
            self.offset = -t
        elif t + self.offset < self.last - self.jitter:  # the clock went back: a new timeline
            self.offset = self.last + self.step - t
        self.last = t + self.offset
        return self.last


DEFAULT = Sampling()


def parse_sampling(value: object, where: str) -> Sampling:
    """``"all"``, ``{fps: F, max: M}`` or ``{every: N, max: M}`` -> :class:`Sampling`."""
    if value is None:
        return DEFAULT
    if isinstance(value, Sampling):
        return value
    if value == "all":
        return Sampling(mode="all", max=None)
    if not isinstance(value, dict):
        raise UserError(f"{where}: frames: expected 'all', {{fps: F, max: M}} or {{every: N, max: M}}, got {value!r}")
    unknown = [k for k in value if k not in ("fps", "every", "max")]
    if unknown:
        raise UserError(f"{where}: frames: unknown key '{unknown[0]}'; valid keys: fps, every, max")
    if ("fps" in value) == ("every" in value):
        raise UserError(f"{where}: frames: give exactly one of fps or every, got {value!r}")
    cap = value.get("max", None)
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise UserError(f"{where}: frames: max expects a positive integer, got {cap!r}")
    if "fps" in value:
        fps = value["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise UserError(f"{where}: frames: fps expects a positive number, got {fps!r}")
        return Sampling(mode="fps", fps=float(fps), max=cap)
    every = value["every"]
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise UserError(f"{where}: frames: every expects a positive integer, got {every!r}")
    return Sampling(mode="every", every=every, max=cap)
