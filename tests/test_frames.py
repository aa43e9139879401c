"""Frame sampling rules (shards.frames): indices by hand, streaming stops at the cap, config errors."""

from __future__ import annotations

import pytest

from shards.frames import Sampling, parse_sampling
from sonodistill.errors import UserError


def test_fps_rule_by_hand():
    s = Sampling(mode="fps", fps=3, max=30)
    assert s.indices(100, 30.0) == list(range(0, 100, 10))  # 30 fps -> every 10th frame
    assert s.indices(100, 25.0)[:5] == [0, 8, 17, 25, 33]  # round(k * 25 / 3)
    assert s.indices(1000, 30.0) == list(range(0, 300, 10))  # capped at 30 frames
    assert s.indices(10, 2.0) == list(range(10))  # slower than 3 fps: every frame
    # no frame rate: spread the cap evenly (every ceil(n / max))
    assert s.indices(90, None) == list(range(0, 90, 3))
    assert Sampling(mode="fps", fps=3, max=None).indices(7, None) == list(range(7))
    assert s.indices(100, 30.0, max_frames_per_clip=4) == [0, 10, 20, 30]


def test_every_and_all():
    assert Sampling(mode="every", every=4, max=3).indices(20, 30.0) == [0, 4, 8]
    assert Sampling(mode="all", max=None).indices(5, None) == [0, 1, 2, 3, 4]
    assert Sampling(mode="all", max=None).indices(5000, None, max_frames_per_clip=1000) == list(range(1000))


def test_stream_uses_time_stamps_and_stops_at_the_cap():
    pulled = []

    def frames():
        for i in range(1000):
            pulled.append(i)
            yield i / 30.0, f"f{i}"

    got = list(Sampling(mode="fps", fps=3, max=5).stream(frames(), 30.0))
    assert got == [(0, "f0"), (10, "f10"), (20, "f20"), (30, "f30"), (40, "f40")]
    assert len(pulled) <= 42  # decoding stopped right after the cap
    # jittery time stamps still give one frame per period
    jitter = [(i / 30.0 + (0.004 if i % 2 else -0.004), i) for i in range(60)]
    idx = [i for i, _ in Sampling(mode="fps", fps=3, max=None).stream(jitter, 30.0)]
    assert idx == [0, 10, 20, 30, 40, 50]


def test_stream_counts_from_the_first_frame_and_goes_on_after_a_clock_reset():
    """An MPEG-TS clip starts at its clock's time (0.167 s), and two segments joined restart it:
    before, the first gap counted from t=0 and no frame after the reset was ever sampled."""
    rule = Sampling(mode="fps", fps=3, max=None)
    start = [(0.167 + i / 12.0, i) for i in range(24)]  # 12 frames/s from 0.167 s
    assert [i for i, _ in rule.stream(start, 12.0)] == [0, 4, 8, 12, 16, 20]
    joined = start + [(0.167 + i / 12.0, 24 + i) for i in range(24)]  # a second segment, its clock reset
    assert [i for i, _ in rule.stream(joined, 12.0)] == list(range(0, 48, 4))


@pytest.mark.parametrize(
    "value, msg",
    [
        ({"fps": 3, "every": 2}, "exactly one of fps or every"),
        ({"fps": -1}, "fps expects a positive number"),
        ({"fps": float("inf")}, "fps expects a positive number"),  # YAML .inf: a frame period of 0, a hang
        ({"fps": float("nan")}, "fps expects a positive number"),  # YAML .nan: one frame per clip, silently
        ({"every": 0}, "every expects a positive integer"),
        ({"fps": 3, "max": 0}, "max expects a positive integer"),
        ({"fps": 3, "maxx": 3}, "unknown key 'maxx'"),
        ("some", "expected 'all'"),
    ],
)
def test_bad_sampling_is_a_one_line_error(value, msg):
    with pytest.raises(UserError, match=msg):
        parse_sampling(value, "source 'x'")


def test_default_is_three_fps_thirty_frames():
    s = parse_sampling(None, "x")
    assert (s.mode, s.fps, s.max) == ("fps", 3.0, 30) and s.spec() == "fps=3,max=30"
    assert parse_sampling("all", "x").spec() == "all"
    assert parse_sampling({"every": 5}, "x").spec() == "every=5"
