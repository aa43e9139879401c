"""Per-rule table of the cleaning on labelled real frames, by the code of this tree and of a commit before.

    .venv/bin/python bench/real_rules.py [--labels REALDATA/labels.csv] [--before 7309d02]

Reads a CSV of labelled frames (``path,source,class,notes``; paths relative to the CSV's folder;
classes ``bmode``, ``air``, ``doppler``, ``annotated``, ``ui_screen``, ``not_us``; notes beginning
with ``ambiguous:`` are scored apart), cleans every frame as a single image (``shards.clean
.clean_image``, ``annotations: keep`` so the marks found are listed) with this tree and with
``--before`` (``git archive``; each tree in its own process, both at once), and prints, before ->
after:

1. per class, how many frames each rule rejects (``not_ultrasound``, ``too_small``, ``colour``,
   ``no_tissue``, anything else) and how many are kept; after, how many kept frames carry marks (``annotations``);
2. genuine B-mode per source: false rejections (every rule) and frames with marks found (false flags
   of the annotation finder), and for ``annotated`` frames the share with a mark found (recall).

Frames are exported PNG/JPEG, so a DICOM ultrasound region and a clip's shared scan mask are not
used: each frame is judged on its own pixels (the harder case). The last line is JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from revision import packages_at  # bench/revision.py, beside this script

from sonodistill.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BEFORE = "7309d02"  # the last commit before issue 17
RULES = ("not_ultrasound", "too_small", "colour", "no_tissue")  # anything else is counted as "other"
CLASSES = ("bmode", "air", "doppler", "annotated", "ui_screen", "not_us")

CHILD = """
import csv, json, sys
from pathlib import Path
from shards.clean import Rejected, clean_image
labels = Path(sys.argv[1])
after = sys.argv[2] == "after"
for row in csv.DictReader(open(labels)):
    data = (labels.parent / row["path"]).read_bytes()
    res = clean_image(data, 256, annotations="keep") if after else clean_image(data, 256)
    if isinstance(res, Rejected):
        out = {"outcome": res.reason}
    else:
        out = {"outcome": "kept", "marks": [m["kind"] for m in res.meta.get("annotations", [])]}
    print(json.dumps({"path": row["path"], **out}), flush=True)
"""


def _start(tree: Path, labels: Path, which: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, str(labels), which]
    # cwd: ``python -c`` puts the working directory first on sys.path, before PYTHONPATH
    return subprocess.Popen(cmd, env=env, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(proc: subprocess.Popen, tree: Path) -> dict[str, dict]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"error: cleaning by {tree} failed: {err.strip().splitlines()[-1]}")
    return {r["path"]: r for r in map(json.loads, out.splitlines())}


def judge(labels: Path, before: str, tmp: Path) -> tuple[dict, dict]:
    """Per-frame outcomes ``{path: {outcome, marks?}}`` by ``before`` and by this tree."""
    old = packages_at(before, tmp / "before")
    procs = {"before": (_start(old, labels, "before"), old), "after": (_start(REPO, labels, "after"), REPO)}
    return _collect(*procs["before"]), _collect(*procs["after"])


def _rule(outcome: str) -> str:
    return outcome if outcome in ("kept", *RULES) else "other"


def tally(rows: list[dict], outcomes: dict) -> dict:
    """Counts per outcome (kept, each rule, other), frames, and kept frames with marks found."""
    c = Counter(_rule(outcomes[r["path"]]["outcome"]) for r in rows)
    marks = sum(bool(outcomes[r["path"]].get("marks")) for r in rows)
    return {"frames": len(rows), **{k: c[k] for k in ("kept", *RULES, "other")}, "marked": marks}


def _pair(b: int, a: int) -> str:
    return f"{b} -> {a}" if b != a else str(a)


def class_table(groups: dict, before: dict, after: dict) -> list[str]:
    """Markdown rows: per class, frames per rule before -> after; marks found on kept frames (after)."""
    lines = [
        "| class | frames | kept | not_ultrasound | too_small | colour | no_tissue | other | kept with marks found |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cls, rows in groups.items():
        b, a = tally(rows, before), tally(rows, after)
        cells = [_pair(b[k], a[k]) for k in ("kept", *RULES, "other")]
        lines.append(f"| {cls} | {a['frames']} | {' | '.join(cells)} | {a['marked']} |")
    return lines


def source_table(by_source: dict, before: dict, after: dict) -> list[str]:
    """Markdown rows: genuine B-mode per source, false rejections before -> after and false flags."""
    lines = [
        "| source | genuine B-mode | rejected (before -> after) | by rule (after) | marks found (after) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for src, rows in sorted(by_source.items()):
        b, a = tally(rows, before), tally(rows, after)
        rules = ", ".join(f"{k} {a[k]}" for k in (*RULES, "other") if a[k]) or "-"
        lines.append(f"| {src} | {a['frames']} | {_pair(b['frames'] - b['kept'], a['frames'] - a['kept'])} "
                     f"| {rules} | {a['marked']} |")  # fmt: skip
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ.get("SONODISTILL_REALDATA", "realdata")) / "labels.csv"
    ap.add_argument("--labels", default=str(default), help="CSV: path,source,class,notes")
    ap.add_argument("--before", default=BEFORE, help="the commit to compare with")
    ap.add_argument("--frames-out", help="also write each frame's outcomes (JSONL) here, to audit")
    ap.add_argument("--frames-in", help="tabulate a run saved with --frames-out instead of cleaning again")
    args = ap.parse_args()
    labels = Path(args.labels)
    if not labels.is_file():
        raise UserError(f"--labels {labels}: no such file (a CSV path,source,class,notes)")
    t0 = time.time()
    rows = list(csv.DictReader(labels.open()))
    if args.frames_in:
        saved = [json.loads(line) for line in Path(args.frames_in).read_text().splitlines()]
        before, after = ({r["path"]: r[k] for r in saved} for k in ("before", "after"))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            before, after = judge(labels, args.before, Path(tmp))
    if args.frames_out:
        with open(args.frames_out, "w") as fh:
            for r in rows:
                fh.write(json.dumps({**r, "before": before[r["path"]], "after": after[r["path"]]}) + "\n")
    hard = [r for r in rows if not r["notes"].startswith("ambiguous:")]
    groups: dict[str, list] = defaultdict(list)
    for r in hard:
        groups[r["class"]].append(r)
    groups = {c: groups[c] for c in CLASSES if groups[c]}
    groups["ambiguous (any class)"] = [r for r in rows if r["notes"].startswith("ambiguous:")]
    by_source: dict[str, list] = defaultdict(list)
    for r in hard:
        if r["class"] == "bmode":
            by_source[r["source"]].append(r)
    print("\n".join(class_table(groups, before, after)), end="\n\n")
    print("\n".join(source_table(by_source, before, after)), end="\n\n")
    summary = {c: {"before": tally(g, before), "after": tally(g, after)} for c, g in groups.items()}
    print(json.dumps({"bench": "real_rules", "frames": len(rows), "classes": summary,
                      "seconds": round(time.time() - t0, 1)}))  # fmt: skip


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
