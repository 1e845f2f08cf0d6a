"""A folder of tagged images: the default train split, mixed image formats, optional masks and
lists, class names from the config, missing-file messages, `conta data check`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _datasets import cam_training_step, make_folder

from conta.cli import main
from conta.config import DataConfig
from conta.data.build import build_dataset
from conta.data.folder import FolderDataset
from conta.errors import DataError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path)


def test_train_is_every_tagged_image_no_list_holds_out(folder: Path) -> None:
    train = build_dataset(DataConfig(dataset="folder", root=str(folder)), "train")
    assert isinstance(train, FolderDataset) and train.ids == ["c"]  # a and b are in splits/val.txt
    assert train.class_names == ["cat", "dog"] and train.image_path("c").name == "c.jpeg"
    assert not train.has_masks  # c has none
    val = FolderDataset(folder, "val")
    assert val.ids == ["a", "b"] and val.has_masks
    assert val.mask("b").max() == 2 and val.image("b").shape == (30, 36, 3)
    (folder / "splits" / "val.txt").unlink()
    train = FolderDataset(folder, "train")
    assert train.ids == ["a", "b", "c"]
    np.testing.assert_array_equal(train.tag_matrix(), [[1, 1], [0, 1], [1, 0]])


def test_class_names_from_the_config_and_json_tags(folder: Path) -> None:
    (folder / "class_names.txt").unlink()
    (folder / "tags.csv").unlink()
    (folder / "splits" / "val.txt").unlink()
    (folder / "tags.json").write_text(json.dumps({"a": ["cat"], "c": ["dog", "cat"]}))
    data = DataConfig(dataset="folder", root=str(folder), class_names=["cat", "dog"])
    train = build_dataset(data, "train")
    assert train.ids == ["a", "c"]
    np.testing.assert_array_equal(train.tags("c"), [1, 1])


def test_cam_training_step_on_a_folder(folder: Path) -> None:
    cam_training_step(FolderDataset(folder, "val"))


def test_missing_files_give_clear_messages(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset root not found"):
        FolderDataset(tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match=r"splits/test.txt: split list not found"):
        FolderDataset(folder, "test")
    (folder / "tags.csv").write_text("a,cat\nz,dog\n")
    with pytest.raises(DataError, match=r"tags.csv: names 1 images missing from .*images \(first: z\)"):
        FolderDataset(folder, "train")
    (folder / "tags.csv").write_text("a,horse\n")
    with pytest.raises(DataError, match="unknown class 'horse'"):
        FolderDataset(folder, "train")
    (folder / "tags.csv").unlink()
    with pytest.raises(DataError, match="tags.csv: tags file not found.*data.tags_file"):
        FolderDataset(folder, "train")
    (folder / "class_names.txt").unlink()
    with pytest.raises(DataError, match="class_names.txt: class names not found.*data.class_names"):
        FolderDataset(folder, "train")
    (folder / "images").rename(folder / "pictures")
    with pytest.raises(DataError, match="images: image folder not found"):
        FolderDataset(folder, "train")


def test_data_check_reports_a_folder(folder: Path, capsys) -> None:
    args = ["data", "check", "--dataset", "folder", "--root", str(folder)]  # train and splits/val.txt
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "split train: 1 images with tags over 2 classes" in out
    assert "masks (needed only for scores): 1 of 1 missing" in out and "(first: c.png)" in out
    assert f"split val: 2 images with tags over 2 classes\n  masks: all in {folder / 'masks'}" in out
    assert main([*args, "--split", "test"]) == 1
    assert "MISSING split test:" in capsys.readouterr().out
