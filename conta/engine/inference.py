"""Sharded, pipelined per-image inference: load in workers, compute here, write in the background.

Every inference stage (CAMs, segmentation test, IRN, random walk) has the same shape: for each
image without an output, read it, run a network, write a file. Here the three steps overlap:

    DataLoader workers    decode this rank's images (ids[rank::world], split again among workers)
    this thread           runs the model on the device and copies the result to host memory
    a writer thread       compresses and writes atomically, behind a small bounded queue

so the accelerator waits neither on JPEG decoding nor on disk. Outputs that exist are skipped,
so an interrupted stage resumes image by image.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from conta.engine.distributed import rank, shard, world_size
from conta.progress import progress

WriteJob = Callable[[], None]


def pending(ids: Sequence[str], done: Callable[[str], bool]) -> list[str]:
    """This rank's share of `ids` whose output is not written yet.

    Sharding comes first, so the split stays fixed while other ranks are already writing.
    """
    return [i for i in shard(ids) if not done(i)]


def describe_todo(todo: Sequence[str], ids: Sequence[str]) -> str:
    """'3 to make, 5 already done' for this rank's share of `ids`, the share named under torchrun."""
    text = f"{len(todo)} to make, {len(shard(ids)) - len(todo)} already done"
    return f"{text} in process {rank()} of {world_size()}" if world_size() > 1 else text


class BackgroundWriter:
    """Runs write jobs on one thread behind a queue of `depth` jobs.

    The producer waits only when the disk falls `depth` outputs behind, which also bounds the
    host memory held by finished results (zlib and file I/O release the GIL, so writing overlaps
    with the next forward pass). The first failing job's error is raised by the next `submit` or
    on leaving the `with` block; later jobs are dropped.
    """

    def __init__(self, depth: int = 4) -> None:
        self._jobs: queue.Queue[WriteJob | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="conta-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # handed to the producer thread
                    self._error = exc

    def submit(self, job: WriteJob) -> None:
        self._raise()
        self._jobs.put(job)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._jobs.put(None)  # after every queued job: pending writes finish first
        self._thread.join()
        if exc_type is None:
            self._raise()


class _Loaded(Dataset):
    def __init__(self, ids: Sequence[str], load: Callable[[str], Any]) -> None:
        self.ids, self.load = ids, load

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[str, Any]:
        return self.ids[index], self.load(self.ids[index])


def _as_loaded(item: tuple[str, Any]) -> tuple[str, Any]:
    return item  # the default collate would turn numpy arrays into tensors


def run_inference(ids: Sequence[str], load: Callable[[str], Any], infer: Callable[[str, Any], WriteJob],
                  workers: int, desc: str, device: torch.device = torch.device("cpu")) -> float:
    """For each id: `load(id)` in one of `workers` DataLoader processes (0 = here), `infer(id,
    loaded)` here, and the write job it returns on the writer thread. Returns the seconds taken.
    Loaded tensors come in pinned memory when `device` is a GPU (asynchronous copies).

    `load` must not touch the GPU and must be picklable where workers are spawned (a top-level
    function or a bound method of a plain object).
    """
    started = time.perf_counter()
    loader = DataLoader(_Loaded(ids, load), batch_size=None, num_workers=workers,
                        collate_fn=_as_loaded, pin_memory=device.type == "cuda")
    with BackgroundWriter() as writer:
        for image_id, loaded in progress(loader, total=len(ids), desc=desc):
            writer.submit(infer(image_id, loaded))
    return time.perf_counter() - started
