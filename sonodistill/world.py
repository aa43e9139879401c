"""How this process was launched: CPU or accelerator, the world-size check, and the Accelerator.

``accelerate launch --multi_gpu --num_processes N`` on a host where accelerate finds no GPU starts
N processes that each believe they are alone: N silent, independent trainings writing to one
folder. Every launcher (torchrun, accelerate, srun with our sbatch) exports WORLD_SIZE, so a
WORLD_SIZE the accelerator does not see is a launch error, caught before any work. Every stage
that trains (pretraining, downstream fine-tuning, KD recipes) builds its Accelerator here.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import torch

from sonodistill.errors import UserError
from sonodistill.precision import resolve_mixed_precision

# Set by `accelerate launch` (every launcher mode), never by torchrun or srun.
RANK_WAIT_S = 3600  # how long a rank waits for the others at a collective before the run fails

ACCELERATE_LAUNCH_VARS = (
    "ACCELERATE_USE_CPU",
    "ACCELERATE_MIXED_PRECISION",
    "ACCELERATE_DYNAMO_BACKEND",
    "ACCELERATE_USE_DEEPSPEED",
    "ACCELERATE_USE_FSDP",
)


def use_cpu(env: Mapping[str, str] = os.environ) -> bool:
    """Whether to force accelerate onto the CPU.

    Under ``accelerate launch`` the launcher's own choice stands (``--cpu`` / ``use_cpu`` is
    honoured by accelerate itself; ``--multi_gpu`` without a visible GPU is then refused by
    :func:`check_world_size` rather than silently turned into slow CPU training). Under torchrun,
    srun or plain python, a host without a GPU runs on CPU, with a gloo group when WORLD_SIZE > 1.
    """
    if any(k in env for k in ACCELERATE_LAUNCH_VARS):
        return False
    return not (torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()))


def check_world_size(num_processes: int, distributed_type: str, env: Mapping[str, str] = os.environ) -> None:
    """Raise if the launcher started more (or fewer) processes than the accelerator sees."""
    raw = env.get("WORLD_SIZE")
    if raw is None:
        return
    try:
        world = int(raw)
    except ValueError:
        raise UserError(f"WORLD_SIZE: expected an integer, got {raw!r}") from None
    if world != num_processes:
        local = env.get("LOCAL_WORLD_SIZE", "?")
        raise UserError(
            f"launch: the launcher started WORLD_SIZE={world} processes (LOCAL_WORLD_SIZE={local}) but accelerate "
            f"sees {num_processes} ({distributed_type}): each process would train its own copy. No GPU visible? "
            "On CPU use `torchrun --nproc_per_node N <script> ...` or "
            "`accelerate launch --config_file launch/accelerate/cpu.yaml <script> ...`; "
            "on GPUs check CUDA_VISIBLE_DEVICES / nvidia-smi"
        )


def launch_state():
    """accelerate's process state for this launch, after the world-size check."""
    from accelerate import PartialState

    # a long timeout: ranks wait while the first alone writes and times an edge column (ONNX, INT8,
    # the test split on the CPU: minutes), past NCCL's default 10 minutes
    state = PartialState(cpu=use_cpu(), timeout=timedelta(seconds=RANK_WAIT_S))
    check_world_size(state.num_processes, str(state.distributed_type))
    return state


def make_accelerator(mixed_precision: str = "auto", key: str = "mixed_precision", **kwargs: Any):
    """An Accelerator for this process: launch checked, ``mixed_precision`` resolved (bf16 on
    CUDA under ``auto``), batches moved to the device without blocking. ``kwargs`` go to
    ``Accelerator`` (e.g. ``gradient_accumulation_steps``)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    state = launch_state()
    kwargs.setdefault("dataloader_config", DataLoaderConfiguration(non_blocking=True))
    acc = Accelerator(
        cpu=use_cpu(), mixed_precision=resolve_mixed_precision(mixed_precision, state.device, key), **kwargs
    )
    if acc.num_processes > 1:
        atexit.register(end_process_group)
    return acc


def end_process_group() -> None:
    """Destroy the process group before the interpreter exits: left to the interpreter's teardown, a
    rank can abort there (``terminate called without an active exception``, seen with gloo)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
