"""The synthetic stand-in for ImageNet: a world disjoint from the demo's, weights that re-create
bit for bit, and that load by name exactly as by path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from conta.config import Config, PretrainConfig, SynthConfig, load_config, to_dict
from conta.data import synthetic
from conta.data.synthetic import draw_image, part_marker, pretraining_world
from conta.errors import ContaError
from conta.models.resnet import FrozenStatsBatchNorm2d, resnet
from conta.data.synthetic import label_tags
from conta.stages.pretrain import WorldImages, classification_metrics, pretrain
from conta.weights import backbone as weights

ROOT = Path(__file__).resolve().parent.parent


def _markers(synth: SynthConfig) -> set:
    return {part_marker(i + synth.marker_offset) for i in range(len(synth.classes))}


def test_pretraining_world_shares_no_part_marker_with_the_demo() -> None:
    world = pretraining_world(PretrainConfig())
    demo = load_config(ROOT / "configs" / "demo.yaml").data.synth
    assert len(world.classes) >= 50
    assert len(_markers(world)) == len(world.classes)  # every pretraining class has its own marker
    assert not _markers(world) & _markers(SynthConfig())
    assert not _markers(world) & _markers(demo)
    assert set(world.backgrounds) == set(synthetic.BACKGROUND_STYLES)
    assert world.pairs == [] and world.contexts == [] and world.seed != demo.seed


def test_pretraining_images_wear_only_their_own_markers() -> None:
    world = pretraining_world(PretrainConfig(n_classes=60))
    drawn = draw_image(world, "train", 3)
    colours = {tuple(int(v) for v in c) for c in drawn.image[drawn.parts > 0].reshape(-1, 3)}
    own = {part_marker(i + world.marker_offset).colour for i in np.unique(drawn.label[drawn.parts > 0]).astype(int) - 1}
    # solid part pixels carry their marker's colour (JPEG-free: the drawn array itself), +- the noise
    assert any(max(abs(a - b) for a, b in zip(c, m)) < 16 for c in colours for m in own)
    assert label_tags(drawn.label, 60).sum() == len(set(np.unique(drawn.label)) - {0, 255})


def test_world_images_are_new_every_epoch_and_repeatable() -> None:
    data = WorldImages(pretraining_world(PretrainConfig(image_size=32, n_classes=10)), n=4, seed=0)
    first = data[1]["image"]
    data.set_epoch(1)
    assert not torch.equal(data[1]["image"], first)
    data.set_epoch(0)
    assert torch.equal(data[1]["image"], first)


def test_loss_spreads_the_tags_evenly() -> None:
    from conta.stages.pretrain import multilabel_loss

    logits = torch.tensor([[1.0, 0.0, -1.0]])
    loss, _ = multilabel_loss(lambda x: logits, {"image": torch.zeros(1), "label": torch.tensor([[1.0, 1.0, 0.0]])})
    log_p = torch.log_softmax(logits, dim=1)[0]
    assert loss.item() == pytest.approx(-(log_p[0] + log_p[1]).item() / 2)


def test_classification_metrics_by_hand() -> None:
    scores = np.array([[2.0, -1.0], [-0.5, 0.5], [1.0, 3.0]])
    tags = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    m = classification_metrics(scores, tags)
    assert m["top_k_precision"] == pytest.approx(2 / 3)  # image 3's best score is class 2, not its tag
    # class 1: positives ranked 1st and 2nd -> AP 1; class 2: its positive ranked 2nd -> AP 1/2
    assert m["mAP"] == pytest.approx(0.75)


def _tiny(tmp_path: Path, name: str) -> Config:
    return load_config(None, [f"run.out_dir={tmp_path}", f"run.name={name}", "run.device=cpu",
                              "pretrain.width=4", "pretrain.image_size=32", "pretrain.n_classes=8",
                              "pretrain.images_per_epoch=32", "pretrain.epochs=2", "pretrain.batch_size=16",
                              "pretrain.val_images=16", "pretrain.workers=0"])


def test_tiny_pretraining_is_bit_exact_and_loads_strictly(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    paths = [pretrain(_tiny(tmp_path, name), log=lambda _: None) for name in ("a", "b")]
    blobs = [p.read_bytes() for p in paths]
    assert blobs[0] == blobs[1]  # same machine, same thread count: the same bytes
    record = __import__("json").loads(paths[0].with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(blobs[0]).hexdigest()
    assert record["pretrain"] == to_dict(_tiny(tmp_path, "a").pretrain)
    assert {"mAP", "top_k_precision"} <= set(record["held_out"])

    state = torch.load(paths[0], weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert not any(k.startswith("fc.") for k in state)
    # the CAM layout (last stride 1) takes the weights strictly; BN statistics come from the file
    backbone = resnet("resnet18", 4, strides=(2, 2, 2, 1))
    weights.load_backbone_weights(backbone, str(paths[0]), "resnet18")
    bn = backbone.layer2[0].bn1
    assert isinstance(bn, FrozenStatsBatchNorm2d)
    assert torch.equal(bn.running_var, state["layer2.0.bn1.running_var"].float())
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_synthetic_by_name_equals_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = resnet("resnet18", 4)
    for p in made.state_dict().values():
        if p.is_floating_point():
            p.copy_(torch.randn_like(p).abs())
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in made.state_dict().items()},
               tmp_path / f"{weights.synthetic_weights_name('resnet18', 4)}.pt")
    monkeypatch.setattr(weights, "SYNTHETIC_DIR", tmp_path)
    by_name, by_path = resnet("resnet18", 4, strides=(2, 2, 1, 1)), resnet("resnet18", 4, strides=(2, 2, 1, 1))
    weights.load_backbone_weights(by_name, "synthetic", "resnet18")
    weights.load_backbone_weights(by_path, str(tmp_path / "synthetic-resnet18-w4.pt"), "resnet18")
    for (key, a), b in zip(by_name.state_dict().items(), by_path.state_dict().values()):
        assert torch.equal(a, b), key
    with pytest.raises(ContaError, match=r"no shipped weights for resnet18 of width 8 \(shipped: synthetic-resnet18-w4\)"):
        weights.load_backbone_weights(resnet("resnet18", 8), "synthetic", "resnet18", "cam.backbone.pretrained")


SHIPPED = sorted(weights.SYNTHETIC_DIR.glob("synthetic-*.pt"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_weights_match_their_recipe(path: Path) -> None:
    import json

    record = json.loads(path.with_suffix(".json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    recipe = load_config(ROOT / "configs" / "pretrain.yaml")
    assert record["pretrain"] == to_dict(recipe.pretrain) and record["seed"] == recipe.run.seed
    assert path.stem == weights.synthetic_weights_name(recipe.pretrain.arch, recipe.pretrain.width)
    by_name = resnet(recipe.pretrain.arch, recipe.pretrain.width)
    by_path = resnet(recipe.pretrain.arch, recipe.pretrain.width)
    weights.load_backbone_weights(by_name, "synthetic", recipe.pretrain.arch)
    weights.load_backbone_weights(by_path, str(path), recipe.pretrain.arch)
    assert all(torch.equal(a, b) for a, b in zip(by_name.state_dict().values(), by_path.state_dict().values()))


def test_shipped_weights_exist_for_the_demo() -> None:
    demo = load_config(ROOT / "configs" / "demo.yaml")
    for section in (demo.cam.backbone, demo.irn.backbone):
        if section.pretrained == "synthetic":
            assert (weights.SYNTHETIC_DIR / f"{weights.synthetic_weights_name(section.arch, section.width)}.pt").is_file()
    if demo.seg.pretrained == "synthetic":
        assert (weights.SYNTHETIC_DIR / f"{weights.synthetic_weights_name(demo.seg.arch, demo.seg.width)}.pt").is_file()
