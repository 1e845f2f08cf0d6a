"""Figures for people, drawn with Pillow alone: heatmap and label-map overlays, legends, captioned
panels and grids of panels. Every function takes and returns H x W x 3 uint8 RGB arrays, so CAM
figures, mask overlays and the run report compose them freely and save them with `conta.io.save_rgb`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from conta.data.palette import IGNORE_INDEX, voc_colormap
from conta.data.transforms import resize

WHITE = (255, 255, 255)
TEXT = (20, 20, 20)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) to RGB with the classic 'jet' ramp: blue, cyan, yellow, red."""
    v = np.clip(values.astype(np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], np.float32)  # where R, G and B peak on a 0..4 axis
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return np.rint(255 * rgb).astype(np.uint8)


def blend(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """(1 - alpha) * image + alpha * colour, with a scalar or per-pixel alpha."""
    a = np.asarray(alpha, np.float32)
    a = a[..., None] if a.ndim == 2 else a
    out = (1.0 - a) * image.astype(np.float32) + a * colour.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A [0, 1] heatmap (resized bilinearly to the image if needed) drawn over the image in jet."""
    if heat.shape != image.shape[:2]:
        heat = resize(heat.astype(np.float32), image.shape[:2], Image.BILINEAR)
    return blend(image, jet(heat), alpha)


def label_overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Label map in VOC colours over the image; background (0) leaves the image untouched."""
    alpha_map = np.where(label == 0, 0.0, alpha).astype(np.float32)
    return blend(image, voc_colormap()[label.astype(np.int64) % 256], alpha_map)


def label_legend(label: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """A legend of the labels present in `label` (0 = background, k = class_names[k-1], 255 = ignore)."""
    cmap = voc_colormap()
    names = ["background", *class_names]
    values = [int(v) for v in np.unique(label)]
    entries = [(names[v] if v < len(names) else ("ignore" if v == IGNORE_INDEX else str(v)), tuple(cmap[v]))
               for v in values]
    return legend(entries)


def legend(entries: Sequence[tuple[str, tuple[int, int, int]]], swatch: int = 12) -> np.ndarray:
    """Rows of a colour swatch and a name, on white."""
    font = ImageFont.load_default()
    row = swatch + 4
    width = swatch + 8 + max((_text_width(font, name) for name, _ in entries), default=0) + 4
    canvas = Image.new("RGB", (max(width, 1), max(row * len(entries), 1)), WHITE)
    draw = ImageDraw.Draw(canvas)
    for i, (name, colour) in enumerate(entries):
        y = i * row + 2
        draw.rectangle([2, y, 2 + swatch, y + swatch], fill=tuple(int(c) for c in colour), outline=TEXT)
        draw.text((swatch + 8, y), name, fill=TEXT, font=font)
    return np.asarray(canvas)


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """The image with `text` on a white strip above it."""
    font = ImageFont.load_default()
    strip = 16
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + strip), WHITE)
    canvas.paste(Image.fromarray(image), (0, strip))
    ImageDraw.Draw(canvas).text((2, 2), text, fill=TEXT, font=font)
    return np.asarray(canvas)


def grid(panels: Sequence[np.ndarray], cols: int | None = None, pad: int = 4) -> np.ndarray:
    """Panels (any sizes) laid out row by row on white, each cell as large as the largest panel."""
    if not panels:
        raise ValueError("grid needs at least one panel")
    cols = cols or len(panels)
    rows = -(-len(panels) // cols)
    cell_h = max(p.shape[0] for p in panels)
    cell_w = max(p.shape[1] for p in panels)
    out = np.full((rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        y = pad + (i // cols) * (cell_h + pad)
        x = pad + (i % cols) * (cell_w + pad)
        out[y : y + panel.shape[0], x : x + panel.shape[1]] = panel
    return out


def _text_width(font: ImageFont.ImageFont, text: str) -> int:
    left, _, right, _ = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return int(right - left)
