"""``python -m downstream.kd train --recipe R --data DIR --out DIR [--config FILE] [key=value ...]`` and
``python -m downstream.kd summary [--json] [--recipe R]``.

``train`` runs the paper's reproduction of recipe R (:mod:`downstream.kd.papers`) with its config
resolved from the paper preset (``downstream/kd/configs/R.yaml``), then each ``--config`` file,
then the ``key=value`` overrides; ``train --recipe R --help`` lists R's keys, ``--show-config``
prints the resolved config."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from downstream.fit import check_selects
from downstream.tasks import VAL_NAMES
from sonodistill.cli_parser import CommandParser
from sonodistill.config import save_config
from sonodistill.config_cli import add_config_args, config_from_args, parse_command_line
from sonodistill.errors import UserError, cli_main
from sonodistill.logs import is_main_rank
from sonodistill.outdir import MARK, claimed, owner
from sonodistill.stop import StopRequest

log = logging.getLogger(__name__)


def _chosen_recipe(argv: Sequence[str]) -> str | None:
    """The ``--recipe`` value of a ``train`` command line, read before the full parse (``--help`` lists its keys)."""
    pre = CommandParser(add_help=False)
    pre.add_argument("--recipe", default=None)
    known, _ = pre.parse_known_args(list(argv))
    return known.recipe


def parser(recipe: str | None = None) -> argparse.ArgumentParser:
    from downstream.kd.recipes.base import preset
    from downstream.kd.registry import RECIPES, reproduction

    names = ", ".join(RECIPES)
    p = CommandParser(prog="python -m downstream.kd", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run a recipe end to end: teacher, scratch baseline, distilled student")
    t.add_argument("--recipe", required=True, help=f"one of {names}")
    t.add_argument(
        "--data", default=None, help="dataset: BUSI folder, image/mask folders (seg_unet), class folders, hf:ID, ub:DIR"
    )
    t.add_argument("--out", default=None, help="output folder (metrics.json, report.md, plots, checkpoints)")
    if recipe in RECIPES:
        add_config_args(t, reproduction(recipe).config, base=[preset(recipe)])
    else:
        add_config_args(t)
        t.epilog = f"config keys: add --recipe NAME to --help to list that recipe's keys ({names})"
    s = sub.add_parser("summary", help="params / GMACs / MB of every recipe model next to the papers' figures")
    s.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    s.add_argument("--recipe", default=None)
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_command_line(parser(_chosen_recipe(argv)), argv)
    from downstream.kd.registry import recipe, reproduction

    if args.command == "summary":
        from downstream.kd.summary import all_entries, measure, table

        if args.recipe:
            recipe(args.recipe)
        rows = [measure(e) for e in all_entries(args.recipe)]
        try:
            print(json.dumps(rows, indent=2) if args.json else table(rows), flush=True)
        except BrokenPipeError:  # `summary | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    from downstream.data.read import detect_layout
    from downstream.kd.config import check_recipe
    from downstream.kd.data import prepare
    from downstream.kd.recipes.base import check_teacher_keys, preset

    r = recipe(args.recipe)
    check_teacher_keys(r, args.overrides)
    paper = reproduction(r.name)

    def check_values(cfg: Any) -> None:  # also before --show-config prints
        check_recipe(cfg)
        check_selects(cfg, VAL_NAMES[r.kind], r.kind)
        paper.check(cfg, files=False)

    cfg = config_from_args(paper.config, args, base=[preset(r.name)], check=check_values)
    check_values(cfg)
    paper.check(cfg)
    if not args.data or not args.out:
        raise UserError("train: give the data (--data DIR) and the output folder (--out DIR)")
    detect_layout(args.data)  # a missing data folder refused before --out is made
    out = Path(args.out)
    stage = f"downstream.kd train --recipe {r.name}"  # one recipe per folder: their files share names
    if owner(out) == "downstream.kd train" and earlier_run_of(out, r.name):  # marked before marks named recipes
        stage = "downstream.kd train"
    # a stop ends the running stage (or the split's duplicate search); finished stages are reused
    main_rank = is_main_rank()
    with (
        claimed(out, stage, write=main_rank, only_own=True, first=("splits.json",), follow=not main_rank),
        StopRequest(),
    ):
        out.mkdir(parents=True, exist_ok=True)  # every rank: the first may not have made it yet
        data = prepare(args.data, cfg, out, need_masks=r.needs_masks, recipe=r.name, kind=r.kind)
        metrics = paper.reproduce(cfg, data, out)
        if is_main_rank():  # with the results it describes: a failed or stopped rerun keeps the old pair
            save_config(cfg, out / "config.yaml")
    log.info(f"{r.name}: wrote {out / 'report.md'} and metrics.json ({len(metrics['models'])} models)")
    return 0


def earlier_run_of(out: Path, recipe: str) -> bool:
    """``out`` holds a run of ``recipe`` from before marks named the recipe: its ``metrics.json`` names
    it, or the folder bears the old mark and no ``metrics.json`` names another. A folder that merely
    holds a ``report.md`` is a user's."""
    try:
        named = json.loads((out / "metrics.json").read_text(encoding="utf-8")).get("recipe")
    except (OSError, ValueError, AttributeError):
        named = None
    return named == recipe or (named is None and (out / MARK).is_file())


if __name__ == "__main__":
    sys.exit(main())
