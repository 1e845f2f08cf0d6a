"""What the stage benchmarks share: a config on fresh synthetic data, the process group, and
peak-memory readings that mean the same thing on every run.

Benchmarks run as `python bench/<name>.py` or under torchrun (`torchrun --nproc_per_node=N
bench/<name>.py`); rank 0 prints the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from conta.config import Config, load_config
from conta.engine.device import resolve_device
from conta.engine.distributed import barrier, init_distributed, is_main, teardown, world_size

REPO = Path(__file__).resolve().parent.parent


def add_config_args(parser: argparse.ArgumentParser, default_config: str) -> None:
    parser.add_argument("--config", default=str(REPO / default_config), help=f"YAML config (default: {default_config})")
    parser.add_argument("--images", type=int, default=64, help="synthetic images to generate and use")
    parser.add_argument("--keep", type=Path, help="write data and outputs here and keep them (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file (bench/gpu_check.py reads it)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. run.device=cuda run.amp=bf16 run.channels_last=true")


@contextmanager
def bench_run(args: argparse.Namespace) -> Iterator[tuple[Config, torch.device]]:
    """(config, device) on fresh synthetic data in a scratch folder, inside the process group
    torchrun describes (or one process); the folder is removed afterwards unless --keep.

    The scratch folder is named after torchrun's run id, which all ranks share (on several nodes,
    pass --keep with a folder on a shared file system).
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", str(os.getpid()))
    folder = args.keep or Path(tempfile.gettempdir()) / f"conta-bench-{run_id}"
    cfg = load_config(args.config, [
        *args.overrides, "data.dataset=synthetic", f"data.root={folder / 'data'}", f"data.synth.n_train={args.images}",
        "data.synth.n_val=0", "data.synth.n_val_deconfounded=0", "data.train_split=train",
        "data.infer_split=train", "data.val_splits=[]", f"run.out_dir={folder / 'runs'}", "run.name=bench"])
    device = resolve_device(cfg.run.device)
    init_distributed(device)
    try:
        yield cfg, device
        barrier()  # rank 0 removes the folder only when every rank is done with it
    finally:
        teardown()
        if args.keep is None and is_main():
            shutil.rmtree(folder, ignore_errors=True)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """torch.cuda.max_memory_allocated since the last reset on a GPU; on the CPU the process's
    peak resident set (getrusage), which covers its whole life, data generation included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def peak_memory(device: torch.device) -> str:
    where = "GPU (max_memory_allocated, per process)" if device.type == "cuda" else "RSS (getrusage peak of rank 0's process)"
    return f"{peak_gib(device):.2f} GiB {where}"


def write_json(path: Path | None, result: dict) -> None:
    """The figures as JSON when --json was given (rank 0 only)."""
    if path is not None and is_main():
        path.write_text(json.dumps(result, indent=2) + "\n")


def describe(cfg: Config, device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (f"torch {torch.__version__}, {name}, {world_size()} process(es), {torch.get_num_threads()} threads, "
            f"amp {cfg.run.amp}, channels_last {cfg.run.channels_last}, python {sys.version.split()[0]}")
