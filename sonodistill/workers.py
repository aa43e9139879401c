"""How many loader worker processes a process may start: never more than the cores it may use.

A 2-core machine asked for 4 workers per process runs slower and PyTorch warns on every loader;
a node running several ranks shares its cores between them, unless each rank is bound to cores of
its own (SLURM's ``--cpus-per-task`` with task binding, a container's cpuset). Every stage's ``num_workers`` goes
through :func:`loader_workers` before a loader is built.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it, else the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_cores() -> int:
    return os.cpu_count() or 1


def processes_per_node() -> int:
    """Processes of a distributed launch sharing this node's cores (1 when not distributed)."""
    for var in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def loader_workers(requested: int) -> int:
    """``requested`` workers capped at this process's share of the node's cores (0 stays 0): the
    cores it is bound to, or, free to run on every core, an equal share of them per process."""
    if requested <= 0:
        return 0
    cores, ranks = available_cores(), processes_per_node()
    # bound apart: srun's tasks each get their own CPUs; torchrun's ranks inherit one set and share it
    own = cores * ranks <= machine_cores() and "TORCHELASTIC_RUN_ID" not in os.environ
    return max(1, min(requested, cores if own else cores // ranks))
