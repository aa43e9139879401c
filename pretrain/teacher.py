"""``python -m pretrain.teacher init-tiny --out DIR``: write a tiny random-initialised DINOv3 teacher.

The teacher itself (loading, token selection, targets) is :class:`sonodistill.dinov3.DINOv3`, in
the core because downstream uses DINOv3 as a reference encoder too. The folder written here loads
through the same ``from_pretrained`` path as ``facebook/dinov3-vitb16-pretrain-lvd1689m``, so
tests and the demo need no download.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from sonodistill.dinov3 import TINY_CONFIG, init_tiny
from sonodistill.errors import cli_main

log = logging.getLogger(__name__)


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pretrain.teacher", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init-tiny", help="write a tiny random-initialised DINOv3 ViT (save_pretrained)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=TINY_CONFIG["image_size"])
    args = parser.parse_args(argv)
    out = init_tiny(args.out, seed=args.seed, image_size=args.image_size)
    log.info(f"tiny DINOv3 teacher written to {out}")


if __name__ == "__main__":
    main()
