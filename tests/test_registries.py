"""The three registries: a dataset from one file trains a CAM step, names are checked by the config,
every registered backbone keeps the protocol the heads use, and the seed refiners."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import toy_dataset

from conta.config import IrLabelConfig, load_config
from conta.data.build import build_dataset, ensure_dataset
from conta.errors import ConfigError
from conta.models.backbone import create_backbone
from conta.ops import refiners
from conta.registry import BACKBONES, DATASETS, REFINERS, Registry
from conta.stages import cam
from conta.stages.data_check import check_dataset
from conta.stages.ir_label import seed_label
from conta.stages.paths import read_metrics
from conta.stages.round_context import RoundContext


def test_a_dataset_from_one_file_trains_a_cam_step(tmp_path: Path) -> None:
    """The worked example of docs/design.md: tests/toy_dataset.py registers `toy_stripes` and nothing
    else is touched."""
    assert "toy_stripes" in DATASETS.names()
    cfg = load_config(None, [
        "data.dataset=toy_stripes", f"data.root={tmp_path / 'toy'}", "data.val_splits=[]",
        f"run.out_dir={tmp_path / 'runs'}", "run.device=cpu", "cam.backbone.arch=resnet18", "cam.backbone.width=4",
        "cam.epochs=1", "cam.batch_size=4", "cam.crop_size=32", "cam.resize_long=[32,32]", "cam.log_every=1"])
    ensure_dataset(cfg.data, log=lambda _: None)
    data = build_dataset(cfg.data, "train")
    expected = np.array([[i % 3 != 1, i % 3 != 0] for i in range(toy_dataset.IMAGES)])
    assert data.class_names == toy_dataset.CLASSES and (data.tag_matrix() > 0).tolist() == expected.tolist()
    assert check_dataset(cfg.data, ["train"], workers=1).ok
    rnd = RoundContext.of(cfg, 0)
    model_path = cam.train(rnd, log=lambda _: None)
    assert model_path.is_file()
    epochs = read_metrics(rnd.paths.metrics)["cam_train"]["epochs"]
    assert len(epochs) == 1 and np.isfinite(epochs[0]["train_loss"])
    assert cam.load_cam_net(model_path).n_classes == 2


@pytest.mark.parametrize(("override", "key"), [
    ("data.dataset=vox", "data.dataset"),
    ("cam.backbone.arch=resnet7", "cam.backbone.arch"),
    ("irn.backbone.arch=vgg16", "irn.backbone.arch"),
    ("seg.arch=resnet152", "seg.arch"),
    ("pretrain.arch=resnet9", "pretrain.arch"),
    ("ir_label.refiner=bilateral", "ir_label.refiner"),
])
def test_unknown_names_are_one_line_config_errors(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^command-line override {override}: {key}: '\w+' is not one of '") as err:
        load_config(None, [override])
    assert "\n" not in str(err.value) and err.value.key == key


def test_a_name_registers_once() -> None:
    registry: Registry = Registry("test.key", "conta.ops")
    entry = registry.register("a")(object())
    registry.register("a")(entry)  # the same entry again (a module imported twice): fine
    with pytest.raises(ValueError, match="'a' is registered twice"):
        registry.register("a")(object())


@pytest.mark.parametrize("arch", BACKBONES.names())
def test_every_backbone_keeps_the_protocol(arch: str) -> None:
    """Five maps at strides 4, 4, 8, 16, 16 (the default strides) with the channels `out_channels` announces."""
    torch.manual_seed(0)
    net = create_backbone(arch, width=4).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = net.forward_stages(x)
        last = net(x)
    assert [f.shape[1] for f in feats] == net.out_channels
    assert [f.shape[-1] for f in feats] == [16, 16, 8, 4, 4]
    assert torch.equal(last, feats[-1])


def test_refiner_none_keeps_the_thresholded_seeds_and_crf_off_equals_it() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)
    cams = rng.random((2, 16, 20)).astype(np.float32)
    values = np.array([0, 3, 7], np.uint8)
    plain = seed_label(image, cams, values, IrLabelConfig(refiner="none"))
    fg, bg = 0.3, 0.05
    top, best = cams.max(0), values[1 + cams.argmax(0)]
    expected = np.where(top > fg, best, np.where(top > bg, 255, 0)).astype(np.uint8)
    assert np.array_equal(plain, expected)
    crf_off = load_config(None, ["ir_label.crf.enabled=false"]).ir_label
    assert crf_off.refiner == "crf"
    assert np.array_equal(seed_label(image, cams, values, crf_off), plain)
    assert REFINERS.get("crf") is refiners.dense_crf
