"""MS-COCO 2014 as a WSSS dataset: image-level tags and semantic masks made from instance annotations.

    data.root/
      train2014/COCO_train2014_<12 digits>.jpg    82,783 images
      val2014/COCO_val2014_<12 digits>.jpg        40,504 images
      annotations/instances_{train,val}2014.json  from annotations_trainval2014.zip

Splits are `train2014` and `val2014`; an image id is the file name without ".jpg". Classes are the
categories of the annotation file in increasing category id (80 for COCO: label 1..80, 0 is
background), so COCO's unused ids (12, 26, ...) leave no gaps. Tags are the categories of an image's
non-crowd annotations. Images without any (702 in train2014, 367 in val2014 have no annotation at
all) have no classification target and are dropped from every split, the usual WSSS protocol
(82,081 / 40,137 images in the common lists; crowd-only images are dropped too).

Semantic masks (deterministic): crowd regions (iscrowd=1) are set to 255 (ignore); then the non-crowd
instances are drawn largest first, so a smaller object lying on a larger one (a cup on a table)
keeps its label, and an instance inside a crowd region overwrites the ignore value; equal areas go
by annotation id. They are cached as palette PNGs under <cache>/coco14/masks_<split>/ on first use
(`conta data prepare`, or the first stage that runs), atomically and resumably. The per-split index
(ids, file names, tags) is cached as JSON and rebuilt, with the masks, when the annotation file changes.
pycocotools is imported only here, when an index or a mask has to be made.
"""

from __future__ import annotations

import contextlib
import functools
import io
import shutil
import warnings
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from conta.config import DataConfig
from conta.data.build import register_dataset
from conta.data.cache import dataset_cache_dir
from conta.data.palette import IGNORE_INDEX, voc_palette
from conta.data.voc import VOCLayoutDataset
from conta.errors import ContaError, DataError
from conta.io import load_json, save_json, save_label_png
from conta.progress import progress

SPLITS: tuple[str, ...] = ("train2014", "val2014")
INDEX_VERSION = 1


def require_pycocotools() -> Any:
    """The pycocotools COCO class, or a clear error naming the extra to install."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise ContaError('MS-COCO needs pycocotools: pip install "conta[coco]"') from None
    return COCO


@functools.lru_cache(maxsize=1)  # the train2014 annotations take gigabytes: keep one at a time
def load_coco(path: str, signature: tuple[int, int]) -> Any:
    """The parsed annotation file; `signature` (size, mtime) keys the cache, so an edited file is reread."""
    coco_class = require_pycocotools()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timing lines
            return coco_class(path)
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DataError(path, f"not a COCO instances annotation file ({type(exc).__name__}: {exc})") from None


def semantic_mask(coco: Any, image_id: int, label_of: dict[int, int]) -> np.ndarray:
    """H x W uint8 label map of one image by the module's rule (crowd 255, smaller over larger)."""
    info = coco.imgs[image_id]
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    anns = coco.imgToAnns.get(image_id, [])
    with warnings.catch_warnings():  # pycocotools' decoder warns about NumPy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        regions = [(coco.annToMask(a) > 0, a) for a in anns]
    for region, ann in regions:
        if ann.get("iscrowd", 0):
            mask[region] = IGNORE_INDEX
    instances = [(region, a) for region, a in regions if not a.get("iscrowd", 0)]
    for region, ann in sorted(instances, key=lambda item: (-int(item[0].sum()), item[1]["id"])):
        mask[region] = label_of[ann["category_id"]]
    return mask


def build_index(coco: Any) -> dict[str, Any]:
    """Classes in category-id order and, per image, [id, file name, COCO image id, tag indices]."""
    category_ids = sorted(coco.getCatIds())
    index_of = {c: k for k, c in enumerate(category_ids)}
    images = []
    for coco_id in sorted(coco.imgs):
        file_name = coco.imgs[coco_id]["file_name"]
        tags = {index_of[a["category_id"]] for a in coco.imgToAnns.get(coco_id, []) if not a.get("iscrowd", 0)}
        images.append([Path(file_name).stem, file_name, coco_id, sorted(tags)])
    return {"version": INDEX_VERSION, "classes": [coco.cats[c]["name"] for c in category_ids],
            "category_ids": category_ids, "images": images}


