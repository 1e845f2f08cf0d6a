"""COCO 2014: classes by category id, tags from non-crowd objects, masks (crowd 255, smaller over
larger), dropped images, the cached index and masks, missing files, `conta data check`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from _datasets import COCO_CLASSES, cam_training_step, coco_file, make_coco
from PIL import Image

from conta.cli import main
from conta.config import DataConfig, load_config
from conta.data.build import build_dataset, ensure_dataset
from conta.data.coco import Coco14Dataset, load_coco
from conta.errors import ContaError, DataError


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    load_coco.cache_clear()
    return make_coco(tmp_path)


def coco_config(root: Path) -> DataConfig:
    return DataConfig(dataset="coco14", root=str(root), train_split="train2014", infer_split="train2014",
                      eval_split="train2014", val_splits=["val2014"])


def test_tags_masks_and_dropped_images(coco: Path) -> None:
    train = build_dataset(coco_config(coco), "train2014")
    assert isinstance(train, Coco14Dataset)
    assert train.class_names == COCO_CLASSES and train.category_ids == [1, 17, 18]
    assert train.ids == [coco_file("train2014", 1)[:-4], coco_file("train2014", 4)[:-4]]
    assert train.dropped == 2  # image 2 has only a crowd, image 3 nothing
    first, second = train.ids
    np.testing.assert_array_equal(train.tags(first), [1, 0, 1])   # person, dog; the crowd adds nothing
    np.testing.assert_array_equal(train.tags(second), [0, 1, 0])  # cat
    image, mask = train.image_and_mask(first)
    assert image.shape == (40, 48, 3) and mask.shape == (40, 48)
    assert mask[15, 25] == 3      # the small dog lies on the large person
    assert mask[8, 8] == 1        # person only
    assert mask[34, 2] == 255     # crowd only
    assert mask[32, 8] == 1       # the person wins over the crowd it overlaps
    assert mask[2, 45] == 0       # background
    assert set(np.unique(train.mask(second))) == {0, 2}
    with Image.open(train.mask_path(first)) as png:
        assert png.mode == "P"
    assert train.mask_path(first).parent == coco / ".conta_cache" / "coco14" / "masks_train2014"


def test_prepare_makes_every_mask_and_resumes(coco: Path, capsys) -> None:
    data = coco_config(coco)
    ensure_dataset(data, log=print)
    out = capsys.readouterr().out
    assert "coco14 train2014: 2 semantic masks made" in out and "2 images with tags (2 without a non-crowd" in out
    assert "coco14 val2014: 1 semantic masks made" in out
    ensure_dataset(data, log=print)
    assert capsys.readouterr().out == ""
    train = build_dataset(data, "train2014")
    assert all(train.mask_path(i).is_file() for i in train.ids)
    train.mask_path(train.ids[0]).unlink()
    assert train.prepare_masks() == 1 and train.prepare_masks() == 0


def test_cached_index_and_masks_need_no_pycocotools(coco: Path, monkeypatch) -> None:
    ensure_dataset(coco_config(coco), log=lambda _: None)
    load_coco.cache_clear()
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    val = Coco14Dataset(coco, "val2014")
    assert len(val) == 1 and val.mask(val.ids[0]).max() == 3
    (coco / ".conta_cache").rename(coco / "old_cache")
    with pytest.raises(ContaError, match=r'pip install "conta\[coco\]"'):
        Coco14Dataset(coco, "val2014")


def test_changed_annotations_rebuild_the_index(coco: Path) -> None:
    val = Coco14Dataset(coco, "val2014")
    assert val.mask(val.ids[0]).max() == 3
    path = coco / "annotations" / "instances_val2014.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["category_id"] = 17
    path.write_text(json.dumps(doc) + " ")
    load_coco.cache_clear()
    again = Coco14Dataset(coco, "val2014")
    np.testing.assert_array_equal(again.tags(again.ids[0]), [0, 1, 0])
    assert again.mask(again.ids[0]).max() == 2


def test_cam_training_step_on_train2014(coco: Path) -> None:
    cam_training_step(Coco14Dataset(coco, "train2014"))


def test_missing_files_give_clear_messages(coco: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DataError, match="dataset root not found.*train2014/, val2014/ and annotations/"):
        Coco14Dataset(tmp_path / "nowhere", "train2014")
    with pytest.raises(DataError, match="unknown COCO split 'train'"):
        Coco14Dataset(coco, "train")
    (coco / "train2014" / coco_file("train2014", 4)).unlink()
    with pytest.raises(DataError, match=rf"1 images of instances_train2014.json are missing \(first: {coco_file('train2014', 4)}\)"):
        Coco14Dataset(coco, "train2014")
    (coco / "val2014").rename(coco / "elsewhere")
    with pytest.raises(DataError, match=r"val2014: image folder not found \(unzip val2014.zip"):
        Coco14Dataset(coco, "val2014")
    (coco / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(DataError, match="instances_val2014.json: annotation file not found"):
        Coco14Dataset(coco, "val2014")
    broken = coco / "annotations" / "instances_train2014.json"
    broken.write_text("[1, 2]")
    with pytest.raises(DataError, match="not a COCO instances annotation file"):
        Coco14Dataset(coco, "train2014")


def test_data_check_reports_splits_and_missing_pycocotools(coco: Path, capsys, monkeypatch) -> None:
    assert main(["data", "check", "--dataset", "coco14", "--root", str(coco)]) == 0
    out = capsys.readouterr().out
    assert "pycocotools: installed" in out
    assert "split train2014: 2 images with tags over 3 classes (2 without a non-crowd object dropped)" in out
    assert "masks: 0 of 2 cached" in out
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    assert main(["data", "check", "--dataset", "coco14", "--root", str(coco)]) == 1
    assert 'MISSING MS-COCO needs pycocotools: pip install "conta[coco]"' in capsys.readouterr().out


def test_the_shipped_coco14_config_loads() -> None:
    cfg = load_config(Path(__file__).parents[1] / "configs" / "coco14.yaml")
    assert (cfg.data.dataset, cfg.data.train_split, cfg.data.val_splits) == ("coco14", "train2014", ["val2014"])
    assert (cfg.seg.arch, cfg.seg.iterations, cfg.seg.batch_size * cfg.seg.iter_size) == ("resnet101", 100000, 10)
