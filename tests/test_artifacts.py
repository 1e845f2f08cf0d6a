"""The run directory's contract: the round object, the paths it names, and the hand-off formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conta.artifacts.cam_map import CamRecord, read_cam_map, require_cam_maps, write_cam_map
from conta.artifacts.label_png import label_path, read_label, write_label
from conta.config import load_config
from conta.errors import DataError
from conta.io import load_label_png, load_npz
from conta.stages.round_context import RoundContext


def test_round_context_adjusts_the_seed_once_and_names_the_round(tmp_path: Path) -> None:
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=r", "run.seed=5"])
    assert RoundContext.of(cfg, 0).seed == 5 and RoundContext.of(cfg, 2).seed == 7  # conta.vary_seed
    assert RoundContext.of(load_config(None, ["run.seed=5", "conta.vary_seed=false"]), 2).seed == 5
    rnd = RoundContext.of(cfg, 2)
    assert rnd.cfg.cam is cfg.cam and rnd.cfg.run.seed == 7 and cfg.run.seed == 5  # the run's config is untouched
    assert rnd.paths.root == tmp_path / "r" / "round_2"


def test_named_paths_keep_the_layout_of_existing_run_directories(tmp_path: Path) -> None:
    # a run directory made before the paths were named must still resume: same files, same places
    paths = RoundContext.of(load_config(None, [f"run.out_dir={tmp_path}", "run.name=r"]), 1).paths
    named = {
        paths.cam_checkpoint: "cam/checkpoint.pt", paths.cam_model: "cam/model.pt",
        paths.cam_map("2007_000032"): "cam/maps/2007_000032.npz", paths.seed_label("a"): "ir_label/a.png",
        paths.irn_checkpoint: "irn/checkpoint.pt", paths.irn_model: "irn/model.pt",
        label_path(paths.pseudo_mask, "a"): "pseudo_mask/a.png", paths.seg_checkpoint: "seg/checkpoint.pt",
        paths.seg_model: "seg/model.pt", paths.seg_tb: "seg/tb", label_path(paths.seg_pred("val"), "a"): "seg/pred/val/a.png",
        paths.seg_logits("val") / "a.npz": "seg/logits/val/a.npz", paths.confounder: "confounder.npz",
        paths.metrics: "metrics.json",
    }
    for path, relative in named.items():
        assert path == tmp_path / "r" / "round_1" / relative


def test_cam_map_round_trip_stores_float16_and_upsamples_without_high_res(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cam = rng.random((2, 3, 4)).astype(np.float32)           # a 10 x 13 image: ceil(/4) = 3 x 4
    full = rng.random((2, 10, 13)).astype(np.float32)
    write_cam_map(tmp_path / "a.npz", CamRecord(np.array([4, 1]), cam, full))
    stored = load_npz(tmp_path / "a.npz")
    assert stored["keys"].dtype == np.int64 and stored["cam"].dtype == stored["high_res"].dtype == np.float16
    record = read_cam_map(tmp_path / "a.npz", (10, 13))
    np.testing.assert_array_equal(record.cam, cam.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(record.full_res((10, 13)), full.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(record.label_values, [0, 5, 2])
    write_cam_map(tmp_path / "b.npz", CamRecord(np.array([4, 1]), cam))
    upsampled = read_cam_map(tmp_path / "b.npz", (10, 13)).full_res((10, 13))
    assert upsampled.shape == (2, 10, 13) and upsampled.dtype == np.float32
    with pytest.raises(DataError, match=r"c.npz: CAM not found: run `conta cam infer`"):
        read_cam_map(tmp_path / "c.npz", (10, 13))
    with pytest.raises(DataError, match=r"c.npz: CAM missing for 2 images"):
        require_cam_maps(tmp_path, ["a", "c", "d"])


def test_label_png_keeps_values_and_checks_size_and_classes(tmp_path: Path) -> None:
    label = np.array([[0, 1, 255], [3, 0, 2]], np.uint8)
    path = label_path(tmp_path, "x")
    write_label(path, label)
    assert path == tmp_path / "x.png"
    np.testing.assert_array_equal(load_label_png(path), label)
    np.testing.assert_array_equal(read_label(path, (2, 3), n_classes=3), label)
    with pytest.raises(DataError, match=r"x.png: label is 3x2 but its image is 2x3"):
        read_label(path, (3, 2))
    with pytest.raises(DataError, match=r"x.png: label value 3 outside 0..2 \(255 = ignore\)"):
        read_label(path, (2, 3), n_classes=2)
