"""PASCAL VOC 2012 with the SBD augmentation ("train_aug"), the dataset every WSSS paper reports on.

    VOCdevkit/VOC2012/                         data.root (VOCdevkit/ is accepted too)
      JPEGImages/<id>.jpg                      all 17,125 images (SBD's are among them)
      Annotations/<id>.xml                     image-level tags (IRNet's cls_labels.npy source)
      SegmentationClass/<id>.png               official masks: train 1,464 + val 1,449
      SegmentationClassAug/<id>.png            optional: SBD masks as index PNGs (`conta data sbd-masks`)
      ImageSets/Segmentation/{train,val}.txt   official lists (test.txt comes with the test set)
      ImageSets/SegmentationAug/train_aug.txt  written by `conta data voc-lists` (or copied there)

A split list is looked up in ImageSets/Segmentation/, then ImageSets/SegmentationAug/ (the
deeplab-pytorch place), then the lists packaged in conta/data/lists/voc12/, which must be the
official files byte for byte if present. train_aug = (SBD train ∪ SBD val ∪ VOC train) − VOC val
(`derive_train_aug`). Tags come from a tags file, else the XML annotations (as IRNet's
cls_labels.npy), else the masks; they are cached as JSON because parsing 10k files takes a while.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from conta.config import DataConfig
from conta.data.build import register_dataset
from conta.data.cache import dataset_cache_dir
from conta.data.voc import VOC_CLASSES, VOCLayoutDataset, read_id_list
from conta.errors import DataError
from conta.io import load_json, save_json, save_text
from conta.progress import progress

# Official sizes: the check compares against them, and `conta data voc-lists` reports the derived count.
LIST_COUNTS: dict[str, int] = {"train": 1464, "train_aug": 10582, "val": 1449, "test": 1456}
LIST_DIRS: tuple[str, ...] = ("ImageSets/Segmentation", "ImageSets/SegmentationAug")
PACKAGED_LISTS = Path(__file__).parent / "lists" / "voc12"
MASK_DIRS: tuple[str, ...] = ("SegmentationClass", "SegmentationClassAug")
TAGS_CACHE = "voc12_tags.json"


def resolve_voc_root(root: str | Path) -> Path:
    """The VOC2012 folder: `root` itself, or root/VOC2012 when given the VOCdevkit folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(root, "dataset root not found (set data.root to VOCdevkit/VOC2012)")
    if not (root / "JPEGImages").is_dir() and (root / "VOC2012").is_dir():
        return root / "VOC2012"
    return root


def list_candidates(root: Path, split: str) -> list[Path]:
    """Where a split list is looked for, in order of preference."""
    return [root / d / f"{split}.txt" for d in LIST_DIRS] + [PACKAGED_LISTS / f"{split}.txt"]


def missing_list_hint(split: str) -> str:
    if split == "train_aug":
        return ("create it from SBD with `conta data voc-lists --root <VOC2012> --sbd <benchmark_RELEASE>` "
                "(train_aug = SBD train + SBD val + VOC train - VOC val)")
    if split == "test":
        return "the test list comes with the VOC2012 test download (VOC2012test.tar)"
    return "it comes with VOCtrainval_11-May-2012.tar"


def find_split_list(root: Path, split: str) -> Path:
    for path in list_candidates(root, split):
        if path.is_file():
            return path
    raise DataError(root / LIST_DIRS[0] / f"{split}.txt", f"split list not found; {missing_list_hint(split)}")


