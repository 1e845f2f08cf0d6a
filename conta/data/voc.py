"""A reader for datasets in PASCAL VOC layout (VOC 2012 itself, the synthetic default, folders).

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png          optional; index PNG, 0 = background, 255 = ignore
    root/ImageSets/Segmentation/<split>.txt  one id per line
    root/class_names.txt                     optional; foreground class names, one per line
    root/Annotations/<id>.xml                optional; VOC object annotations

Image-level tags come, in this order, from a tags file (JSON {id: [names]} or CSV `id,name;name`),
the masks, or the XML annotations. Class names come from the dataset, never a fixed 20.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from functools import cached_property
from pathlib import Path

import numpy as np

from conta.data.palette import IGNORE_INDEX
from conta.errors import DataError
from conta.io import image_file_size, load_label_png, load_rgb

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


class VOCLayoutDataset:
    """Ids, images, masks and image-level tags of one split of a VOC-layout dataset."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: list[str] | None = None,
        tags_file: str | Path | None = None,
        mask_dir: str = "SegmentationClass",
        list_dir: str = "ImageSets/Segmentation",
        need_images: bool = True,
    ) -> None:
        """`need_images=False` reads a split whose images are absent (scoring needs only masks)."""
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DataError(self.root, "dataset root not found (set data.root to the folder holding JPEGImages/)")
        self.class_names = list(class_names) if class_names else read_class_names(self.root)
        self.n_classes = len(self.class_names)
        self.mask_dir = self.root / mask_dir
        self.list_path = self.root / list_dir / f"{split}.txt"
        self.ids = read_id_list(self.list_path)
        self.tags_file = Path(tags_file) if tags_file else None
        if need_images:
            self._check_images_exist()

    def __len__(self) -> int:
        return len(self.ids)

    # -- files ------------------------------------------------------------------------------

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.mask_dir / f"{image_id}.png"

    @cached_property
    def has_masks(self) -> bool:
        return self.mask_dir.is_dir() and all(self.mask_path(i).is_file() for i in self.ids)

    def image(self, image_id: str) -> np.ndarray:
        """H x W x 3 uint8 RGB."""
        return load_rgb(self.image_path(image_id))

    def image_size(self, image_id: str) -> tuple[int, int] | None:
        """(H, W) from the image file's header (nothing decoded); None when the image is absent."""
        path = self.image_path(image_id)
        return image_file_size(path) if path.is_file() else None

    def mask(self, image_id: str, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """H x W uint8 label map, checked against the class range and the size of its image:
        `image_size` when given, else the image file's (unless the image is absent)."""
        path = self.mask_path(image_id)
        mask = load_label_png(path)
        if mask.ndim != 2:
            raise DataError(path, f"mask must be single-channel, got shape {mask.shape}")
        if image_size is None:
            image_size = self.image_size(image_id)
        if image_size is not None and mask.shape != tuple(image_size):
            raise DataError(path, f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                            f"{image_size[1]}x{image_size[0]}")
        bad = (mask > self.n_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            raise DataError(path, f"mask value {int(mask[bad].max())} outside 0..{self.n_classes} "
                            f"(and {IGNORE_INDEX} = ignore)")
        return mask

    def image_and_mask(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        image = self.image(image_id)
        return image, self.mask(image_id, image.shape[:2])

    # -- tags -------------------------------------------------------------------------------

    def tags(self, image_id: str) -> np.ndarray:
        """Multi-hot float32 vector over the foreground classes."""
        return self._tag_table[image_id]

    def tag_matrix(self) -> np.ndarray:
        """N x C multi-hot matrix in the order of `ids`."""
        return np.stack([self._tag_table[i] for i in self.ids]) if self.ids else np.zeros((0, self.n_classes), np.float32)

    @cached_property
    def _tag_table(self) -> dict[str, np.ndarray]:
        if self.tags_file is not None:
            table = read_tags_file(self.tags_file, self.class_names)
            missing = [i for i in self.ids if i not in table]
            if missing:
                raise DataError(self.tags_file, f"no tags for {len(missing)} ids of split {self.split} (first: {missing[0]})")
            return {i: table[i] for i in self.ids}
        if self.has_masks:
            return {i: self._tags_from_mask(i) for i in self.ids}
        if (self.root / "Annotations").is_dir():
            return {i: self._tags_from_xml(i) for i in self.ids}
        raise DataError(self.root, f"no image-level tags for split {self.split}: provide a tags file "
                        f"(data.tags_file), masks in {self.mask_dir.name}/ or Annotations/*.xml")

    def _tags_from_mask(self, image_id: str) -> np.ndarray:
        mask = self.mask(image_id)
        values = np.unique(mask)
        vec = np.zeros(self.n_classes, np.float32)
        fg = values[(values > 0) & (values != IGNORE_INDEX)]
        vec[fg.astype(np.int64) - 1] = 1.0
        return vec

    def _tags_from_xml(self, image_id: str) -> np.ndarray:
        path = self.root / "Annotations" / f"{image_id}.xml"
        try:
            tree = ET.parse(path)
        except FileNotFoundError:
            raise DataError(path, "annotation file not found") from None
        except ET.ParseError as exc:
            raise DataError(path, f"malformed XML ({exc})") from None
        vec = np.zeros(self.n_classes, np.float32)
        index = {name: k for k, name in enumerate(self.class_names)}
        for node in tree.getroot().iterfind("object/name"):  # not <part><name> ("head", "hand")
            k = index.get((node.text or "").strip())
            if k is not None:
                vec[k] = 1.0
        return vec

    def _check_images_exist(self) -> None:
        folder = self.root / "JPEGImages"
        if not folder.is_dir():
            raise DataError(folder, "image folder not found")
        missing = [i for i in self.ids if not self.image_path(i).is_file()]
        if missing:
            raise DataError(self.list_path, f"names {len(missing)} images missing from JPEGImages/ "
                            f"(first: {missing[0]}.jpg)")


def read_id_list(path: Path) -> list[str]:
    """Image ids of a split list; the deeplab-pytorch two-path form `/JPEGImages/x.jpg ...` is accepted.

    An id listed twice is an error: its image would count twice in every score and be trained on twice.
    """
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(path, "split list not found") from None
    ids = []
    for line in lines:
        line = line.strip()
        if line:
            ids.append(Path(line.split()[0]).stem)
    if not ids:
        raise DataError(path, "split list is empty")
    if len(set(ids)) < len(ids):
        seen: set[str] = set()
        twice = list(dict.fromkeys(i for i in ids if i in seen or seen.add(i)))
        raise DataError(path, f"lists {len(twice)} ids more than once (first: {', '.join(twice[:3])}); "
                        "each image must be listed once, or it counts twice in the scores")
    return ids


def read_class_names(root: Path) -> list[str]:
    path = root / "class_names.txt"
    if path.is_file():
        names = [n.strip() for n in path.read_text().splitlines() if n.strip()]
        if names and names[0] == "background":
            names = names[1:]
        if not names:
            raise DataError(path, "no class names")
        return names
    if (root / "Annotations").is_dir() or root.name == "VOC2012":
        return list(VOC_CLASSES)
    raise DataError(path, "class names not found: write one foreground class name per line")


def read_tags_file(path: Path, class_names: list[str]) -> dict[str, np.ndarray]:
    """Tags from JSON {id: [names]} or CSV rows `id,name;name` (a header row `id,tags` is allowed)."""
    index = {name: k for k, name in enumerate(class_names)}
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(path, "tags file not found") from None
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise DataError(path, "expected a JSON object {image_id: [class names]}")
        rows = [(str(k), v) for k, v in raw.items()]
    else:
        rows = []
        for n, row in enumerate(csv.reader(text.splitlines()), 1):
            if not row or (n == 1 and row[0].strip().lower() in ("id", "image", "image_id")):
                continue
            if len(row) < 2:
                raise DataError(path, f"line {n}: expected `id,name;name`")
            rows.append((row[0].strip(), [t for t in row[1].replace("|", ";").split(";") if t.strip()]))
    table = {}
    for image_id, names in rows:
        if not isinstance(names, list):
            raise DataError(path, f"tags of {image_id} must be a list of class names")
        vec = np.zeros(len(class_names), np.float32)
        for name in names:
            name = str(name).strip()
            if name not in index:
                raise DataError(path, f"unknown class {name!r} for image {image_id} (known: {', '.join(class_names)})")
            vec[index[name]] = 1.0
        table[image_id] = vec
    return table
