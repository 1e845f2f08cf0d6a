"""VOC-layout reader (ids, images, palette masks, tags from masks / JSON / CSV / XML), the DataError
each bad input gives, and conta.io's atomic, pickle-free writers and readers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _fixtures import VocFixture, write_voc_xml
from PIL import Image

from conta.data.palette import IGNORE_INDEX
from conta.data.voc import VOC_CLASSES, VOCLayoutDataset, read_id_list
from conta.errors import ContaError, DataError
from conta.io import atomic_path, load_label_png, load_npz, load_rgb, save_json, save_label_png, save_npz

MakeVoc = Callable[..., VocFixture]


def data_error(fn: Callable[[], object], path: Path) -> DataError:
    """Run `fn`, expect a DataError about `path`, and return it."""
    with pytest.raises(DataError) as info:
        fn()
    err = info.value
    assert isinstance(err, ContaError)
    assert err.path == path
    assert str(path) in str(err)
    return err


# -- ids, images, masks -----------------------------------------------------------------------


def test_ids_come_from_the_split_list(tiny_voc: VocFixture) -> None:
    train = VOCLayoutDataset(tiny_voc.root, "train")
    val = VOCLayoutDataset(tiny_voc.root, "val")
    assert train.ids == ["img_000", "img_001", "img_002", "img_003"]
    assert val.ids == ["img_002", "img_003"] and len(val) == 2
    assert train.class_names == ["cat", "dog", "person"] and train.n_classes == 3
    assert train.has_masks


def test_list_formats(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    # blank lines are skipped; the deeplab-pytorch "image-path label-path" form gives the image stem
    path.write_text("a_1\n\n  b_2  \n/JPEGImages/c_3.jpg /SegmentationClass/c_3.png\n")
    assert read_id_list(path) == ["a_1", "b_2", "c_3"]


def test_class_names_file_may_start_with_background(make_voc: MakeVoc) -> None:
    voc = make_voc(classes=["cat", "dog"])
    (voc.root / "class_names.txt").write_text("background\ncat\ndog\n\n")
    assert VOCLayoutDataset(voc.root, "train").class_names == ["cat", "dog"]
    # explicit names win over the file
    assert VOCLayoutDataset(voc.root, "train", class_names=["x", "y"]).class_names == ["x", "y"]


def test_image_round_trip(tiny_voc: VocFixture) -> None:
    ds = VOCLayoutDataset(tiny_voc.root, "train")
    for image_id in ds.ids:
        image = ds.image(image_id)
        assert image.dtype == np.uint8 and image.shape == (24, 32, 3)
        # JPEG is lossy (colour edges smear), but flat areas at quality 100 keep their colour
        diff = np.abs(image.astype(int) - tiny_voc.images[image_id].astype(int))
        assert np.median(diff) <= 1
        assert diff[5:10, 5:12].max() <= 4  # inside the first object


def test_palette_mask_is_read_as_indices_not_rgb(tiny_voc: VocFixture) -> None:
    ds = VOCLayoutDataset(tiny_voc.root, "train")
    with Image.open(ds.mask_path("img_001")) as img:
        assert img.mode == "P"  # stored as a palette PNG: RGB would be colours, not labels
    for image_id in ds.ids:
        mask = ds.mask(image_id)
        assert mask.dtype == np.uint8 and mask.ndim == 2
        np.testing.assert_array_equal(mask, tiny_voc.masks[image_id])
    # image 1 holds classes 2 (dog) and 3 (person), each in a 255 ring
    assert set(np.unique(ds.mask("img_001")).tolist()) == {0, 2, 3, IGNORE_INDEX}
    image, mask = ds.image_and_mask("img_003")
    assert image.shape[:2] == mask.shape


def test_grayscale_label_png_is_accepted(tmp_path: Path) -> None:
    label = np.array([[0, 1], [2, 255]], np.uint8)
    Image.fromarray(label, mode="L").save(tmp_path / "gray.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "gray.png"), label)


# -- tags ---------------------------------------------------------------------------------------


def test_tags_from_masks_ignore_background_and_void(tiny_voc: VocFixture) -> None:
    ds = VOCLayoutDataset(tiny_voc.root, "train")
    # image i holds class i % 3 + 1, and odd images also the next class (see _fixtures)
    expected = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]], np.float32)
    np.testing.assert_array_equal(ds.tag_matrix(), expected)
    for image_id in ds.ids:
        np.testing.assert_array_equal(ds.tags(image_id), tiny_voc.tag_vector(image_id))
    assert ds.tags("img_000").dtype == np.float32


def test_tags_from_json_file_win_over_masks(tiny_voc: VocFixture, tmp_path: Path) -> None:
    tags = tmp_path / "tags.json"
    tags.write_text(json.dumps({"img_000": ["dog"], "img_001": [], "img_002": ["cat", "person"],
                                "img_003": ["person"], "img_999": ["cat"]}))
    ds = VOCLayoutDataset(tiny_voc.root, "train", tags_file=tags)
    expected = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 1], [0, 0, 1]], np.float32)
    np.testing.assert_array_equal(ds.tag_matrix(), expected)


def test_tags_from_csv_file(tiny_voc: VocFixture, tmp_path: Path) -> None:
    tags = tmp_path / "tags.csv"
    tags.write_text("id,tags\nimg_002,dog;cat\nimg_003,person|dog\n")
    ds = VOCLayoutDataset(tiny_voc.root, "val", tags_file=tags)
    np.testing.assert_array_equal(ds.tags("img_002"), np.array([1, 1, 0], np.float32))
    np.testing.assert_array_equal(ds.tags("img_003"), np.array([0, 1, 1], np.float32))


def test_tags_from_xml_skip_part_names(make_voc: MakeVoc) -> None:
    # no class_names.txt + Annotations/ -> the 20 VOC classes; no masks -> tags from the XML
    voc = make_voc(n=2, masks=False, class_names_file=False)
    write_voc_xml(voc.root / "Annotations" / "img_000.xml", ["person", "horse", "person"],
                  parts={"person": ["head", "hand", "foot"]})
    write_voc_xml(voc.root / "Annotations" / "img_001.xml", ["tvmonitor"])
    ds = VOCLayoutDataset(voc.root, "train")
    assert ds.class_names == list(VOC_CLASSES) and not ds.has_masks
    expected = np.zeros((2, 20), np.float32)
    expected[0, [VOC_CLASSES.index("person"), VOC_CLASSES.index("horse")]] = 1
    expected[1, VOC_CLASSES.index("tvmonitor")] = 1
    np.testing.assert_array_equal(ds.tag_matrix(), expected)


def test_xml_part_named_like_a_class_is_not_an_object(make_voc: MakeVoc) -> None:
    # a dataset whose classes include "head": a person's <part><name>head</name> is not a head object
    voc = make_voc(n=1, splits={"train": [0]}, masks=False, classes=["person", "head"])
    write_voc_xml(voc.root / "Annotations" / "img_000.xml", ["person"], parts={"person": ["head"]})
    ds = VOCLayoutDataset(voc.root, "train")
    np.testing.assert_array_equal(ds.tags("img_000"), np.array([1, 0], np.float32))


# -- bad inputs name the file -------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "no_such_dataset"
    data_error(lambda: VOCLayoutDataset(root, "train"), root)


def test_missing_split_list(tiny_voc: VocFixture) -> None:
    path = tiny_voc.root / "ImageSets" / "Segmentation" / "test.txt"
    err = data_error(lambda: VOCLayoutDataset(tiny_voc.root, "test"), path)
    assert "not found" in str(err)


def test_empty_split_list(tiny_voc: VocFixture) -> None:
    path = tiny_voc.root / "ImageSets" / "Segmentation" / "empty.txt"
    path.write_text("\n\n")
    data_error(lambda: VOCLayoutDataset(tiny_voc.root, "empty"), path)


def test_list_naming_a_missing_image(tiny_voc: VocFixture) -> None:
    path = tiny_voc.root / "ImageSets" / "Segmentation" / "broken.txt"
    path.write_text("img_000\nimg_999\n")
    err = data_error(lambda: VOCLayoutDataset(tiny_voc.root, "broken"), path)
    assert "img_999.jpg" in str(err)


def test_missing_class_names(make_voc: MakeVoc) -> None:
    voc = make_voc(class_names_file=False)
    data_error(lambda: VOCLayoutDataset(voc.root, "train"), voc.root / "class_names.txt")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_image(tiny_voc: VocFixture, damage: str) -> None:
    ds = VOCLayoutDataset(tiny_voc.root, "train")
    path = ds.image_path("img_001")
    data = path.read_bytes()
    path.write_bytes({"garbage": b"this is not a jpeg" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    err = data_error(lambda: ds.image("img_001"), path)
    assert "unreadable" in str(err)
    ds.image("img_000")  # the others still read


def test_mask_size_differs_from_image(tiny_voc: VocFixture) -> None:
    ds = VOCLayoutDataset(tiny_voc.root, "train")
    path = ds.mask_path("img_002")
    save_label_png(path, np.zeros((24, 30), np.uint8))
    err = data_error(lambda: ds.image_and_mask("img_002"), path)
    assert "30x24" in str(err) and "32x24" in str(err)


def test_mask_value_outside_class_range(tiny_voc: VocFixture) -> None:
    ds = VOCLayoutDataset(tiny_voc.root, "train")
    path = ds.mask_path("img_000")
    mask = tiny_voc.masks["img_000"].copy()
    mask[5, 5] = 4  # 3 classes: 0..3 and 255 are valid
    save_label_png(path, mask)
    err = data_error(lambda: ds.mask("img_000"), path)
    assert "value 4" in str(err)
    # the tags derived from masks hit the same check
    data_error(lambda: VOCLayoutDataset(tiny_voc.root, "train").tag_matrix(), path)


def test_rgb_mask_is_rejected(tiny_voc: VocFixture) -> None:
    ds = VOCLayoutDataset(tiny_voc.root, "train")
    path = ds.mask_path("img_000")
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(path)
    err = data_error(lambda: ds.mask("img_000"), path)
    assert "RGB" in str(err)


def test_unknown_class_in_tags_file(tiny_voc: VocFixture, tmp_path: Path) -> None:
    for name, text in [("tags.json", json.dumps({"img_002": ["cat"], "img_003": ["unicorn"]})),
                       ("tags.csv", "img_002,cat\nimg_003,dog;unicorn\n")]:
        tags = tmp_path / name
        tags.write_text(text)
        ds = VOCLayoutDataset(tiny_voc.root, "val", tags_file=tags)
        err = data_error(ds.tag_matrix, tags)
        assert "unicorn" in str(err) and "img_003" in str(err)


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("tags.json", '{"img_002": ["cat"]', "not valid JSON"),
        ("tags.json", '[["img_002", "cat"]]', "JSON object"),
        ("tags.json", '{"img_002": "cat", "img_003": []}', "must be a list"),
        ("tags.json", '{"img_002": ["cat"]}', "img_003"),          # an id of the split without tags
        ("tags.csv", "img_002\nimg_003,cat\n", "line 1"),
    ],
)
def test_malformed_tags_file(tiny_voc: VocFixture, tmp_path: Path, name: str, text: str, needle: str) -> None:
    tags = tmp_path / name
    tags.write_text(text)
    ds = VOCLayoutDataset(tiny_voc.root, "val", tags_file=tags)
    err = data_error(ds.tag_matrix, tags)
    assert needle in str(err)


def test_malformed_xml(make_voc: MakeVoc) -> None:
    voc = make_voc(n=1, splits={"train": [0]}, masks=False, class_names_file=False)
    path = voc.root / "Annotations" / "img_000.xml"
    path.parent.mkdir(parents=True)
    path.write_text("<annotation><object><name>person</name></annotation>")
    data_error(VOCLayoutDataset(voc.root, "train").tag_matrix, path)


def test_no_tag_source(make_voc: MakeVoc) -> None:
    voc = make_voc(masks=False)
    err = data_error(VOCLayoutDataset(voc.root, "train").tag_matrix, voc.root)
    assert "tags" in str(err)


# -- conta.io: atomic writes, pickle-free reads -------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_commits_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out" / "scores.json"
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent  # same folder: rename is atomic
        tmp.write_text("new")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert _leftovers(target.parent) == ["scores.json"]


def test_failing_write_leaves_no_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert _leftovers(tmp_path) == []


def test_failing_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "scores.json"
    save_json(target, {"miou": 0.5})
    with pytest.raises(TypeError):
        save_json(target, {"bad": object()})  # not JSON-serialisable
    assert json.loads(target.read_text()) == {"miou": 0.5}
    assert _leftovers(tmp_path) == ["scores.json"]


def test_label_png_out_of_uint8_range_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_label_png(tmp_path / "m.png", np.array([[0, 300]], np.int64))
    assert _leftovers(tmp_path) == []
    save_label_png(tmp_path / "m.png", np.array([[0, 255]], np.int64))  # in range: cast to uint8
    np.testing.assert_array_equal(load_label_png(tmp_path / "m.png"), [[0, 255]])


def test_npz_round_trip(tmp_path: Path) -> None:
    cam = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    keys = np.array([2, 5], np.int64)
    save_npz(tmp_path / "cam.npz", cam=cam, keys=keys)
    loaded = load_npz(tmp_path / "cam.npz")
    assert set(loaded) == {"cam", "keys"}
    np.testing.assert_array_equal(loaded["cam"], cam)
    assert loaded["cam"].dtype == np.float32 and loaded["keys"].dtype == np.int64
    assert _leftovers(tmp_path) == ["cam.npz"]


def test_load_npz_refuses_pickled_object_arrays(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, payload=np.array([{"x": 1}, None], dtype=object))  # needs pickle to load
    err = data_error(lambda: load_npz(path), path)
    assert "npz" in str(err)


def test_load_npz_missing_and_garbage(tmp_path: Path) -> None:
    missing = tmp_path / "missing.npz"
    data_error(lambda: load_npz(missing), missing)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    data_error(lambda: load_npz(garbage), garbage)


def test_load_rgb_converts_grayscale_and_reports_missing(tmp_path: Path) -> None:
    Image.fromarray(np.full((3, 4), 77, np.uint8), mode="L").save(tmp_path / "g.png")
    rgb = load_rgb(tmp_path / "g.png")
    assert rgb.shape == (3, 4, 3) and (rgb == 77).all()
    data_error(lambda: load_rgb(tmp_path / "none.jpg"), tmp_path / "none.jpg")
