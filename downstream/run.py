"""``python -m downstream.run``: evaluate one encoder on one task by linear probe or fine-tuning.

Example::

    python -m downstream.run --task busi-seg --data data/BUSI --encoder runs/export \\
        --mode linear --fraction 0.1 --seed 0 --out runs/busi-seg-lin train.epochs=30
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from typing import get_args

from downstream.config import Mode, RunConfig
from sonodistill.cli_parser import CommandParser
from sonodistill.config_cli import add_config_args, config_from_flags, parse_command_line
from sonodistill.errors import cli_main
from sonodistill.logs import is_main_rank
from sonodistill.outdir import claimed
from sonodistill.stop import StopRequest


def parse(argv: Sequence[str] | None = None) -> RunConfig:
    p = CommandParser(prog="python -m downstream.run", description=__doc__.splitlines()[0])
    p.add_argument("--task", help="busi-seg, busi-cls, ddti-seg, or generic seg / cls")
    p.add_argument("--data", help="dataset: BUSI folder, image/mask folders, class folders, hf:ID or a saved dataset")
    p.add_argument("--encoder", help="rand | rand:NAME | timm:NAME | PATH | hf-hub:ID | dinov3:PATH_OR_ID")
    p.add_argument("--mode", choices=get_args(Mode))
    p.add_argument("--fraction", type=float, help="label fraction of the training split (nested per seed)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="output folder")
    add_config_args(p, RunConfig)
    args = parse_command_line(p, argv)
    flags = ("task", "data", "encoder", "mode", "fraction", "seed", "out")
    return config_from_flags(RunConfig, args, flags, check=check_values)


def check_values(cfg: RunConfig) -> None:
    """Values no run trains with, one line naming the key (also before ``--show-config`` prints)."""
    from downstream.config import TASK_KIND
    from downstream.fit import check_selects, check_stages
    from downstream.tasks import VAL_NAMES

    check_stages(cfg)
    if cfg.task in TASK_KIND:  # an unknown task is named by the run
        check_selects(cfg, VAL_NAMES[TASK_KIND[cfg.task]], TASK_KIND[cfg.task])


@cli_main
def main(argv: Sequence[str] | None = None) -> dict:
    from downstream.encoders import check_spec
    from downstream.runner import run

    cfg = parse(argv)
    check_spec(cfg.encoder)  # a typo leaves no folder behind
    check_values(cfg)
    main_rank = is_main_rank()
    owned = claimed(cfg.out, "downstream.run", write=main_rank, only_own=True, follow=not main_rank)
    with owned if cfg.out else nullcontext(), StopRequest():
        metrics = run(cfg)  # a stop signal ends the run with exit 75 (nothing half-written is kept)
    test = metrics["test"]
    keys = ("dice", "iou") if "dice" in test else ("accuracy", "macro_f1", "auc")
    summary = {k: test[k] for k in keys}
    if is_main_rank():  # one result line, however many processes ran the cell
        print(json.dumps({"out": cfg.out, "n_train": metrics["n_train"], "test": summary}))
    return metrics


if __name__ == "__main__":
    main()
