"""sonodistill.parts: ``I/N`` parsed once, work dealt longest first; sonodistill.atomic.write_once."""

from __future__ import annotations

import random
import threading

import pytest

from sonodistill.atomic import write_once
from sonodistill.errors import UserError
from sonodistill.parts import Part, assign


def test_part_parse_and_names():
    assert Part.parse("0/4") == Part(0, 4) and Part.parse(" 3 / 4 ") == Part(3, 4)
    assert str(Part(2, 16)) == "2/16" and Part(2, 16).tag == "part-2-of-16"
    for bad in ("4/4", "1/0", "-1/2", "1", "a/b", "1/2/3", ""):
        with pytest.raises(UserError, match=rf"--part: expected I/N with 0 <= I < N .*got '{bad}'"):
            Part.parse(bad, "--part")


def test_assign_is_longest_first_to_the_least_loaded_by_hand():
    # order by cost: 5 (p0), 4 (p1), 3 (p1: 4 < 5), 3 (p0: 5 < 7), 2 (p1: 7 < 8), 1 (p0: 8 < 9)
    assert assign([5, 4, 3, 3, 2, 1], 2) == [0, 1, 1, 0, 1, 0]
    # equal costs: the earlier item first, ties between parts to the lower part number
    assert assign([1, 1, 1, 1, 1], 3) == [0, 1, 2, 0, 1]
    assert assign([], 3) == [] and assign([2.0, 1.0], 1) == [0, 0]
    assert assign([7.0], 4) == [0]  # more parts than items: the others are empty


def test_assign_deterministic_disjoint_covering_balanced():
    rng = random.Random(0)
    costs = [rng.choice([0.1, 0.1, 1.0, 1.5, 4.0]) * rng.uniform(0.5, 1.5) for _ in range(300)]
    for n in (1, 2, 3, 16):
        owner = assign(costs, n)
        assert owner == assign(list(costs), n)  # the same slices in every process
        assert sorted(set(owner)) == list(range(n))  # every item in exactly one part, every part used
        loads = [sum(c for c, p in zip(costs, owner) if p == k) for k in range(n)]
        # the greedy rule's guarantee: no part above the mean by more than the largest item
        assert max(loads) <= sum(costs) / n + max(costs) + 1e-9, loads


def test_write_once_first_writer_wins(tmp_path):
    path = tmp_path / "sub" / "plan.json"
    assert write_once(path, "first") and path.read_text() == "first"
    assert not write_once(path, b"second") and path.read_text() == "first"
    # racing threads: exactly one wins, the file is whole, no temporary is left behind
    racing = tmp_path / "race.bin"
    wins: list[bool] = []
    blobs = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=lambda b=b: wins.append(write_once(racing, b))) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1 and racing.read_bytes() in blobs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race.bin", "sub"]
