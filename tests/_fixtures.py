"""Writers for small, deterministic on-disk datasets that tests share (exposed through conftest.py).

`make_voc_dataset` writes a VOC-layout dataset that `conta.data.voc.VOCLayoutDataset` reads:

    root/JPEGImages/<id>.jpg                  RGB JPEG (lossy: compare pixels with a tolerance)
    root/SegmentationClass/<id>.png           VOC-palette PNG: 0 = background, k = classes[k-1],
                                              255 = a one-pixel "void" ring around every object
    root/ImageSets/Segmentation/<split>.txt   one id per line
    root/class_names.txt                      foreground class names, one per line

and returns a `VocFixture` holding the exact arrays it wrote, so tests can compare against them
without re-deriving the geometry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from conta.data.palette import IGNORE_INDEX, voc_palette
from conta.io import save_label_png, save_rgb


@dataclass
class VocFixture:
    """What `make_voc_dataset` wrote.

    root:        the dataset root
    ids:         all image ids, in order ("img_000", "img_001", ...)
    class_names: foreground class names (label value k is class_names[k - 1])
    splits:      split name -> ids listed in ImageSets/Segmentation/<split>.txt
    images:      id -> H x W x 3 uint8 RGB array as it was *before* JPEG encoding
    masks:       id -> H x W uint8 label map exactly as stored in the PNG
    tags:        id -> sorted list of foreground class names present in the mask
    """

    root: Path
    ids: list[str]
    class_names: list[str]
    splits: dict[str, list[str]]
    images: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)

    def tag_vector(self, image_id: str) -> np.ndarray:
        """The expected multi-hot float32 vector over `class_names` for `image_id`."""
        vec = np.zeros(len(self.class_names), np.float32)
        for name in self.tags[image_id]:
            vec[self.class_names.index(name)] = 1.0
        return vec


def synthetic_sample(index: int, size: tuple[int, int], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The (image, mask) pair number `index`: deterministic, no RNG.

    Image `index` holds class `index % n_classes + 1` as a rectangle in its top-left part and, when
    `index` is odd and there are at least two classes, the next class in its bottom-right part.
    Each object is surrounded by a one-pixel ring of 255 (inside the image). Each class has its own
    flat colour on a dark-grey background, so the JPEG stays close to the stored array.
    """
    h, w = size
    if h < 12 or w < 12:
        raise ValueError("make_voc_dataset needs images of at least 12 x 12 pixels")
    mask = np.zeros((h, w), np.uint8)
    image = np.full((h, w, 3), 40, np.uint8)
    first = index % n_classes + 1
    boxes = [(first, 2 + index % 2, 2, h // 2, w // 2)]  # (label, top, left, bottom, right)
    if index % 2 == 1 and n_classes >= 2:
        second = first % n_classes + 1
        boxes.append((second, h // 2 + 2, w // 2 + 2, h - 2, w - 2))
    for label, top, left, bottom, right in boxes:
        mask[top - 1 : bottom + 1, left - 1 : right + 1] = IGNORE_INDEX
        mask[top:bottom, left:right] = label
        image[top:bottom, left:right] = _colour(label)
    return image, mask


def _colour(label: int) -> tuple[int, int, int]:
    return ((60 * label + 100) % 256, (110 * label + 30) % 256, (170 * label + 200) % 256)


def make_voc_dataset(
    root: str | Path,
    n: int = 4,
    size: tuple[int, int] = (24, 32),
    classes: Sequence[str] = ("cat", "dog", "person"),
    splits: Mapping[str, Sequence[int | str]] | None = None,
    masks: bool = True,
    class_names_file: bool = True,
) -> VocFixture:
    """Write a VOC-layout dataset of `n` deterministic images of `size` = (height, width) under `root`.

    classes:          foreground class names (written to class_names.txt when `class_names_file`)
    splits:           split name -> the images it lists, as indices into the ids or as id strings
                      (strings are written as given, so a list can name a missing image);
                      default {"train": all ids, "val": the last half}
    masks:            also write SegmentationClass/<id>.png (palette PNGs, 255 rings)

    The content depends only on the arguments (see `synthetic_sample`), so two calls with the same
    arguments write identical files. Returns a `VocFixture` with the arrays written.
    """
    root = Path(root)
    classes = list(classes)
    ids = [f"img_{i:03d}" for i in range(n)]
    if splits is None:
        splits = {"train": list(range(n)), "val": list(range(n // 2, n))}
    resolved = {name: [ids[m] if isinstance(m, int) else m for m in members] for name, members in splits.items()}
    fixture = VocFixture(root=root, ids=ids, class_names=classes, splits=resolved)
    for i, image_id in enumerate(ids):
        image, mask = synthetic_sample(i, size, len(classes))
        save_rgb(root / "JPEGImages" / f"{image_id}.jpg", image, quality=100)
        if masks:
            save_label_png(root / "SegmentationClass" / f"{image_id}.png", mask, voc_palette())
        fixture.images[image_id] = image
        fixture.masks[image_id] = mask
        present = sorted(int(v) for v in np.unique(mask) if 0 < v != IGNORE_INDEX)
        fixture.tags[image_id] = [classes[v - 1] for v in present]
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for name, members in resolved.items():
        (lists / f"{name}.txt").write_text("".join(f"{m}\n" for m in members))
    if class_names_file:
        (root / "class_names.txt").write_text("".join(f"{c}\n" for c in classes))
    return fixture


def write_voc_xml(path: str | Path, objects: Sequence[str], parts: Mapping[str, Sequence[str]] | None = None,
                  size: tuple[int, int] = (24, 32)) -> Path:
    """Write a VOC `Annotations/<id>.xml`: one <object> per name in `objects`; `parts` maps an object
    name to the names of its <part> children (VOC person layout: "head", "hand", "foot")."""
    path = Path(path)
    parts = parts or {}
    h, w = size
    body = [f"<annotation><folder>VOC2012</folder><filename>{escape(path.stem)}.jpg</filename>",
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>1</segmented>"]
    for name in objects:
        body.append(f"<object><name>{escape(name)}</name><pose>Unspecified</pose><truncated>0</truncated>"
                    f"<difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{w}</xmax>"
                    f"<ymax>{h}</ymax></bndbox>")
        for part in parts.get(name, ()):
            body.append(f"<part><name>{escape(part)}</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                        f"<xmax>2</xmax><ymax>2</ymax></bndbox></part>")
        body.append("</object>")
    body.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(body) + "\n")
    return path
