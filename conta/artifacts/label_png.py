"""Label maps handed between stages as PNGs, `<folder>/<id>.png`: seed labels (`ir_label/`),
pseudo-masks (`pseudo_mask/`) and predictions (`seg/pred/<split>/`, `seg/pred/<split>_crf/`).

One uint8 value per pixel: 0 = background, 1..C = classes, 255 = ignore, saved with the VOC
palette so that image viewers show colours while the stored values stay the labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conta.data.palette import IGNORE_INDEX, voc_palette
from conta.errors import DataError
from conta.io import load_label_png, save_label_png


def label_path(folder: Path, image_id: str) -> Path:
    """Where image `image_id`'s labels live in a folder of label PNGs."""
    return Path(folder) / f"{image_id}.png"


def write_label(path: Path, label: np.ndarray) -> None:
    """Store an H x W label map (atomically) as a VOC-palette PNG."""
    save_label_png(path, label, voc_palette())


def read_label(path: Path, size: tuple[int, int] | None = None, n_classes: int | None = None) -> np.ndarray:
    """An H x W label map; with `size`, checked to be the image's size, and with `n_classes`,
    every value checked to be 0..n_classes or 255 (what a network may be trained on)."""
    label = load_label_png(path)
    if size is not None and label.shape != tuple(size):
        raise DataError(path, f"label is {label.shape[1]}x{label.shape[0]} but its image is {size[1]}x{size[0]}")
    if n_classes is not None:
        bad = (label > n_classes) & (label != IGNORE_INDEX)
        if bad.any():
            raise DataError(path, f"label value {int(label[bad].max())} outside 0..{n_classes} (255 = ignore)")
        return label.astype(np.uint8)
    return label
