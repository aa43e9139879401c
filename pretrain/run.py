"""Distil a DINOv3 teacher into a timm CNN on ultrasound shards (paper 002).

    accelerate launch pretrain/run.py --config pretrain/configs/dinov3_vitb16_resnet50.yaml \\
        data.shards=/data/us-shards out=runs/r50 [key=value ...]
    python pretrain/run.py --config pretrain/configs/tiny.yaml data.shards=... out=...
    torchrun --nproc_per_node 8 pretrain/run.py --config ...

Exit codes: 0 finished; 2 bad input / diverged (one ``error:`` line); 75 stopped by SIGTERM/SIGUSR1
after writing a checkpoint (run the same command again: ``resume=auto`` continues exactly).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sonodistill.cli_parser import CommandParser
from sonodistill.config_cli import add_config_args, config_from_flags, parse_command_line
from sonodistill.errors import cli_main


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    from pretrain.config import PretrainConfig
    from pretrain.trainer import check_values, train

    parser = CommandParser(
        prog="pretrain/run.py",
        description=__doc__.splitlines()[0],
        epilog="Exit codes: 0 done, 2 bad input or diverged, 75 preempted after a checkpoint.",
    )
    parser.add_argument("--out", help="output folder (key: out), as in every other command")
    add_config_args(parser, PretrainConfig)
    args = parse_command_line(parser, argv)
    cfg = config_from_flags(PretrainConfig, args, ("out",), check=check_values)
    return train(cfg).exit_code


if __name__ == "__main__":
    sys.exit(main())
