"""The CAM stage on a tiny generated dataset: augmentation with a context map, mAP, leakage,
exact resume, and train -> infer -> eval -> show through the CLI (with and without context)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import conta.engine.trainer as trainer
from conta.artifacts.cam_map import write_cam_map
from conta.cli import main
from conta.config import CamConfig, Config, load_config
from conta.data.build import build_dataset, ensure_dataset
from conta.data.transforms import denormalize
from conta.errors import ContaError
from conta.eval.metrics import Leakage, average_precision
from conta.io import load_json, load_npz
from conta.models.cam_net import CamNet
from conta.models.resnet import resnet
from conta.stages import cam
from conta.stages.paths import round_paths
from conta.stages.round_context import RoundContext

TINY = {
    "run": {"name": "tiny", "device": "cpu"},
    "data": {"dataset": "synthetic", "val_splits": ["val"],
             "synth": {"image_size": 64, "n_train": 8, "n_val": 4, "n_val_deconfounded": 0}},
    "cam": {"backbone": {"arch": "resnet18", "width": 4}, "batch_size": 4, "epochs": 2, "crop_size": 64,
            "resize_long": [48, 80], "scales": [1.0, 0.5], "sweep": [0.1, 0.2]},
}


def write_config(folder: Path) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_dataset(load_config(write_config(root.parent), [f"data.root={root}"]).data, log=lambda _: None)
    return root


def tiny_config(tmp_path: Path, data_root: Path, *extra: str) -> Config:
    return load_config(write_config(tmp_path), [f"data.root={data_root}", f"run.out_dir={tmp_path / 'runs'}", *extra])


def quiet(_: str) -> None:
    pass


def test_average_precision_by_hand() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.4], [0.3, 0.2, 0.3], [0.1, 0.9, 0.2]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    # class 0 ranks +,-,+,-: precisions 1/1 and 2/3; class 1 ranks -,+,-,-: 1/2; class 2 has no positive
    ap = average_precision(scores, labels)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2) and ap[1] == pytest.approx(0.5) and np.isnan(ap[2])


def test_leakage_by_hand() -> None:
    gt = np.array([[0, 0, 2, 2], [0, 1, 2, 255]], np.uint8)
    cams = np.array([[[0.0, 0.5, 1.0, 0.5], [0.0, 1.0, 0.0, 9.0]]])  # class 0 (label 1); 255 is ignored
    probe = Leakage("a -> b", source=0, target=2, partner=1)
    probe.update([0, 1], np.concatenate([cams, cams]), gt)
    probe.update([0], cams, gt)  # partner not tagged: not counted
    assert probe.result() == pytest.approx({"share": 1.5 / 3.0, "area": 3 / 7, "images": 1})
    background = Leakage("a -> background", source=0, target=0)
    background.update([0], cams, gt)
    assert background.result()["share"] == pytest.approx(0.5 / 3.0)


def test_context_follows_the_image_geometry(tmp_path: Path, data_root: Path) -> None:
    cfg = tiny_config(tmp_path, data_root, "cam.resize_long=[32,48]")  # smaller than the crop: padded
    data = build_dataset(cfg.data, "train")
    gray = {i: data.image(i).mean(axis=2).astype(np.float32) / 255 for i in data.ids}
    samples = cam.CamTrainSet(data, cfg.cam, seed=0, provider=gray.__getitem__)
    for epoch in range(2):
        samples.set_epoch(epoch)
        for index in range(len(data)):
            sample = samples[index]
            image = denormalize(sample["image"].numpy().transpose(1, 2, 0)).mean(axis=2) / 255
            context = sample["context"][0].numpy()
            assert sample["context"].shape == (1, 64, 64)
            padded = (sample["image"] == 0).all(dim=0).numpy()
            assert padded.any() and (context[padded] == 0).all()
            assert np.corrcoef(image[~padded], context[~padded])[0, 1] > 0.95
    small = cam.CamTrainSet(data, cfg.cam, seed=0, provider=lambda _: np.ones((8, 8), np.float32))
    assert small[0]["context"].shape == (1, 8, 8)


def test_resume_after_an_interruption_is_exact(tmp_path: Path, data_root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    straight = tiny_config(tmp_path, data_root, "run.name=straight")
    cam.train(RoundContext.of(straight, 0), log=quiet)

    resumed = tiny_config(tmp_path, data_root, "run.name=resumed")
    real_save = trainer.save_checkpoint

    def save_then_crash(path: Path, **state: object) -> None:
        real_save(path, **state)
        if state["epoch"] == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        cam.train(RoundContext.of(resumed, 0), log=quiet)
    assert not (round_paths(resumed, 0).cam / "model.pt").exists()
    monkeypatch.undo()
    cam.train(RoundContext.of(resumed, 0), log=quiet)

    a = torch.load(round_paths(straight, 0).cam / "model.pt", weights_only=True)
    b = torch.load(round_paths(resumed, 0).cam / "model.pt", weights_only=True)
    assert a["meta"] == b["meta"] and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_cli_train_infer_eval_show(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["--config", str(write_config(tmp_path)), f"data.root={data_root}", f"run.out_dir={tmp_path / 'runs'}"]
    for step in ("train", "infer", "eval"):
        assert main(["cam", step, *common]) == 0
    cfg = tiny_config(tmp_path, data_root)
    paths = round_paths(cfg, 0)
    data = build_dataset(cfg.data, "train")
    for image_id in data.ids:
        with np.load(paths.cam_maps / f"{image_id}.npz", allow_pickle=False) as stored:
            assert set(stored.files) == {"keys", "cam", "high_res"}
            keys, strided, high = stored["keys"], stored["cam"], stored["high_res"]
        assert keys.dtype == np.int64 and strided.dtype == np.float16 and high.dtype == np.float16
        np.testing.assert_array_equal(keys, np.flatnonzero(data.tags(image_id)))
        assert strided.shape == (len(keys), 16, 16) and high.shape == (len(keys), 64, 64)
        assert np.all(strided >= 0) and np.all(strided.reshape(len(keys), -1).max(axis=1) <= 1)

    metrics = load_json(paths.metrics)
    assert len(metrics["cam_train"]["epochs"]) == 2 and "val_mAP" in metrics["cam_train"]["epochs"][-1]
    scores = metrics["cam"]
    assert np.isfinite(scores["miou"]) and 0 <= scores["miou"] <= 1
    assert [p["threshold"] for p in scores["sweep"]] == [0.1, 0.15, 0.2]
    assert set(scores["baselines"]) == {"all_background", "tag_fill"}
    assert "horse -> person" in scores["leakage"] and "boat -> background (water context)" in scores["leakage"]
    assert "mIoU" in capsys.readouterr().out

    before = {p: p.stat().st_mtime_ns for p in paths.cam_maps.iterdir()}
    assert main(["cam", "infer", *common]) == 0  # complete: nothing is rewritten
    assert {p: p.stat().st_mtime_ns for p in paths.cam_maps.iterdir()} == before

    out = tmp_path / "show.png"
    assert main(["cam", "show", *common, "--id", data.ids[0], "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 0


def test_scaled_inputs_are_pil_bicubic_on_uint8_then_normalised() -> None:
    # IRNet's VOC12ClassificationDatasetMSF: pil_rescale(img, s, order=3) to round(H s) x round(W s)
    # on the uint8 image (scale 1 untouched), then the ImageNet normalisation
    image = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    inputs = cam.scaled_inputs(image, [1.0, 0.5, 1.5])
    assert [tuple(x.shape) for x in inputs] == [(3, 37, 50), (3, 18, 25), (3, 56, 75)]  # round(18.5) = 18
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for x, s in zip(inputs, [1.0, 0.5, 1.5]):
        resized = image if s == 1 else np.asarray(Image.fromarray(image).resize(
            (round(50 * s), round(37 * s)), Image.BICUBIC))
        np.testing.assert_allclose(x.numpy().transpose(1, 2, 0), (resized / 255.0 - mean) / std, atol=1e-5)


def test_high_res_switch_stores_the_direct_fusion_or_nothing(tmp_path: Path) -> None:
    model = CamNet(resnet("resnet18", width=4), 3).eval()
    x, keys, cpu = cam.scaled_inputs(np.zeros((37, 50, 3), np.uint8) + 90, [1.0, 0.5]), np.array([0, 2]), torch.device("cpu")
    x[0][:, 5:20, 10:30] = 1.0
    direct = cam.cam_record(model, x, (37, 50), keys, CamConfig(scales=[1.0, 0.5]), cpu)
    upsampled = cam.cam_record(model, x, (37, 50), keys, CamConfig(scales=[1.0, 0.5], high_res="upsampled"), cpu)
    assert direct.high_res.shape == (2, 37, 50) and upsampled.high_res is None
    np.testing.assert_array_equal(direct.cam, upsampled.cam)
    write_cam_map(tmp_path / "a.npz", direct)
    stored = load_npz(tmp_path / "a.npz")
    assert set(stored) == {"keys", "cam", "high_res"} and stored["high_res"].dtype == np.float16
    write_cam_map(tmp_path / "b.npz", upsampled)
    assert set(load_npz(tmp_path / "b.npz")) == {"keys", "cam"}


def test_context_input_trains_saves_and_is_required(tmp_path: Path, data_root: Path) -> None:
    rnd = RoundContext.of(tiny_config(tmp_path, data_root, "cam.epochs=1"), 1)
    provider = lambda _: np.ones((8, 8), np.float32)  # noqa: E731
    cam.train(rnd, cam.Intervention(provider, "stage3", nn.Conv2d(1, 1, 1)), log=quiet)
    saved = torch.load(rnd.paths.cam_model, weights_only=True)
    assert saved["meta"]["context_at"] == "stage3" and saved["meta"]["context_module"] == "Conv2d"
    assert "context_module.weight" in saved["model"]
    with pytest.raises(ContaError, match="context module"):
        cam.infer(rnd, log=quiet)
    with pytest.raises(ContaError, match="context module"):
        cam.infer(rnd, cam.Intervention(provider, "stage3"), log=quiet)
    cam.infer(rnd, cam.Intervention(provider, "stage3", nn.Conv2d(1, 1, 1)), log=quiet)
    assert len(list(rnd.paths.cam_maps.glob("*.npz"))) == len(build_dataset(rnd.cfg.data, "train"))
