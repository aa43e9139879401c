"""``python -m pretrain.teacher init-tiny --out DIR [--preset tiny|vitb16]``: write a random-initialised DINOv3 teacher.

``--preset vitb16`` has the real ViT-B/16 dimensions (768 wide, 12 blocks, 12 heads, 4 registers),
so ``bench/pretrain_step.py --config paper`` measures the paper recipe's step without the weights.

The teacher itself (loading, token selection, targets) is :class:`sonodistill.dinov3.DINOv3`, in
the core because downstream uses DINOv3 as a reference encoder too. The folder written here loads
through the same ``from_pretrained`` path as ``facebook/dinov3-vitb16-pretrain-lvd1689m``, so
tests and the demo need no download.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sonodistill.cli_parser import CommandParser
from sonodistill.dinov3 import TEACHER_PRESETS, init_tiny
from sonodistill.errors import cli_main

log = logging.getLogger(__name__)


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    parser = CommandParser(prog="python -m pretrain.teacher", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init-tiny", help="write a random-initialised DINOv3 ViT (save_pretrained)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="tiny", choices=sorted(TEACHER_PRESETS), help="tiny (default) or vitb16")
    p.add_argument("--image-size", type=int, default=None, help="default: the preset's (tiny 64, vitb16 224)")
    args = parser.parse_args(argv)
    size = {} if args.image_size is None else {"image_size": args.image_size}
    out = init_tiny(args.out, seed=args.seed, preset=args.preset, **size)
    log.info(f"random DINOv3 teacher ({args.preset}) written to {out}")


if __name__ == "__main__":
    main()
