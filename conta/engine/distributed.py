"""Data-parallel processes under torchrun, with a single-process fallback.

`torchrun --nproc_per_node=N -m conta ...` (or `conta ... --devices N`) starts one process per
device and describes the group in RANK, WORLD_SIZE and LOCAL_RANK. `init_distributed` joins that
group (NCCL on CUDA, Gloo on the CPU); without the variables nothing is initialised and every
helper here is the one-process identity: rank 0 of 1, barriers and reductions do nothing. Stage
code calls the helpers unconditionally, so one process and N processes run the same code path.

Training keeps the configured (effective) batch: each step's global batch is split into one
contiguous slice per rank (`RankSlices`), and DDP averages the gradients, so with per-sample mean
losses N processes take the steps one process takes. Inference shards images as ids[rank::world].
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from conta.errors import ConfigError

T = TypeVar("T")
Log = Callable[[str], None]

# How long a rank waits at a collective. Ranks wait while rank 0 alone prepares data (COCO's
# 120k semantic masks on first use) or writes the confounder set, far beyond NCCL's 10-minute
# default; a rank that fails exits instead, and torchrun then stops the others at once.
BARRIER_TIMEOUT = timedelta(hours=3)


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), before any group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's index among torchrun's processes (0 without torchrun), before any group exists."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its node, which picks its GPU (cuda:LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this node: they share its CPU cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The command behind `conta ... --devices N`: torchrun starting N processes on this node
    (--standalone: local rendezvous on a free port) that run the same conta command."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "conta", *without_devices(argv)]


def without_devices(argv: Sequence[str]) -> list[str]:
    """`argv` without `--devices N` / `--devices=N`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            out.append(arg)
    return out


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes (no-op for one process or when already joined)."""
    if launched_world_size() <= 1 or is_distributed():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 logs, writes checkpoints, metrics and reports."""
    return rank() == 0


def main_only(log: Log) -> Log:
    """`log` on rank 0, a no-op elsewhere, so N processes print one log."""
    return log if is_main() else _silent


def _silent(_: str) -> None:
    pass


def barrier() -> None:
    """Wait until every rank gets here (e.g. until all shards of an inference stage are written)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_sum(array: np.ndarray) -> np.ndarray:
    """Element-wise sum over ranks (confusion-matrix counts, loss sums), same dtype and shape."""
    if not is_distributed():
        return array
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over ranks of a tensor on this rank's device, as float64 (exact for
    counts); the tensor itself for one process."""
    if not is_distributed():
        return tensor
    total = tensor.detach().double()
    dist.all_reduce(total)
    return total / world_size()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of `items`: items[rank::world] (every item on exactly one rank)."""
    return list(items[rank()::world_size()])


def local_batch(batch: int, what: str) -> int:
    """Per-rank share of an effective batch; the config's batch is kept, so it must divide evenly."""
    world = world_size()
    if batch % world:
        raise ConfigError(f"{what} = {batch} is the effective batch over all processes and must be "
                          f"divisible by their number ({world})")
    return batch // world


class RankSlices(Sampler[int]):
    """This rank's slice of each global batch, so N processes train on what one process sees.

    Global batch s is order[s * batch : (s + 1) * batch]; rank r takes its r-th contiguous part
    of batch / world samples. `steps` selects the global batches (a resume starts mid-way).
    """

    def __init__(self, order: Sequence[int], batch: int, steps: range, what: str = "batch size") -> None:
        self.order, self.batch, self.steps = order, batch, steps
        self.local = local_batch(batch, what)
        self.offset = rank() * self.local

    def __iter__(self) -> Iterator[int]:
        for step in self.steps:
            start = step * self.batch + self.offset
            yield from (int(i) for i in self.order[start:start + self.local])

    def __len__(self) -> int:
        return len(self.steps) * self.local


# newer torch names DDP's per-forward buffer broadcast `forward_sync_buffers` and deprecates the old name
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DDP when several processes train, else itself.

    BN is frozen in every conta network, so there is no SyncBN and no buffer broadcast per step.
    """
    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None, **_NO_BUFFER_SYNC)


def grad_sync(model: torch.nn.Module, now: bool) -> contextlib.AbstractContextManager:
    """Around a forward + backward pass: all-reduce the gradients only when `now`, so micro-batches
    accumulated under DDP pay for one all-reduce (the last); a no-op outside DDP."""
    if now or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()
