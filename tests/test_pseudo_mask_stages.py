"""Stages 2-4 (seed labels, IRN training, random-walk pseudo-masks) on hand-made CAMs and tiny images."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conta.artifacts.cam_map import CamRecord, read_cam_map
from conta.artifacts.model_file import read_meta
from conta.cli import main
from conta.config import Config, IrLabelConfig, PseudoMaskConfig, load_config
from conta.data.build import build_dataset
from conta.errors import ContaError, DataError
from conta.io import load_label_png, save_npz
from conta.ops.crf import crf_available
from conta.models.resnet import resnet
from conta.models.irn import IRN
from conta.stages import pseudo_mask as pm
from conta.stages.ir_label import seed_label
from conta.stages.irn import IrnTrainDataset, train_irn
from conta.stages.paths import read_metrics, round_paths
from conta.stages.round_context import RoundContext

needs_crf = pytest.mark.skipif(not crf_available(), reason="pydensecrf2 not installed")


def _overrides(root: Path, *extra: str) -> list[str]:
    """A CPU-sized round on the tiny fixture: 24 x 32 images, a width-8 ResNet-18 IRN, short walks."""
    return [
        f"data.root={root}", "data.dataset=synthetic", "data.eval_split=val", "run.device=cpu",
        "ir_label.workers=1", "pseudo_mask.workers=1",
        "irn.backbone.arch=resnet18", "irn.backbone.width=8", "irn.backbone.pretrained=null",
        "irn.crop_size=32", "irn.batch_size=2", "irn.epochs=2", "irn.radius=3", "irn.scale_range=[0.9,1.1]",
        "pseudo_mask.radius=3", "pseudo_mask.exp_times=4", *extra,
    ]


def _config(root: Path, out: Path, *extra: str) -> Config:
    return load_config(None, [*_overrides(root, *extra), f"run.out_dir={out}"])


def _write_cams(cfg: Config, fixture, t: int = 0) -> None:
    """Contract-format CAMs: each tagged class's GT region plus a faint halo, at stride 4."""
    dataset = build_dataset(cfg.data, cfg.data.infer_split)
    for image_id in dataset.ids:
        mask = fixture.masks[image_id]
        keys = np.array([dataset.class_names.index(n) for n in fixture.tags[image_id]], np.int64)
        maps = []
        for k in keys:
            region = (mask == k + 1).astype(np.float32)
            strided = region[::4, ::4]  # ceil(H/4) x ceil(W/4)
            maps.append(strided / max(strided.max(), 1e-5))
        cam = np.stack(maps).astype(np.float16)
        save_npz(round_paths(cfg, t).cam_maps / f"{image_id}.npz", keys=keys, cam=cam)


# -- stage 2 ----------------------------------------------------------------------------------


def test_seed_label_thresholds_ignore_band_and_key_mapping() -> None:
    cams = np.array([[[0.9, 0.4, 0.2, 0.04]], [[0.1, 0.5, 0.1, 0.01]]], np.float32)  # 2 classes, 1 x 4
    record = CamRecord(keys=np.array([4, 1]), cam=cams)
    cfg = IrLabelConfig(fg_threshold=0.3, bg_threshold=0.05)
    cfg.crf.enabled = False
    label = seed_label(np.zeros((1, 4, 3), np.uint8), cams, record.label_values, cfg)
    # px0: class index 4 -> label 5; px1: class 1 wins (0.5) -> 2; px2: in the band -> 255; px3: sure bg
    assert label.tolist() == [[5, 2, 255, 0]]
    assert label.dtype == np.uint8


def test_seed_label_without_tags_is_background() -> None:
    cfg = IrLabelConfig()
    cams = np.zeros((0, 3, 3), np.float32)
    assert (seed_label(np.zeros((3, 3, 3), np.uint8), cams, np.array([0], np.uint8), cfg) == 0).all()


