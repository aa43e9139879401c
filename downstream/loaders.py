"""The one DataLoader builder of the downstream stage (tasks, KD recipes, feature extraction).

Shuffle order and worker seeds come from a generator seeded by the run (never from torch's global
RNG, which the batched augmentations draw from, so changing ``num_workers`` or adding an
evaluation pass does not change training; ``num_workers`` is capped at the cores this process may use,
:mod:`sonodistill.workers`); training drops the last partial batch; workers
persist across epochs; memory is pinned on GPUs. Workers only decode: augmentation runs batched
on the device.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from sonodistill.stop import ignore_stop_signals, worker_context
from sonodistill.workers import loader_workers


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int = 0, seed: int = 0) -> DataLoader:
    """Shuffled full batches when ``train``, else every sample in order."""
    g = torch.Generator()
    g.manual_seed(seed)
    workers = loader_workers(workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        num_workers=workers,
        generator=g,
        pin_memory=torch.cuda.is_available(),
        drop_last=train and len(dataset) > batch_size,  # type: ignore[arg-type]
        persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals,  # a signal to the process group stops the run, not a worker
        multiprocessing_context=worker_context() if workers > 0 else None,
    )


def keep_last(loader: DataLoader) -> DataLoader:
    """``loader`` with its last, short batch kept: for a training split that fills fewer full
    batches than there are processes (each process takes whole batches: with the short one
    dropped, some would train no step at all)."""
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=isinstance(loader.sampler, RandomSampler),
        num_workers=loader.num_workers,
        generator=loader.generator,
        pin_memory=loader.pin_memory,
        drop_last=False,
        persistent_workers=loader.persistent_workers,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
    )
