"""The PASCAL VOC colour map, so label PNGs look right in any image viewer."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC colour map as an (n, 3) uint8 array: bits of the index spread over R, G and B."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    cmap[IGNORE_INDEX] = (224, 224, 192)  # VOC's void colour
    return cmap


def voc_palette() -> list[int]:
    """The colour map flattened for `PIL.Image.putpalette`."""
    return voc_colormap().reshape(-1).tolist()


def colorize(label: np.ndarray) -> np.ndarray:
    """An H x W label map as an H x W x 3 RGB image."""
    return voc_colormap()[label.astype(np.int64) % 256]
