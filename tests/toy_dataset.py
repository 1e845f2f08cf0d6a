"""A dataset in one file, the worked example of docs/design.md ("Adding a dataset").

Importing this module registers `data.dataset: toy_stripes`: every stage, `conta data check`
and the config's name check then know it. `prepare` writes the files on first use (rank 0,
before any reader opens them); `build` returns the reader of one split. Image i holds a patch of
horizontal stripes when i % 3 != 1 and of vertical stripes when i % 3 != 0, so every image has a
tag and both classes co-occur in some.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from conta.config import DataConfig
from conta.data.build import register_dataset
from conta.data.voc import VOCLayoutDataset
from conta.io import save_label_png, save_rgb, save_text

CLASSES = ["horizontal", "vertical"]
SIZE, IMAGES = 32, 8


def draw(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image `index` and its label map (0 background, 1 horizontal, 2 vertical)."""
    image = np.full((SIZE, SIZE, 3), 60, np.uint8)
    label = np.zeros((SIZE, SIZE), np.uint8)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    half = SIZE // 2
    if index % 3 != 1:
        patch = (rows < half) & (cols < half)
        image[patch & (rows % 4 < 2)] = (230, 200, 40)
        label[patch] = 1
    if index % 3 != 0:
        patch = (rows >= half) & (cols >= half)
        image[patch & (cols % 4 < 2)] = (40, 120, 230)
        label[patch] = 2
    return image, label


def prepare(data: DataConfig, log: Callable[[str], None]) -> None:
    root = Path(data.root)
    if (root / "ImageSets" / "Segmentation" / "train.txt").is_file():
        return
    ids = [f"toy_{i:03d}" for i in range(IMAGES)]
    for i, image_id in enumerate(ids):
        image, label = draw(i)
        save_rgb(root / "JPEGImages" / f"{image_id}.jpg", image)
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", label)
    save_text(root / "ImageSets" / "Segmentation" / "train.txt", "".join(f"{i}\n" for i in ids))
    log(f"toy_stripes: {IMAGES} images written to {root}")


@register_dataset("toy_stripes", prepare=prepare)
def build(data: DataConfig, split: str, need_images: bool) -> VOCLayoutDataset:
    return VOCLayoutDataset(data.root, split, class_names=CLASSES, need_images=need_images)
