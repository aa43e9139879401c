"""torchrun worker: a tiny distillation run on every rank, then this rank's weights to disk.

    torchrun --nproc_per_node 2 tests/dist/pretrain_worker.py SHARDS TEACHER OUT [key=value ...]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (for dist.tiny_pretrain)

from dist.tiny_pretrain import tiny_overrides  # noqa: E402
from pretrain.config import PretrainConfig  # noqa: E402
from pretrain.trainer import train  # noqa: E402
from sonodistill.config import load_config  # noqa: E402

if __name__ == "__main__":
    shards, teacher, out, *extra = sys.argv[1:]
    cfg = load_config(PretrainConfig, None, tiny_overrides(shards, teacher, out) + extra)
    result = train(cfg)
    params = {k: v for k, v in result.student.named_parameters()}
    torch.save(params, Path(out) / f"params_rank{os.environ['RANK']}.pt")
