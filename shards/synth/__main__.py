"""``python -m shards.synth``: write a synthetic ultrasound dataset in one of five layouts.

    python -m shards.synth --layout corpus --n 600 --seed 0 --out /tmp/corpus
    python -m shards.synth --layout busi --n 780 --out /tmp/busi --truth /tmp/busi.jsonl
    python -m shards.synth --layout ddti --n 637 --out /tmp/ddti --workers 4
    python -m shards.synth --layout dicom --n 14 --out /tmp/dicom   # DICOM: syntaxes, cines, regions
    python -m shards.synth --layout video --n 4 --out /tmp/video    # mp4 (H.264) and avi (MJPEG) clips

Same --seed, same bytes (for any --workers). Bad arguments give one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shards.synth.busi import write_busi
from shards.synth.corpus import write_corpus
from shards.synth.ddti import write_ddti
from shards.synth.presets import PRESETS
from sonodistill.cli_parser import CommandParser
from sonodistill.errors import UserError, cli_main

LAYOUTS = ("corpus", "busi", "ddti", "dicom", "video")
CORPUS_ONLY = ("sources", "doppler_fraction", "junk_fraction", "duplicate_fraction", "overlays")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except where the help already says it (corpus-only options default to None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m shards.synth",
        description=__doc__.split("\n\n")[0],
        formatter_class=_Formatter,
    )
    p.add_argument("--layout", required=True, help=f"one of {', '.join(LAYOUTS)}")
    p.add_argument(
        "--n", type=int, required=True, help="number of images (corpus: files, junk and duplicates included)"
    )
    p.add_argument("--out", required=True, help="output directory (created; must be empty if it exists)")
    p.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    p.add_argument("--truth", default=None, help="write a JSONL record per image here (must be outside --out)")
    p.add_argument("--workers", type=int, default=1, help="processes; output is identical for any number")
    g = p.add_argument_group("corpus layout only")
    g.add_argument("--sources", default=None, help=f"comma-separated presets (default all: {','.join(PRESETS)})")
    g.add_argument("--doppler-fraction", type=float, default=None, help="colour-Doppler RGB frames (default 0.03)")
    g.add_argument("--junk-fraction", type=float, default=None, help="non-ultrasound frames (default 0.02)")
    g.add_argument("--duplicate-fraction", type=float, default=None, help="exact/near duplicates (default 0.03)")
    g.add_argument(
        "--overlays",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="burned-in text, depth scale, calipers (default on)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _write(a: argparse.Namespace, common: dict) -> list[dict]:
    if a.layout == "corpus":
        opts = {k: getattr(a, k) for k in CORPUS_ONLY if getattr(a, k) is not None}
        if "sources" in opts:
            opts["sources"] = [s.strip() for s in opts["sources"].split(",") if s.strip()]
        return write_corpus(a.out, a.n, **common, **opts)
    given = [k for k in CORPUS_ONLY if getattr(a, k) is not None]
    if given:
        raise UserError(f"--{given[0].replace('_', '-')}: only for --layout corpus")
    if a.layout in ("dicom", "video"):
        from shards.synth.media import write_dicom, write_video

        return (write_dicom if a.layout == "dicom" else write_video)(a.out, a.n, **common)
    return (write_busi if a.layout == "busi" else write_ddti)(a.out, a.n, **common)


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.layout not in LAYOUTS:
        raise UserError(f"--layout: expected one of {', '.join(LAYOUTS)}, got {a.layout!r}")
    common = dict(seed=a.seed, truth=a.truth, workers=a.workers, progress=not a.quiet)
    try:
        records = _write(a, common)
    except KeyboardInterrupt:
        print(
            f"interrupted: the files already in {a.out} are complete; rerun into an empty --out",
            file=sys.stderr,
        )
        sys.exit(130)
    kinds: dict[str, int] = {}
    for r in records:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    what = "images, with their masks," if a.layout in ("busi", "ddti") else "files"
    print(f"wrote {len(records)} {what} to {a.out} ({summary})" + (f"; truth in {a.truth}" if a.truth else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