class VOC12Dataset(VOCLayoutDataset):
    """A split of VOC 2012 + SBD; the 20 VOC classes; masks from SegmentationClass or, when that
    folder does not cover the split (train_aug), SegmentationClassAug."""

    def __init__(self, root: str | Path, split: str, tags_file: str | Path | None = None,
                 cache_dir: str | Path | None = None, need_images: bool = True) -> None:
        root = resolve_voc_root(root)
        list_path = find_split_list(root, split)
        # An absolute list_dir replaces the root in the parent's `root / list_dir` join (pathlib rule).
        super().__init__(root, split, class_names=list(VOC_CLASSES), tags_file=tags_file,
                         list_dir=str(list_path.parent.resolve()), need_images=need_images)
        self.mask_dir = self._covering_mask_dir()
        self.cache_path = dataset_cache_dir(root, cache_dir) / TAGS_CACHE

    def _covering_mask_dir(self) -> Path:
        """The first mask folder holding every id of the split (else the official one)."""
        for name in MASK_DIRS:
            folder = self.root / name
            if folder.is_dir() and all((folder / f"{i}.png").is_file() for i in self.ids):
                return folder
        return self.root / MASK_DIRS[0]

    @cached_property
    def tag_source(self) -> str:
        if self.tags_file is not None:
            return "file"
        if (self.root / "Annotations").is_dir():
            return "xml"
        if self.has_masks:
            return "mask"
        raise DataError(self.root, f"no image-level tags for split {self.split}: need Annotations/*.xml, "
                        f"masks in {self.mask_dir.name}/, or a tags file (data.tags_file)")

    @cached_property
    def _tag_table(self) -> dict[str, np.ndarray]:
        source = self.tag_source
        if source == "file":
            return super()._tag_table
        cache = self._read_cache()
        known = cache.setdefault(source, {})
        todo = [i for i in self.ids if i not in known]
        if todo:
            read = self._tags_from_xml if source == "xml" else self._tags_from_mask
            for image_id in progress(todo, desc=f"voc12 tags ({source})"):
                known[image_id] = np.flatnonzero(read(image_id)).tolist()
            save_json(self.cache_path, cache)
        table = {}
        for image_id in self.ids:
            vec = np.zeros(self.n_classes, np.float32)
            vec[known[image_id]] = 1.0
            table[image_id] = vec
        return table

    def _read_cache(self) -> dict:
        """{"classes": [...], "xml" | "mask": {id: [class indices]}}; a cache for other classes is ignored."""
        fresh = {"classes": self.class_names}
        if not self.cache_path.is_file():
            return fresh
        cache = load_json(self.cache_path)
        return cache if isinstance(cache, dict) and cache.get("classes") == self.class_names else fresh


def sbd_list_dir(sbd_root: str | Path) -> Path:
    """SBD's folder holding train.txt and val.txt: benchmark_RELEASE/dataset (or that folder itself)."""
    sbd_root = Path(sbd_root).expanduser()
    for folder in (sbd_root, sbd_root / "dataset", sbd_root / "benchmark_RELEASE" / "dataset"):
        if (folder / "train.txt").is_file() and (folder / "val.txt").is_file():
            return folder
    raise DataError(sbd_root, "SBD lists not found: expected benchmark_RELEASE/dataset/{train,val}.txt "
                    "(from benchmark.tgz, the Semantic Boundaries Dataset)")


def derive_train_aug(voc_root: str | Path, sbd_root: str | Path) -> list[str]:
    """train_aug = (SBD train ∪ SBD val ∪ VOC train) − VOC val, sorted (10,582 ids from the official lists)."""
    voc_root = resolve_voc_root(voc_root)
    sbd = sbd_list_dir(sbd_root)
    voc_lists = voc_root / LIST_DIRS[0]
    union = set(read_id_list(sbd / "train.txt")) | set(read_id_list(sbd / "val.txt"))
    union |= set(read_id_list(voc_lists / "train.txt"))
    return sorted(union - set(read_id_list(voc_lists / "val.txt")))


def write_train_aug(voc_root: str | Path, sbd_root: str | Path, out_dir: str | Path | None = None) -> tuple[Path, int]:
    """Write train_aug.txt (default: VOC2012/ImageSets/SegmentationAug/); returns its path and size."""
    ids = derive_train_aug(voc_root, sbd_root)
    folder = Path(out_dir) if out_dir is not None else resolve_voc_root(voc_root) / LIST_DIRS[1]
    path = folder / "train_aug.txt"
    save_text(path, "".join(f"{i}\n" for i in ids))
    return path, len(ids)


@register_dataset("voc12", default_splits=lambda data: ["train", "train_aug", "val"])
def _build(data: DataConfig, split: str, need_images: bool) -> VOC12Dataset:
    return VOC12Dataset(data.root, split, tags_file=data.tags_file or None, cache_dir=data.cache_dir,
                        need_images=need_images)
