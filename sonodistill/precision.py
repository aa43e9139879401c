"""Mixed precision: one vocabulary (``mixed_precision: auto | bf16 | fp16 | no``) for every stage."""

from __future__ import annotations

from typing import Literal

import torch

from sonodistill.errors import UserError

MixedPrecision = Literal["auto", "bf16", "fp16", "no"]


def native_bf16() -> bool:
    """bf16 in hardware (Ampere and later): torch's default also counts the slow emulation on V100/T4."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_mixed_precision(choice: str, device: torch.device, key: str = "mixed_precision") -> str:
    """``auto`` -> bf16 on GPUs that support it, else no; explicit choices are checked."""
    on_gpu = device.type == "cuda"
    if choice == "auto":
        return "bf16" if on_gpu and native_bf16() else "no"
    if choice == "fp16" and not on_gpu:
        raise UserError(f"{key}: fp16 needs a CUDA GPU; use 'no' or 'auto' on CPU")
    if choice == "bf16" and on_gpu and not native_bf16():
        raise UserError(f"{key}: this GPU has no bf16 support; use 'fp16' or 'auto'")
    return choice


def frozen_dtype(device: torch.device) -> torch.dtype | None:
    """A frozen model (the teacher) runs in bf16 on GPUs that have it, else in float32 (DINOv3's large
    activations can overflow fp16)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if native_bf16() else None
