"""Model files ({model, meta}): one writer and reader, every network rebuilt from its meta, and the
files of the previous layout either loading or naming the command that converts them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conta.artifacts.model_file import load_weights, read_meta, read_model_file, save_model_file
from conta.config import Config, load_config
from conta.engine.checkpoint import save_torch
from conta.errors import ConfigError, DataError
from conta.stages import cam, irn
from conta.stages.paths import round_paths
from conta.stages.round_context import RoundContext

BACKBONE = ["arch=resnet18", "width=4", "strides=[2,2,2,1]", "dilations=[1,1,1,1]"]


def _config(tmp_path: Path, *overrides: str) -> Config:
    return load_config(None, [f"run.out_dir={tmp_path}", "run.name=r",
                              *(f"irn.backbone.{o}" for o in BACKBONE), *overrides])


def test_round_trip_and_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    net = nn.Linear(3, 2)
    save_model_file(path, net.state_dict(), {"kind": "toy", "n": 2})
    weights, meta = read_model_file(path, ("toy",), "a toy")
    assert meta == {"kind": "toy", "n": 2} and torch.equal(weights["weight"], net.weight)
    assert read_meta(path) == meta
    with pytest.raises(DataError, match=r"m\.pt: not an IRN \(a model file of kind toy\)$"):
        read_model_file(path, ("irn",), "an IRN")
    with pytest.raises(DataError, match=r"m\.pt: weights do not match their own meta \(size mismatch"):
        load_weights(nn.Linear(3, 5), weights, path)
    save_torch(tmp_path / "plain.pt", net.state_dict())  # an ImageNet-style state dict
    assert read_meta(tmp_path / "plain.pt") is None
    with pytest.raises(DataError, match="not a toy \\(not a conta model file\\)"):
        read_model_file(tmp_path / "plain.pt", ("toy",), "a toy")
    with pytest.raises(ValueError):
        save_model_file(path, net.state_dict(), {"n": 2})


def _save_irn(cfg: Config, meta: dict) -> tuple[Path, dict]:
    torch.manual_seed(0)
    model = irn.build_irn(meta)
    path = round_paths(cfg, 0).irn_model
    save_model_file(path, model.state_dict(), meta)
    return path, model.state_dict()


def test_the_irn_is_rebuilt_from_its_meta_not_the_config(tmp_path: Path) -> None:
    trained = _config(tmp_path, "irn.backbone.strides=[2,2,1,1]", "irn.displacement=false")
    _, weights = _save_irn(trained, {**irn.irn_meta(trained.irn), "crop_size": 48})
    other = _config(tmp_path, "irn.backbone.arch=resnet34", "irn.backbone.width=8", "irn.displacement=true",
                    "irn.crop_size=96")
    model, crop_size = irn.load_irn(RoundContext.of(other, 0), torch.device("cpu"))
    assert crop_size == 48 and model.displacement_head is None and model.backbone.layer3[0].conv1.stride == (1, 1)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_an_irn_of_the_previous_layout_says_how_to_convert_it_and_converts(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "irn.backbone.strides=[2,2,1,1]")
    old_meta = {"arch": "resnet18", "width": 4, "radius": 5, "images": 8, "steps": 2, "displacement": True,
                "displacement_mean": [0.0, 0.0]}
    path, weights = _save_irn(cfg, {**old_meta, **irn.irn_meta(cfg.irn)})
    save_torch(path, {"model": weights, "meta": old_meta})  # what the previous layout wrote
    with pytest.raises(DataError, match=r"model\.pt: an IRN model file of the previous layout .* `conta irn upgrade"):
        irn.load_irn(RoundContext.of(cfg, 0), torch.device("cpu"))
    with pytest.raises(ConfigError, match="trained with resnet18 width 4"):
        irn.upgrade_irn(RoundContext.of(_config(tmp_path, "irn.backbone.width=8"), 0), log=lambda _: None)
    irn.upgrade_irn(RoundContext.of(cfg, 0), log=lambda _: None)
    model, crop_size = irn.load_irn(RoundContext.of(cfg, 0), torch.device("cpu"))
    assert crop_size == cfg.irn.crop_size and model.backbone.layer3[0].conv1.stride == (1, 1)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert read_meta(path)["radius"] == 5
    with pytest.raises(DataError, match="nothing to upgrade"):
        irn.upgrade_irn(RoundContext.of(cfg, 0), log=lambda _: None)


def test_a_classifier_of_the_previous_layout_still_loads(tmp_path: Path) -> None:
    meta = {"arch": "resnet18", "width": 4, "strides": [2, 2, 2, 1], "dilations": [1, 1, 1, 1], "n_classes": 3,
            "class_names": ["a", "b", "c"], "context_at": None, "context_module": None}
    torch.manual_seed(0)
    model = cam.build_cam_net(meta)
    save_torch(tmp_path / "old.pt", {"model": model.state_dict(), "meta": meta})  # no kind
    loaded = cam.load_cam_net(tmp_path / "old.pt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    cam.save_cam_net(tmp_path / "new.pt", loaded, {**meta, "kind": cam.CAM_KIND})
    assert read_meta(tmp_path / "new.pt")["kind"] == "cam_net"
