"""Device selection, DataLoader workers per device, and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from conta.engine.distributed import launched_world_size, local_rank, local_world_size
from conta.errors import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else the CPU; an explicit CUDA request without a GPU is an error.

    `cuda` (and `auto` with a GPU) means cuda:LOCAL_RANK, so each process torchrun starts on a node
    gets its own GPU; a fixed `cuda:N` is refused when several processes run.

    Also flushes subnormal floats to zero on the CPU: the activations of randomly initialised or
    weight-decayed networks underflow into subnormals, which made CPU convolutions ~10x slower.
    """
    torch.set_flush_denormal(True)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:  # "gpu", "cuda:x": a config mistake, not a traceback
        raise ConfigError(f"run.device: {spec!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {spec!r} requested but no CUDA device is available (use cpu or auto)")
    if device.type == "cuda" and device.index is None:
        if local_rank() >= torch.cuda.device_count():
            raise ConfigError(f"process {local_rank()} of this node needs cuda:{local_rank()}, but there are only "
                              f"{torch.cuda.device_count()} GPUs: start at most one process per GPU")
        return torch.device("cuda", local_rank())
    if device.type == "cuda" and launched_world_size() > 1:
        raise ConfigError(f"run.device: {spec!r} pins every process to one GPU; with torchrun use cuda or auto "
                          "(each process then takes cuda:LOCAL_RANK)")
    return device


def cores_per_process(processes: int | None = None) -> int:
    """This process's share of the node's CPU cores, at least 1: the cores divided among
    `processes` (default: the processes torchrun started on this node)."""
    return max(1, (os.cpu_count() or 1) // (processes or local_world_size()))


def cpu_workers(setting: int) -> int:
    """Worker processes for a CPU stage's `workers` setting: 0 means this process's share of the cores."""
    return setting or cores_per_process()


MAX_LOADER_WORKERS = 8  # per GPU: enough to decode and augment VOC-sized JPEGs ahead of the device


def loader_workers(setting: int | str, device: torch.device) -> int:
    """DataLoader workers for data.num_workers on `device`.

    `auto` is 0 on the CPU, where the network and the workers would share the same cores and a
    worker measured slower than none (docs/benchmarks.md); on a GPU it is one less than this
    process's share of the node's cores, between 1 and 8.
    """
    if setting != "auto":
        return int(setting)
    if device.type == "cpu":
        return 0
    return max(1, min(MAX_LOADER_WORKERS, cores_per_process() - 1))


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
