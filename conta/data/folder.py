"""A folder of the user's own tagged images (`data.dataset: folder`): the pipeline on any data.

    data.root/
      images/<id>.jpg|.jpeg|.png|.bmp|.webp   the id is the file name without its extension
      tags.csv or tags.json                   `id,cat;dog` rows or {"id": ["cat", "dog"]} (or data.tags_file)
      class_names.txt                         one foreground class per line (or data.class_names)
      masks/<id>.png                          optional ground truth for scores: index PNG, 0 = background,
                                              k = the k-th class, 255 = ignore
      splits/<split>.txt                      optional id lists

Without splits/train.txt the split `train` is every image the tags file names (an image without
tags has no training target) that no other list in splits/ holds, so a `val` list is never trained
on; other splits (e.g. a `val` with masks) need their list.
"""

from __future__ import annotations

from pathlib import Path

from conta.config import DataConfig
from conta.data.build import register_dataset
from conta.data.voc import VOCLayoutDataset, read_class_names, read_id_list, read_tags_file
from conta.errors import DataError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TAGS_FILES: tuple[str, ...] = ("tags.csv", "tags.json")


def scan_images(folder: Path) -> dict[str, str]:
    """id -> file name of every image in `folder` (one file per id)."""
    files: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if path.stem in files:
                raise DataError(folder, f"two images share the id {path.stem!r} ({files[path.stem]}, {path.name})")
            files[path.stem] = path.name
    return files


def find_tags_file(root: Path) -> Path:
    found = [root / name for name in TAGS_FILES if (root / name).is_file()]
    if not found:
        raise DataError(root / TAGS_FILES[0], "tags file not found: write rows `image_id,class;class` "
                        "(or tags.json {image_id: [classes]}), or set data.tags_file")
    if len(found) > 1:
        raise DataError(root, "both tags.csv and tags.json exist: keep one, or set data.tags_file")
    return found[0]


class FolderDataset(VOCLayoutDataset):
    """One split of a tagged image folder, with the interface of `VOCLayoutDataset` (whose mask
    and tag helpers it reuses); images may have any common extension."""

    def __init__(self, root: str | Path, split: str, class_names: list[str] | None = None,
                 tags_file: str | Path | None = None, need_images: bool = True) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(self.root, "dataset root not found (set data.root to the folder holding images/)")
        self.split = split
        self.image_dir = self.root / "images"
        if need_images and not self.image_dir.is_dir():
            raise DataError(self.image_dir, "image folder not found: put the images in <data.root>/images/")
        if not class_names and not (self.root / "class_names.txt").is_file():
            raise DataError(self.root / "class_names.txt", "class names not found: list one foreground "
                            "class per line there, or set data.class_names")
        self.class_names = list(class_names) if class_names else read_class_names(self.root)
        self.n_classes = len(self.class_names)
        self.tags_file = Path(tags_file) if tags_file else find_tags_file(self.root)
        self.mask_dir = self.root / "masks"
        self._files = scan_images(self.image_dir) if self.image_dir.is_dir() else {}
        self.list_path = self.root / "splits" / f"{split}.txt"
        if self.list_path.is_file() or split != "train":
            self.ids = read_id_list(self.list_path)
        else:
            held_out = {i for path in (self.root / "splits").glob("*.txt") for i in read_id_list(path)}
            self.list_path = self.tags_file
            self.ids = sorted(set(read_tags_file(self.tags_file, self.class_names)) - held_out)
        if need_images:
            self._check_images_exist()

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self._files.get(image_id, f"{image_id}.jpg")

    def _check_images_exist(self) -> None:
        missing = [i for i in self.ids if i not in self._files]
        if missing:
            raise DataError(self.list_path, f"names {len(missing)} images missing from {self.image_dir} "
                            f"(first: {missing[0]})")


def _default_splits(data: DataConfig) -> list[str]:
    """`train` and every list in splits/."""
    return list(dict.fromkeys(["train", *sorted(p.stem for p in (Path(data.root) / "splits").glob("*.txt"))]))


@register_dataset("folder", default_splits=_default_splits)
def _build(data: DataConfig, split: str, need_images: bool) -> FolderDataset:
    return FolderDataset(data.root, split, class_names=data.class_names, tags_file=data.tags_file or None,
                         need_images=need_images)