class Coco14Dataset(VOCLayoutDataset):
    """One COCO 2014 split with the interface of `VOCLayoutDataset` (whose mask and tag helpers it
    reuses); its ids, files and tags come from the annotation file instead of a VOC folder tree."""

    def __init__(self, root: str | Path, split: str, cache_dir: str | Path | None = None,
                 need_images: bool = True) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(self.root, "dataset root not found (set data.root to the folder holding "
                            "train2014/, val2014/ and annotations/)")
        if split not in SPLITS:
            raise DataError(self.root, f"unknown COCO split {split!r} (the splits are {', '.join(SPLITS)})")
        self.split = split
        self.image_dir = self.root / split
        self.annotation_path = self.root / "annotations" / f"instances_{split}.json"
        if not self.annotation_path.is_file():
            raise DataError(self.annotation_path, "annotation file not found (unzip "
                            "annotations_trainval2014.zip into data.root)")
        if need_images and not self.image_dir.is_dir():
            raise DataError(self.image_dir, f"image folder not found (unzip {split}.zip into data.root)")
        self.list_path = self.annotation_path
        self.tags_file = None
        cache = dataset_cache_dir(self.root, cache_dir) / "coco14"
        self.index_path = cache / f"index_{split}.json"
        self.mask_dir = cache / f"masks_{split}"
        index = self._index()
        self.class_names: list[str] = index["classes"]
        self.n_classes = len(self.class_names)
        self.category_ids: list[int] = index["category_ids"]
        kept = [row for row in index["images"] if row[3]]
        self.dropped = len(index["images"]) - len(kept)
        self._rows = {row[0]: row for row in kept}
        self.ids = list(self._rows)
        if need_images:
            self._check_images_exist()

    # -- index --------------------------------------------------------------------------------

    def _signature(self) -> tuple[int, int]:
        stat = self.annotation_path.stat()
        return stat.st_size, stat.st_mtime_ns

    def _coco(self) -> Any:
        return load_coco(str(self.annotation_path), self._signature())

    def _index(self) -> dict[str, Any]:
        if self.index_path.is_file():
            index = load_json(self.index_path)
            if index.get("version") == INDEX_VERSION and index.get("signature") == list(self._signature()):
                return index
        index = build_index(self._coco())
        index["signature"] = list(self._signature())
        shutil.rmtree(self.mask_dir, ignore_errors=True)  # made from other annotations
        save_json(self.index_path, index)
        return index

    # -- files --------------------------------------------------------------------------------

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self._rows[image_id][1]

    @property
    def has_masks(self) -> bool:
        return True  # made from the annotations on demand

    def mask(self, image_id: str, image_size: tuple[int, int] | None = None) -> np.ndarray:
        if not self.mask_path(image_id).is_file():
            self._write_masks([image_id])
        return super().mask(image_id, image_size)

    def prepare_masks(self) -> int:
        """Write every missing mask of the split (resumable); returns how many were made."""
        todo = [i for i in self.ids if not self.mask_path(i).is_file()]
        if todo:
            self._write_masks(progress(todo, total=len(todo), desc=f"coco {self.split} masks"))
        return len(todo)

    def _write_masks(self, ids: Iterable[str]) -> None:
        coco = self._coco()
        label_of = {c: k + 1 for k, c in enumerate(self.category_ids)}
        for image_id in ids:
            mask = semantic_mask(coco, self._rows[image_id][2], label_of)
            save_label_png(self.mask_path(image_id), mask, voc_palette())

    # -- tags ---------------------------------------------------------------------------------

    @cached_property
    def _tag_table(self) -> dict[str, np.ndarray]:
        table = {}
        for image_id, row in self._rows.items():
            vec = np.zeros(self.n_classes, np.float32)
            vec[row[3]] = 1.0
            table[image_id] = vec
        return table

    def _check_images_exist(self) -> None:
        missing = [i for i in self.ids if not self.image_path(i).is_file()]
        if missing:
            raise DataError(self.image_dir, f"{len(missing)} images of {self.annotation_path.name} are missing "
                            f"(first: {self._rows[missing[0]][1]})")


def prepare_coco(data: DataConfig, log: Callable[[str], None] = print) -> None:
    """Build the index and every missing semantic mask of the splits a config uses (train, infer,
    eval, val); says what it made, and nothing when the cache is complete (every stage calls it)."""
    splits = dict.fromkeys([data.train_split, data.infer_split, data.eval_split, *data.val_splits])
    for split in splits:
        dataset = Coco14Dataset(data.root, split, data.cache_dir)
        made = dataset.prepare_masks()
        if made:
            log(f"coco14 {split}: {made} semantic masks made in {dataset.mask_dir}; {len(dataset)} images with "
                f"tags ({dataset.dropped} without a non-crowd object dropped)")
    load_coco.cache_clear()


def _requires() -> str:
    require_pycocotools()
    return "pycocotools"


@register_dataset("coco14", prepare=prepare_coco, default_splits=lambda data: list(SPLITS), requires=_requires,
                  masks_on_demand=True)
def _build(data: DataConfig, split: str, need_images: bool) -> Coco14Dataset:
    return Coco14Dataset(data.root, split, cache_dir=data.cache_dir, need_images=need_images)
