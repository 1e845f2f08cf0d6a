"""Build the dataset a config names (generating the synthetic default on first use)."""

from __future__ import annotations

from pathlib import Path

from conta.config import DataConfig
from conta.data.voc import VOCLayoutDataset
from conta.errors import ConfigError


def ensure_dataset(data: DataConfig, log=print) -> Path:
    """Return the dataset root; for `synthetic`, generate it there if it is missing or stale."""
    root = Path(data.root)
    if data.dataset == "synthetic":
        from conta.data.synthetic import generate

        summary = generate(data.synth, root)
        if getattr(summary, "generated", True):
            log(f"synthetic dataset ready at {root}")
    return root


def build_dataset(data: DataConfig, split: str) -> VOCLayoutDataset:
    """The reader for one split of the configured dataset."""
    if data.dataset in ("synthetic", "voc12", "folder"):
        tags = data.tags_file if data.tags_file else None
        return VOCLayoutDataset(data.root, split, tags_file=tags)
    raise ConfigError(f"data.dataset: {data.dataset!r} is not supported yet")
