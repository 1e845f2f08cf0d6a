"""VOC 2012 + SBD: list lookup and derivation, mask folders, XML tags and their cache, `conta data check`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from _datasets import TRAIN_AUG, VOC_TRAIN, VOC_VAL, cam_training_step, make_voc_sbd

import conta.data.cache as cache
import conta.data.voc12 as voc12
from conta.cli import main
from conta.config import DataConfig
from conta.data.build import build_dataset
from conta.data.voc import VOC_CLASSES
from conta.data.voc12 import VOC12Dataset, derive_train_aug
from conta.errors import DataError
from conta.io import load_json, save_rgb


@pytest.fixture
def voc(tmp_path: Path):
    return make_voc_sbd(tmp_path)


@pytest.fixture
def no_packaged_lists(tmp_path: Path, monkeypatch) -> None:
    """Hide the lists shipped in conta/data/lists/voc12/, so a list the dataset lacks is really missing."""
    empty = tmp_path / "no_packaged_lists"
    empty.mkdir()
    monkeypatch.setattr(voc12, "PACKAGED_LISTS", empty)


def tag_names(vec: np.ndarray) -> list[str]:
    return [VOC_CLASSES[k] for k in np.flatnonzero(vec)]


def test_voc_lists_derives_train_aug_from_sbd(voc, capsys) -> None:
    assert derive_train_aug(voc.root, voc.sbd) == TRAIN_AUG
    assert main(["data", "voc-lists", "--root", str(voc.devkit), "--sbd", str(voc.sbd)]) == 0
    path = voc.root / "ImageSets" / "SegmentationAug" / "train_aug.txt"
    assert path.read_text().split() == TRAIN_AUG
    out = capsys.readouterr().out
    assert f"wrote {len(TRAIN_AUG)} ids to {path}" in out and "official train_aug has 10582" in out


def test_train_aug_reads_aug_masks_and_xml_tags_through_a_cache(voc) -> None:
    voc12.write_train_aug(voc.root, voc.sbd)
    data = DataConfig(dataset="voc12", root=str(voc.devkit), cache_dir=str(voc.devkit / "cache"))
    train_aug = build_dataset(data, "train_aug")
    assert isinstance(train_aug, VOC12Dataset) and train_aug.root == voc.root
    assert train_aug.ids == TRAIN_AUG and train_aug.class_names == list(VOC_CLASSES)
    assert train_aug.mask_dir.name == "SegmentationClassAug" and train_aug.has_masks
    assert build_dataset(data, "train").mask_dir.name == "SegmentationClass"
    image, mask = train_aug.image_and_mask("img_003")
    np.testing.assert_array_equal(mask, voc.voc.masks["img_003"])
    assert np.abs(image.astype(int) - voc.voc.images["img_003"]).mean() < 4  # JPEG: close, not equal
    assert tag_names(train_aug.tags("img_002")) == [*voc.voc.tags["img_002"], "bottle"]  # XML, parts dropped
    cache = load_json(voc.devkit / "cache" / "voc12_tags.json")
    assert cache["classes"] == list(VOC_CLASSES) and sorted(cache["xml"]) == TRAIN_AUG

    (voc.root / "Annotations" / "img_002.xml").unlink()  # the cache answers now
    again = build_dataset(data, "train_aug")
    np.testing.assert_array_equal(again.tag_matrix(), train_aug.tag_matrix())
    with pytest.raises(DataError, match="img_004.xml"):   # an id not cached yet is read from XML
        (voc.root / "Annotations" / "img_004.xml").unlink()
        build_dataset(data, "val").tag_matrix()


def test_masks_give_the_tags_without_annotations(voc) -> None:
    for xml in (voc.root / "Annotations").iterdir():
        xml.unlink()
    (voc.root / "Annotations").rmdir()
    train = VOC12Dataset(voc.root, "train")
    assert train.tag_source == "mask"
    assert [tag_names(train.tags(i)) for i in VOC_TRAIN] == [voc.voc.tags[i] for i in VOC_TRAIN]
    assert (voc.root / ".conta_cache" / "voc12_tags.json").is_file()  # root is writable


def test_a_read_only_dataset_caches_in_the_user_cache(voc, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    VOC12Dataset(voc.root, "train").tag_matrix()
    assert len(list((tmp_path / "xdg" / "conta").glob("VOC2012-*/voc12_tags.json"))) == 1
    assert not (voc.root / ".conta_cache").exists()


def test_lists_come_from_the_dataset_first_then_the_package(voc, tmp_path: Path, monkeypatch) -> None:
    packaged = tmp_path / "packaged"
    packaged.mkdir()
    (packaged / "train_aug.txt").write_text("img_000\nimg_003\n")
    (packaged / "val.txt").write_text("img_000\n")
    monkeypatch.setattr(voc12, "PACKAGED_LISTS", packaged)
    assert VOC12Dataset(voc.root, "train_aug").ids == ["img_000", "img_003"]
    assert VOC12Dataset(voc.root, "val").ids == VOC_VAL  # ImageSets/Segmentation/val.txt wins


def test_cam_training_step_on_train_aug(voc) -> None:
    voc12.write_train_aug(voc.root, voc.sbd)
    cam_training_step(VOC12Dataset(voc.root, "train_aug"))


def test_missing_files_give_clear_messages(voc, tmp_path: Path, no_packaged_lists) -> None:
    with pytest.raises(DataError, match="dataset root not found.*VOCdevkit/VOC2012"):
        VOC12Dataset(tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match=r"train_aug.txt: split list not found; .*conta data voc-lists"):
        VOC12Dataset(voc.root, "train_aug")
    with pytest.raises(DataError, match="VOC2012test.tar"):
        VOC12Dataset(voc.root, "test")
    with pytest.raises(DataError, match="SBD lists not found"):
        derive_train_aug(voc.root, voc.devkit)
    (voc.root / "JPEGImages" / "img_001.jpg").unlink()
    with pytest.raises(DataError, match=r"train.txt: names 1 images missing.*img_001.jpg"):
        VOC12Dataset(voc.root, "train")
    for jpg in (voc.root / "JPEGImages").iterdir():
        jpg.unlink()
    (voc.root / "JPEGImages").rmdir()
    with pytest.raises(DataError, match="JPEGImages: image folder not found"):
        VOC12Dataset(voc.root, "val")


def test_data_check_reports_counts_and_what_is_missing(voc, capsys, no_packaged_lists) -> None:
    assert main(["data", "check", "--dataset", "voc12", "--root", str(voc.root)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"JPEGImages/ +6 files", out) and re.search(r"SegmentationClass/ +4 files", out)
    assert "split train: 2 ids" in out and "(the official list has 1464)" in out
    assert "MISSING split train_aug: no list" in out and "conta data voc-lists" in out
    assert "tags: from Annotations/*.xml" in out and "1 problem(s)" in out

    voc12.write_train_aug(voc.root, voc.sbd)
    (voc.root / "JPEGImages" / "img_002.jpg").unlink()
    (voc.root / "JPEGImages" / "img_003.jpg").unlink()
    assert main(["data", "check", "--dataset", "voc12", "--root", str(voc.root), "--split", "train_aug"]) == 1
    out = capsys.readouterr().out
    assert "split train_aug: images: 2 of 4 missing" in out and "(first: img_002.jpg, img_003.jpg)" in out
    assert "masks: all in SegmentationClassAug/" in out

    (voc.root / "JPEGImages" / "img_002.jpg").touch()
    (voc.root / "JPEGImages" / "img_003.jpg").touch()
    assert main(["data", "check", "--dataset", "voc12", "--root", str(voc.root), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "BAD unreadable image: 2 files (first: " in out and "img_002.jpg (empty file)" in out
    for image_id in ("img_002", "img_003"):
        save_rgb(voc.root / "JPEGImages" / f"{image_id}.jpg", np.full((24, 32, 3), 90, np.uint8))
    assert main(["data", "check", "--dataset", "voc12", "--root", str(voc.root), "--workers", "1"]) == 0
    assert "OK: nothing required is missing and every file decodes" in capsys.readouterr().out
