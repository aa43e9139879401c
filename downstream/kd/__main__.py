"""``python -m downstream.kd train --recipe R --data DIR --out DIR [--config FILE] [key=value ...]`` and
``python -m downstream.kd summary [--json] [--recipe R]``.

``train`` resolves the recipe's config from its paper preset (``downstream/kd/configs/R.yaml``),
then each ``--config`` file, then the ``key=value`` overrides."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sonodistill.config_cli import add_config_args, config_from_args
from sonodistill.errors import UserError, cli_main

log = logging.getLogger(__name__)


def _recipe(name: str):
    from downstream.kd.recipes import RECIPES

    if name not in RECIPES:
        raise UserError(f"--recipe: unknown recipe '{name}'; valid: {', '.join(RECIPES)}")
    return RECIPES[name]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m downstream.kd", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run a recipe end to end: teacher, scratch baseline, distilled student")
    t.add_argument("--recipe", required=True, help="vit_mobilenet, nanoray, hdkd, csa_moe or seg_unet")
    t.add_argument("--data", required=True, help="dataset folder (BUSI layout, class folders) or hf:ID")
    t.add_argument("--out", required=True, help="output folder (metrics.json, report.md, plots, checkpoints)")
    add_config_args(t)
    s = sub.add_parser("summary", help="params / GMACs / MB of every recipe model next to the papers' figures")
    s.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    s.add_argument("--recipe", default=None)
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "summary":
        from downstream.kd.summary import all_entries, measure, table

        if args.recipe:
            _recipe(args.recipe)
        rows = [measure(e) for e in all_entries(args.recipe)]
        print(json.dumps(rows, indent=2) if args.json else table(rows))
        return 0
    from downstream.kd.recipes.base import check_teacher_keys, preset

    recipe = _recipe(args.recipe)
    check_teacher_keys(recipe, args.overrides)
    cfg = config_from_args(recipe.Config, args, base=[preset(recipe.NAME)])
    metrics = recipe.run(cfg, args.data, Path(args.out))
    log.info(f"{args.recipe}: wrote {Path(args.out) / 'report.md'} and metrics.json ({len(metrics['models'])} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
