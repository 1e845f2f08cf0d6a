"""Per-image CPU work (dense CRF, the CPU random walk) spread over processes.

Each job is independent and single-threaded at heart, so one process per core with one torch
thread each beats torch's intra-op threads. Processes that run torch are spawned, not forked: the
parent may hold CUDA state or torch threads from earlier stages, which a fork copies in a broken
state.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

import torch

from conta.progress import progress

Job = TypeVar("Job")
Result = TypeVar("Result")


def run_parallel(fn: Callable[[Job], Result], jobs: list[Job], workers: int, desc: str,
                 setup: Callable[..., None] | None = None, setup_args: tuple = (),
                 uses_torch: bool = True) -> list[Result]:
    """`fn(job)` for every job: here for one worker, else in a pool of single-threaded processes;
    returns the results in the order of `jobs`.

    `setup(*setup_args)` runs once per process before its jobs: the place to load what all jobs
    share, e.g. a model. It runs in this process first, so that a bad input (a corrupt model file)
    fails here with its own one-line error instead of as a traceback in every worker and a broken pool. `fn`, `setup` and the jobs must be
    picklable (top-level functions, plain data). The first failing job's error is raised and the
    queued jobs are dropped.

    `uses_torch=False` is for jobs that never touch torch (decoding files): on Linux their
    processes are forked, which is safe without torch work in them and starts them at once,
    where a spawned process first re-imports the main module, and torch with it (seconds each).
    """
    if not jobs:
        return []
    if setup is not None:
        setup(*setup_args)
    if workers <= 1 or len(jobs) == 1:
        return [fn(job) for job in progress(jobs, desc=desc)]
    method = "spawn" if uses_torch or not sys.platform.startswith("linux") else "fork"
    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context(method),
                               initializer=_start_process, initargs=(setup, setup_args, uses_torch))
    try:
        done = pool.map(fn, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
        return list(progress(done, total=len(jobs), desc=desc))
    finally:
        pool.shutdown(cancel_futures=True)


def _start_process(setup: Callable[..., None] | None, setup_args: tuple, uses_torch: bool) -> None:
    if uses_torch:
        torch.set_num_threads(1)
    if setup is not None:
        setup(*setup_args)
