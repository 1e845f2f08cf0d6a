"""Decode an image and its mask completely and say what is wrong with them (`conta data check`).

Torch-free (NumPy, Pillow, conta.io), so the check can decode in forked processes
(`conta.engine.parallel.run_parallel(uses_torch=False)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from conta.data.palette import IGNORE_INDEX
from conta.io import LABEL_MODES


@dataclass(frozen=True)
class FilePair:
    """An image and its mask (either may be absent) to decode; `n_classes` bounds the mask values."""

    image: Path | None
    mask: Path | None
    n_classes: int


Finding = tuple[str, str, str]  # (kind, path, detail)


def inspect_pair(pair: FilePair) -> list[Finding]:
    """Decode both files of `pair` completely; what is wrong with them (top level: runs in a pool)."""
    found: list[Finding] = []
    size = None
    if pair.image is not None:
        try:
            size = _decode(pair.image).shape[:2]
        except OSError as exc:
            found.append(("unreadable image", str(pair.image), _reason(exc, pair.image)))
    if pair.mask is None:
        return found
    try:
        mask = _decode(pair.mask, LABEL_MODES)
    except _WrongMode as exc:
        return [*found, ("mask is not a palette or grayscale PNG", str(pair.mask), f"mode {exc}")]
    except OSError as exc:
        return [*found, ("unreadable mask", str(pair.mask), _reason(exc, pair.mask))]
    bad = (mask > pair.n_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        found.append((f"mask value outside 0..{pair.n_classes} (and {IGNORE_INDEX} = ignore)", str(pair.mask),
                      f"value {int(mask[bad].max())}"))
    if mask.shape[:2] != tuple(size or mask.shape[:2]):
        found.append(("mask size differs from its image", str(pair.mask),
                      f"{mask.shape[1]}x{mask.shape[0]}, image {size[1]}x{size[0]}"))
    return found


class _WrongMode(Exception):
    """A file that decodes but is not a label image; the message is its mode."""


def _decode(path: Path, modes: tuple[str, ...] | None = None) -> np.ndarray:
    """Every pixel of an image file, decoded as the pipeline will decode it (`modes`: the ones allowed)."""
    with Image.open(path) as img:
        if modes is not None and img.mode not in modes:
            raise _WrongMode(img.mode)
        img.load()
        return np.asarray(img)


def _reason(exc: OSError, path: Path) -> str:
    """PIL's message without the path it repeats; 'empty file' for zero bytes."""
    if path.stat().st_size == 0:
        return "empty file"
    return str(exc).replace(f" '{path}'", "").replace(str(path), "").strip() or type(exc).__name__
