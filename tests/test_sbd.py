"""SBD's .mat annotations: the level-5 MAT reader and `conta data sbd-masks`.

tests/data/sbd_gtcls_*.mat were written by SciPy's savemat (an independent writer; SciPy is not a
dependency), once compressed and once plain: a GTcls struct laid out as SBD's, with a cell of
sparse boundary maps, a uint8 Segmentation and CategoriesPresent.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from _datasets import SBD_TRAIN, SBD_VAL, VOC_TRAIN, VOC_VAL, make_voc_sbd

from conta.cli import main
from conta.data.matfile import load_mat
from conta.data.sbd import read_sbd_mask, write_sbd_masks
from conta.errors import DataError
from conta.io import load_label_png

DATA = Path(__file__).parent / "data"


def scipy_segmentation() -> np.ndarray:
    """The Segmentation the fixture files were written with."""
    seg = np.zeros((6, 9), np.uint8)
    seg[1:4, 2:6] = 15
    seg[4:6, 6:9] = 3
    seg[0, 8] = 1
    return seg


@pytest.mark.parametrize("name", ["sbd_gtcls_compressed.mat", "sbd_gtcls_plain.mat"])
def test_reads_what_scipy_wrote(name: str) -> None:
    variables = load_mat(DATA / name)
    gt = variables["GTcls"]
    assert gt["Segmentation"].dtype == np.uint8
    np.testing.assert_array_equal(gt["Segmentation"], scipy_segmentation())   # column-major undone
    np.testing.assert_array_equal(gt["CategoriesPresent"].ravel(), [1, 3, 15])
    assert gt["Boundaries"] == [None, None, None]                              # sparse: skipped
    np.testing.assert_array_equal(read_sbd_mask(DATA / name), scipy_segmentation())
    if name == "sbd_gtcls_plain.mat":
        assert variables["note"] == "hi"
        np.testing.assert_array_equal(variables["ratio"], [[0.5, 2.0]])


def _element(kind: int, payload: bytes) -> bytes:
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _matrix(mx_class: int, dims: tuple[int, ...], name: bytes, body: bytes) -> bytes:
    flags = _element(6, struct.pack("<II", mx_class, 0))
    return _element(14, flags + _element(5, struct.pack(f"<{len(dims)}i", *dims)) + _element(1, name) + body)


def write_gtcls(path: Path, segmentation: np.ndarray, version: int = 0x0100) -> None:
    """A compressed level-5 MAT-file holding GTcls.Segmentation, as SBD's cls/<id>.mat files do."""
    seg = _matrix(9, segmentation.shape, b"", _element(2, segmentation.tobytes(order="F")))
    fields = _element(5, struct.pack("<i", 32)) + _element(1, b"Segmentation".ljust(32, b"\0"))
    gtcls = _matrix(2, (1, 1), b"GTcls", fields + seg)
    header = b"MATLAB 5.0 MAT-file, written by a test".ljust(116) + b"\0" * 8 + struct.pack("<H", version) + b"IM"
    compressed = zlib.compress(gtcls)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + struct.pack("<II", 15, len(compressed)) + compressed)


def test_bad_files_name_the_file_and_the_problem(tmp_path: Path) -> None:
    cases = {
        "short.mat": b"MATLAB 5.0",
        "text.mat": b"x" * 200,
        "truncated.mat": (DATA / "sbd_gtcls_plain.mat").read_bytes()[:300],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    write_gtcls(tmp_path / "v73.mat", np.zeros((2, 2), np.uint8), version=0x0200)
    write_gtcls(tmp_path / "labels.mat", np.full((2, 2), 40, np.uint8))
    expected = {"short.mat": "header", "text.mat": "not a MAT-file", "truncated.mat": "past the end",
                "v73.mat": "-v7", "labels.mat": "0..20"}
    for name, problem in expected.items():
        with pytest.raises(DataError) as err:
            read_sbd_mask(tmp_path / name)
        assert name in str(err.value) and problem in str(err.value), str(err.value)
    renamed = tmp_path / "other.mat"                   # a valid MAT-file without GTcls
    renamed.write_bytes((DATA / "sbd_gtcls_plain.mat").read_bytes().replace(b"GTcls", b"GTxxx"))
    with pytest.raises(DataError, match="other.mat.*no GTcls.Segmentation"):
        read_sbd_mask(renamed)


def test_sbd_masks_prefer_official_voc_masks_and_resume(tmp_path: Path, capsys) -> None:
    fixture = make_voc_sbd(tmp_path)
    root, sbd = fixture.root, fixture.sbd
    sbd_masks = {}
    for image_id in SBD_TRAIN + SBD_VAL:          # SBD's own masks: no void band, and class 1 as 20
        mask = fixture.voc.masks[image_id].copy()
        mask[mask == 255] = 0
        mask[mask == 1] = 20
        sbd_masks[image_id] = mask
        write_gtcls(sbd / "dataset" / "cls" / f"{image_id}.mat", mask)
    for png in (root / "SegmentationClassAug").glob("*.png"):
        png.unlink()

    folder, n = write_sbd_masks(root, sbd, workers=1, log=lambda _: None)
    ids = sorted(set(SBD_TRAIN + SBD_VAL + VOC_TRAIN + VOC_VAL))
    assert n == len(ids) and sorted(p.stem for p in folder.glob("*.png")) == ids
    for image_id in ids:
        official = image_id in VOC_TRAIN + VOC_VAL                     # its VOC mask wins, 255 band and all
        expected = fixture.voc.masks[image_id] if official else sbd_masks[image_id]
        np.testing.assert_array_equal(load_label_png(folder / f"{image_id}.png"), expected)

    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    (folder / f"{SBD_VAL[0]}.png").unlink()
    assert main(["data", "sbd-masks", "--root", str(root), "--sbd", str(sbd), "--workers", "1"]) == 0
    assert "1 to write" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.stem != SBD_VAL[0])

    (sbd / "dataset" / "cls" / f"{SBD_TRAIN[1]}.mat").unlink()
    (folder / f"{SBD_TRAIN[1]}.png").unlink()
    with pytest.raises(DataError, match=f"{SBD_TRAIN[1]}.mat"):
        write_sbd_masks(root, sbd, workers=1, log=lambda _: None)
