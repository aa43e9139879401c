"""Record the numbers a refactor must not change, and compare two records.

Runs, on CPU and fixed seeds: the demo (``launch/demo.sh``: shards, a 300-step tiny pretraining
run, the downstream sweep with its KD rows, the t-SNE) and every KD recipe's paper reproduction
(``python -m downstream.kd train``) at its tiny config on the demo's synthetic BUSI (DDTI for
``seg_unet``, its teacher the demo's distilled encoder). An
``--out`` holding a finished demo resumes it (every demo step is resumable). It keeps every number
that is a function of the code and the seeds (test/validation metrics, per-epoch losses, learning
rates, shard counts, the SHA-256 of the pretrained student's weights) and drops wall-clock figures.

    python bench/fingerprint.py --out /tmp/fp_before          # ~12 min on 2 cores
    python bench/fingerprint.py --out /tmp/fp_after --compare /tmp/fp_before/fingerprint.json

Last line: JSON (``{"numbers": N, "differences": D}`` with ``--compare``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Keys whose values depend on the machine's speed, paths or wall clock, not on the computation.
VOLATILE = (
    "time",
    "seconds",
    "per_s",
    "_ms",
    "fps",
    "mtime",
    "latency",
    "path",
    "data",
    "config",
    "cache",
    "out",
    "efficiency",
    "spec",
    "shards",
)
RECIPES = ("vit_mobilenet", "nanoray", "hdkd", "csa_moe", "seg_unet")
PYTHON = sys.executable


def _volatile(key: str) -> bool:
    return any(v in key for v in VOLATILE)


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """Leaves of a JSON tree as ``a.b.0.c -> value``, volatile keys dropped."""
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not _volatile(str(k)):
                out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = obj
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(cmd: list[str], log: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "PY": PYTHON,
    }
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)


def record(out: Path, py: str) -> dict[str, object]:
    demo = out / "demo"
    log = out / "log.txt"
    run(["bash", "launch/demo.sh", str(demo)], log)
    fp: dict[str, object] = {}
    man = json.loads((demo / "shards" / "manifest.json").read_text())
    fp.update(flatten({k: man[k] for k in ("num_samples", "sources", "rejected")}, "shards."))
    ckpts = sorted((demo / "pretrain" / "checkpoints").glob("step_*"))
    fp["pretrain.student_sha256"] = sha256(ckpts[-1] / "student.safetensors")
    fp["pretrain.step"] = ckpts[-1].name
    for line in (demo / "downstream" / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        key = row["key"].rsplit("|", 1)[0]
        m = row["metrics"]
        kept = ("na", "val", "test", "best_epoch", "teacher", "scratch", "n_train", "n_val", "n_test")
        fp.update(flatten({k: m[k] for k in kept if k in m}, f"sweep[{key}]."))
    fp.update(flatten(json.loads((demo / "downstream" / "embed" / "embed.json").read_text()), "embed."))
    kd = {}
    for name in RECIPES:
        dest = out / "kd" / name
        seg = name == "seg_unet"
        run(
            [
                py,
                "-m",
                "downstream.kd",
                "train",
                "--recipe",
                name,
                "--data",
                str(demo / ("ddti" if seg else "busi")),
                "--out",
                str(dest),
                "--config",
                f"downstream/kd/configs/tiny_{name}.yaml",
                *([f"teacher.encoder={demo / 'export'}"] if seg else []),
            ],
            log,
        )
        kd[name] = dest
    for name, folder in kd.items():
        m = json.loads((folder / "metrics.json").read_text())
        keep = {k: m[k] for k in ("models", "history", "sweep", "splits") if k in m}
        fp.update(flatten(keep, f"kd.{name}."))
    return fp


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def compare(before: dict, after: dict) -> list[str]:
    diffs = []
    for k in sorted(set(before) | set(after)):
        if k not in after:
            diffs.append(f"missing after: {k} = {before[k]!r}")
        elif k not in before:
            diffs.append(f"new after: {k} = {after[k]!r}")
        elif not same(before[k], after[k]):
            diffs.append(f"changed: {k}: {before[k]!r} -> {after[k]!r}")
    return diffs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--compare", type=Path, default=None, help="a fingerprint.json to compare against")
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args()
    global PYTHON
    PYTHON = args.python
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fingerprint.json"
    if path.is_file():
        fp = json.loads(path.read_text())
    else:
        fp = record(args.out, args.python)
        path.write_text(json.dumps(fp, indent=1, sort_keys=True) + "\n")
    summary: dict[str, object] = {"numbers": len(fp), "fingerprint": str(path)}
    if args.compare is not None:
        diffs = compare(json.loads(args.compare.read_text()), fp)
        for d in diffs:
            print(d)
        summary["differences"] = len(diffs)
    print(json.dumps(summary))


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
