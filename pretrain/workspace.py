"""Scratch tensors an augmentation pipeline reuses from batch to batch.

On the CPU a fresh tensor's memory comes back from the kernel page by page: every 4 KiB page
faults and is zeroed on first touch, so a new 16 MB map (a batch of 64 images at 256 px) costs
more than the arithmetic done on it (measured ~2.5x a chain of four elementwise ops on this
machine). The per-batch maps of the ultrasound effects — radius, depth, scan-area mask, noise
fields — are therefore written into buffers kept here, valid until the next batch.
"""

from __future__ import annotations

import torch


class Workspace:
    """Named buffers, reallocated only when the shape, dtype or device asked for changes."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape != torch.Size(shape) or buf.dtype != dtype or buf.device != torch.device(device):
            buf = torch.empty(shape, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf


def scratch(
    workspace: Workspace | None, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """A workspace buffer, or None (allocate as usual) when there is no workspace."""
    return None if workspace is None else workspace.get(name, shape, dtype, device)
