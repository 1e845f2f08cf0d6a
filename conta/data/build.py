"""The dataset a config names: its registry entry, its reader, and the files made before first use.

A dataset is one file that defines its reader and registers it under its `data.dataset` name
with `@register_dataset(name)` on a function that builds the reader for one split
(docs/design.md, "Adding a dataset"). The entry can also name what `conta data check` covers,
what must be made before any reader opens (the synthetic generator, COCO's masks) and an
optional package it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conta.config import DataConfig
from conta.data.voc import VOCLayoutDataset
from conta.engine.distributed import barrier, is_main
from conta.registry import DATASETS

Log = Callable[[str], None]
BuildFn = Callable[[DataConfig, str, bool], VOCLayoutDataset]
"""(data section, split, need_images) -> the split's reader; need_images=False: masks alone (scoring)."""


@dataclass(frozen=True)
class DatasetEntry:
    build: BuildFn
    prepare: Callable[[DataConfig, Log], None] | None = None
    """Make the dataset's derived files (rank 0 only, before any reader); None: nothing to make."""
    default_splits: Callable[[DataConfig], list[str]] | None = None
    """The splits `conta data check` covers when none are named; None: the config's splits."""
    requires: Callable[[], str] | None = None
    """The optional package the dataset needs: returns its name, raises a ContaError saying how to
    install it when it is missing."""
    masks_on_demand: bool = False
    """Masks are derived files (COCO's), made by `prepare` or the first stage, not shipped."""


def register_dataset(name: str, **options: object) -> Callable[[BuildFn], BuildFn]:
    """Decorator on a build function: the dataset `name` of data.dataset, with DatasetEntry's options."""

    def add(build: BuildFn) -> BuildFn:
        DATASETS.register(name)(DatasetEntry(build, **options))  # type: ignore[arg-type]
        return build

    return add


def dataset_entry(data: DataConfig) -> DatasetEntry:
    return DATASETS.get(data.dataset)


def ensure_dataset(data: DataConfig, log: Log = print) -> Path:
    """Return the dataset root, after its entry's `prepare` (synthetic: generate it if missing or
    stale; coco14: the semantic masks of the configured splits not cached yet).

    Under torchrun rank 0 does the writing while the other ranks wait at a barrier, so every
    rank calls this (it is collective) and none reads a half-made dataset.
    """
    entry = dataset_entry(data)
    if is_main() and entry.prepare is not None:
        entry.prepare(data, log)
    barrier()
    return Path(data.root)


def build_dataset(data: DataConfig, split: str, need_images: bool = True) -> VOCLayoutDataset:
    """The reader for one split of the configured dataset; `need_images=False` for scoring
    alone, which reads only the masks."""
    return dataset_entry(data).build(data, split, need_images)