@needs_crf
def test_seed_label_crf_snaps_to_the_image() -> None:
    image = np.full((24, 24, 3), 30, np.uint8)
    image[:, 12:] = 220                                   # object = right half, by colour
    cams = np.zeros((1, 24, 24), np.float32)
    cams[0, :, 10:] = 1.0                                  # CAM spills two columns over the edge
    cfg = IrLabelConfig()
    label = seed_label(image, cams, np.array([0, 3], np.uint8), cfg)
    assert (label[:, 12:] == 3).all() and (label[:, :10] == 0).all()
    assert (label[:, 10:12] == 0).mean() > 0.9            # the spill follows the colour edge back


def test_read_cam_rejects_a_wrong_grid(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    save_npz(path, keys=np.array([0]), cam=np.zeros((1, 5, 5), np.float16))
    assert read_cam_map(path, (20, 17)).cam.shape == (1, 5, 5)
    with pytest.raises(DataError, match="expected"):
        read_cam_map(path, (24, 24))


def test_seeds_read_the_stored_full_resolution_cam(tmp_path: Path) -> None:
    # IRNet's cam_to_ir_label thresholds the stored high_res, not the stride-4 CAM upsampled
    path = tmp_path / "a.npz"
    strided = np.zeros((1, 2, 2), np.float16)
    full = np.linspace(0, 1, 8 * 7, dtype=np.float32).reshape(1, 8, 7)
    save_npz(path, keys=np.array([3]), cam=strided, high_res=full.astype(np.float16))
    record = read_cam_map(path, (8, 7))
    np.testing.assert_allclose(record.full_res((8, 7)), full, atol=1e-3)
    assert read_cam_map(path, (8, 7), high_res=False).high_res is None  # the walk leaves it unread
    assert not read_cam_map(path, (8, 7), high_res=False).full_res((8, 7)).any()  # upsampled from zeros
    save_npz(path, keys=np.array([3]), cam=strided, high_res=full[:, :7].astype(np.float16))
    with pytest.raises(DataError, match="high_res has shape"):
        read_cam_map(path, (8, 7))


# -- stage 3 ----------------------------------------------------------------------------------


def test_irn_dataset_label_at_stride_4_with_ignore_padding(tiny_voc, tmp_path: Path) -> None:
    cfg = _config(tiny_voc.root, tmp_path, "irn.scale_range=[0.5,0.5]")
    dataset = build_dataset(cfg.data, "train")
    item = IrnTrainDataset(dataset, dataset.ids, tiny_voc.root / "SegmentationClass", cfg.irn, seed=0)[1]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (8, 8)
    label = item["label"].numpy()
    assert (label == 255).mean() > 0.5                    # a 12 x 16 image in a 32 crop: mostly padding
    assert set(np.unique(label)) <= {0, 1, 2, 3, 255}
    assert (item["image"].abs().sum(0) == 0).float().mean() > 0.5  # padded with 0 = the mean colour


def test_irn_training_resumes_to_the_same_weights(tiny_voc, tmp_path: Path, monkeypatch) -> None:
    def train(name: str) -> dict:
        cfg = _config(tiny_voc.root, tmp_path, f"run.name={name}")
        paths = round_paths(cfg, 0)
        paths.ir_label.parent.mkdir(parents=True, exist_ok=True)
        paths.ir_label.symlink_to(tiny_voc.root / "SegmentationClass")  # GT as seeds: training needs labels only
        return cfg

    straight, resumed = train("straight"), train("resumed")
    train_irn(RoundContext.of(straight, 0), log=lambda _: None)

    import conta.stages.irn as irn_stage
    calls = {"n": 0}
    real = irn_stage.irn_losses

    def crash_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:                                # 4 images / batch 2 = 2 steps per epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(irn_stage, "irn_losses", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_irn(RoundContext.of(resumed, 0), log=lambda _: None)
    assert (round_paths(resumed, 0).irn / "checkpoint.pt").is_file()
    monkeypatch.setattr(irn_stage, "irn_losses", real)
    history = train_irn(RoundContext.of(resumed, 0), log=lambda _: None)

    a = torch.load(round_paths(straight, 0).irn / "model.pt", weights_only=True)["model"]
    b = torch.load(round_paths(resumed, 0).irn / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert [h["epoch"] for h in history] == [1, 2]
    assert not (round_paths(resumed, 0).irn / "checkpoint.pt").exists()
    assert read_metrics(round_paths(resumed, 0).metrics)["irn_train"] == history


# -- stage 4 ----------------------------------------------------------------------------------


def _walk_mask(boundary: torch.Tensor, cam: np.ndarray, monkeypatch) -> np.ndarray:
    monkeypatch.setattr(pm, "infer_boundary_displacement",
                        lambda model, image, crop_size, displacement=True: (boundary, None))
    h, w = boundary.shape
    record = CamRecord(keys=np.array([1]), cam=cam)
    cfg = PseudoMaskConfig(radius=3, exp_times=6, bg_threshold=0.25)
    return pm.pseudo_mask(None, np.zeros((4 * h, 4 * w, 3), np.uint8), record, cfg, torch.device("cpu"), 4 * h)


def test_walk_spreads_without_boundaries_and_stops_at_a_wall(monkeypatch) -> None:
    cam = np.zeros((1, 8, 8), np.float32)
    cam[0, 3:5, 1] = 1.0                                   # a spot on the left
    free = _walk_mask(torch.zeros(8, 8), cam, monkeypatch)
    assert (free == 2).all()                               # keys [1] -> label 2 everywhere

    wall = torch.zeros(8, 8)
    wall[:, 4] = 1.0
    walled = _walk_mask(wall, cam, monkeypatch)
    assert (walled[:, :14] == 2).all() and (walled[:, 20:] == 0).all()


def test_pseudo_mask_is_scale_free(monkeypatch) -> None:
    cam = np.random.default_rng(0).random((1, 6, 6)).astype(np.float32)
    boundary = torch.zeros(6, 6)
    np.testing.assert_array_equal(_walk_mask(boundary, cam, monkeypatch), _walk_mask(boundary, 0.01 * cam, monkeypatch))


def test_bf16_boundary_pass_is_a_switch_close_to_fp32(monkeypatch) -> None:
    """pseudo_mask.irn_amp=bf16 runs the IRN under bf16 autocast and walks a float32 boundary
    within bf16 rounding of the fp32 one; the default stays fp32."""
    torch.manual_seed(0)
    model = IRN(resnet("resnet18", width=8), displacement=False).eval()
    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    record = CamRecord(keys=np.array([0, 2]), cam=np.random.default_rng(2).random((2, 12, 16)).astype(np.float32))
    seen = {}
    real = pm.infer_boundary_displacement

    def spy(*args, **kwargs):
        boundary, shifts = real(*args, **kwargs)
        seen.setdefault("dtypes", []).append(boundary.dtype)
        seen.setdefault("boundaries", []).append(boundary.float())
        return boundary, shifts

    monkeypatch.setattr(pm, "infer_boundary_displacement", spy)
    masks = [pm.pseudo_mask(model, image, record, PseudoMaskConfig(radius=3, exp_times=4, irn_amp=amp),
                            torch.device("cpu"), 32) for amp in ("fp32", "bf16")]
    assert PseudoMaskConfig().irn_amp == "fp32" and seen["dtypes"] == [torch.float32, torch.bfloat16]
    fp32, bf16 = seen["boundaries"]
    assert 0 < (fp32 - bf16).abs().max() < 0.05
    assert (masks[0] == masks[1]).mean() > 0.95


# -- stages 2-4 together ----------------------------------------------------------------------


def test_stages_2_to_4_write_score_and_resume(tiny_voc, tmp_path: Path, capsys) -> None:
    extra = (f"ir_label.crf.enabled={str(crf_available()).lower()}", "pseudo_mask.workers=2")  # a process pool
    cfg = _config(tiny_voc.root, tmp_path, *extra)
    _write_cams(cfg, tiny_voc)
    results = pm.run_pseudo_mask_stages(RoundContext.of(cfg, 0))
    paths = round_paths(cfg, 0)
    for image_id in tiny_voc.ids:
        seed = load_label_png(paths.ir_label / f"{image_id}.png")
        mask = load_label_png(paths.pseudo_mask / f"{image_id}.png")
        assert seed.shape == mask.shape == tiny_voc.masks[image_id].shape
        assert 255 not in mask and mask.max() <= 3
    assert read_meta(paths.irn_model)["crop_size"] == 32  # inference pads to the crop the IRN was trained on
    metrics = json.loads(paths.metrics.read_text())
    assert metrics["ir_label"]["images"] == metrics["pseudo_mask"]["images"] == 2  # val = the last two
    numbers = [metrics["ir_label"][k] for k in ("precision", "recall", "coverage", "ignored_fraction")]
    numbers.append(metrics["pseudo_mask"]["miou"])
    numbers += [v for epoch in metrics["irn_train"] for k, v in epoch.items() if k.startswith("train_")]
    assert all(math.isfinite(v) for v in numbers)
    assert metrics["ir_label"]["precision"] > 0.9         # seeds from GT-shaped CAMs are right where they are set
    assert results["pseudo_mask"]["miou"] == metrics["pseudo_mask"]["miou"]

    outputs = [*paths.ir_label.glob("*.png"), *paths.pseudo_mask.glob("*.png"), paths.irn / "model.pt"]
    stamps = {path: path.stat().st_mtime_ns for path in outputs}
    lost = tiny_voc.ids[1]
    (paths.ir_label / f"{lost}.png").unlink()
    (paths.pseudo_mask / f"{lost}.png").unlink()
    capsys.readouterr()
    assert main(["pseudo-mask", "--run-dir", str(cfg.run_dir), *_overrides(tiny_voc.root, *extra)]) == 0
    out = capsys.readouterr().out
    assert "1 to make, 3 already done" in out and "training skipped" in out
    for path, stamp in stamps.items():
        if lost not in path.name:
            assert path.stat().st_mtime_ns == stamp, path
    assert (paths.ir_label / f"{lost}.png").is_file() and (paths.pseudo_mask / f"{lost}.png").is_file()


def test_missing_crf_backend_names_the_switch(tiny_voc, tmp_path: Path, monkeypatch) -> None:
    cfg = _config(tiny_voc.root, tmp_path)
    _write_cams(cfg, tiny_voc)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ContaError, match="ir_label.crf.enabled=false"):
        pm.run_pseudo_mask_stages(RoundContext.of(cfg, 0), ("ir_label",))


def test_cli_steps_are_checked(capsys) -> None:
    assert main(["pseudo-mask", "--steps", "ir_label,walk"]) == 2
    assert "unknown step 'walk'" in capsys.readouterr().err


def test_a_bad_irn_file_fails_in_one_line_before_the_pool_starts(tiny_voc, tmp_path: Path, capsys) -> None:
    extra = ("pseudo_mask.workers=2",)
    cfg = _config(tiny_voc.root, tmp_path, *extra)
    _write_cams(cfg, tiny_voc)
    paths = round_paths(cfg, 0)
    paths.irn_model.parent.mkdir(parents=True)
    paths.irn_model.write_bytes(b"not a torch file")
    args = ["pseudo-mask", "--steps", "pseudo_mask", "--run-dir", str(cfg.run_dir), *_overrides(tiny_voc.root, *extra)]
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert str(paths.irn_model) in err and len(err.splitlines()) == 1, err
    assert not list(paths.pseudo_mask.glob("*.png"))
