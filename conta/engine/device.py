"""Device selection and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from conta.errors import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else the CPU; an explicit CUDA request without a GPU is an error.

    Also flushes subnormal floats to zero on the CPU: the activations of randomly initialised or
    weight-decayed networks underflow into subnormals, which made CPU convolutions ~10x slower.
    """
    torch.set_flush_denormal(True)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:  # "gpu", "cuda:x": a config mistake, not a traceback
        raise ConfigError(f"run.device: {spec!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {spec!r} requested but no CUDA device is available (use cpu or auto)")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
