"""How this process was launched: device choice, precision, and the world-size sanity check.

``accelerate launch --multi_gpu --num_processes N`` on a host where accelerate finds no GPU starts
N processes that each believe they are alone (SPEC section 4): N silent, independent trainings
writing to one folder. Every launcher (torchrun, accelerate, srun with our sbatch) exports
WORLD_SIZE, so a WORLD_SIZE the accelerator does not see is a launch error, caught before any work.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch

from shards.errors import UserError


# Set by `accelerate launch` (every launcher mode), never by torchrun or srun.
ACCELERATE_LAUNCH_VARS = ("ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_DYNAMO_BACKEND",
                          "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")


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
            "On CPU use `torchrun --nproc_per_node N pretrain/run.py ...` or "
            "`accelerate launch --config_file launch/accelerate/cpu.yaml pretrain/run.py ...`; "
            "on GPUs check CUDA_VISIBLE_DEVICES / nvidia-smi"
        )


def resolve_mixed_precision(choice: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, else no; explicit choices are checked."""
    on_gpu = device.type == "cuda"
    if choice == "auto":
        return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    if choice == "fp16" and not on_gpu:
        raise UserError("train.mixed_precision: fp16 needs a CUDA GPU; use 'no' or 'auto' on CPU")
    if choice == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise UserError("train.mixed_precision: this GPU has no bf16 support; use 'fp16' or 'auto'")
    return choice


def teacher_dtype(device: torch.device) -> torch.dtype | None:
    """The frozen teacher runs in bf16 on GPUs (fp16 where bf16 is missing), float32 on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
