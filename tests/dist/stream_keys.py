"""torchrun worker: each rank streams one epoch (2 DataLoader workers) and records the keys it saw."""
import json
import sys
from pathlib import Path

import torch.distributed as dist

from shards.stream import ShardLoader

if __name__ == "__main__":
    shards, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    loader = ShardLoader(shards, batch_size=3, mode="epoch", num_workers=2, with_meta=True, drop_last=False, seed=9)
    keys = [k for batch in loader for k in batch["key"]]
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps({"world_size": dist.get_world_size(), "keys": keys}))
    dist.barrier()
    dist.destroy_process_group()
