"""Build the dataset a config names (generating the synthetic default, or COCO's masks, on first use)."""

from __future__ import annotations

from pathlib import Path

from conta.config import DataConfig
from conta.data.coco import Coco14Dataset, prepare_coco
from conta.data.folder import FolderDataset
from conta.data.voc import VOCLayoutDataset
from conta.data.voc12 import VOC12Dataset
from conta.engine.distributed import barrier, is_main
from conta.errors import ConfigError


def ensure_dataset(data: DataConfig, log=print) -> Path:
    """Return the dataset root; for `synthetic`, generate it there if it is missing or stale; for
    `coco14`, make the semantic masks of the configured splits that are not cached yet.

    Under torchrun rank 0 does the writing while the other ranks wait at a barrier, so every
    rank calls this (it is collective) and none reads a half-made dataset.
    """
    root = Path(data.root)
    if is_main():
        if data.dataset == "synthetic":
            from conta.data.synthetic import generate

            summary = generate(data.synth, root)
            if getattr(summary, "generated", True):
                log(f"synthetic dataset ready at {root}")
        elif data.dataset == "coco14":
            prepare_coco(data, log=log)
    barrier()
    return root


def build_dataset(data: DataConfig, split: str, need_images: bool = True) -> VOCLayoutDataset:
    """The reader for one split of the configured dataset; `need_images=False` for scoring
    alone, which reads only the masks."""
    tags = data.tags_file if data.tags_file else None
    if data.dataset == "synthetic":
        return VOCLayoutDataset(data.root, split, tags_file=tags, need_images=need_images)
    if data.dataset == "voc12":
        return VOC12Dataset(data.root, split, tags_file=tags, cache_dir=data.cache_dir, need_images=need_images)
    if data.dataset == "coco14":
        return Coco14Dataset(data.root, split, cache_dir=data.cache_dir, need_images=need_images)
    if data.dataset == "folder":
        return FolderDataset(data.root, split, class_names=data.class_names, tags_file=tags,
                             need_images=need_images)
    raise ConfigError(f"data.dataset: {data.dataset!r} is not supported")
