"""ResNet backbones: shapes, strides, torchvision key names, frozen-statistics BN and its conversion,
strict weight loading."""

from __future__ import annotations

import pytest
import torch

from conta.errors import ContaError
from conta.models.resnet import FrozenStatsBatchNorm2d, convert_batchnorm, resnet
from conta.weights.backbone import load_backbone_weights

LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
EXPANSION = {"resnet18": 1, "resnet34": 1, "resnet50": 4, "resnet101": 4}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("arch", list(LAYERS))
def test_irnet_layout_stride_16(arch: str) -> None:
    width, e = 8, EXPANSION[arch]
    model = resnet(arch, width=width).eval()
    feats = model.forward_stages(torch.randn(1, 3, 64, 96))
    assert model.out_channels == [width, width * e, 2 * width * e, 4 * width * e, 8 * width * e]
    assert [f.shape[1] for f in feats] == model.out_channels
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (16, 24), (8, 12), (4, 6), (4, 6)]
    assert torch.equal(model(torch.zeros(1, 3, 64, 96)), model.forward_stages(torch.zeros(1, 3, 64, 96))[-1])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stride_in_1x1", [False, True])
def test_deeplab_layout_stride_8(arch: str, stride_in_1x1: bool) -> None:
    model = resnet(arch, width=4, strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4),
                   stride_in_1x1=stride_in_1x1, maxpool_ceil_mode=True).eval()
    feats = model.forward_stages(torch.randn(1, 3, 65, 65))
    assert [f.shape[-1] for f in feats] == [17, 17, 9, 9, 9]
    assert [b.conv2.dilation for b in model.layer3] == [(2, 2)] * len(model.layer3)
    assert [b.conv2.dilation for b in model.layer4] == [(4, 4)] * len(model.layer4)


def test_stride_in_1x1_moves_the_stride() -> None:
    tv = resnet("resnet50", width=4)
    msra = resnet("resnet50", width=4, stride_in_1x1=True)
    assert (tv.layer2[0].conv1.stride, tv.layer2[0].conv2.stride) == ((1, 1), (2, 2))
    assert (msra.layer2[0].conv1.stride, msra.layer2[0].conv2.stride) == ((2, 2), (1, 1))
    assert tv.state_dict().keys() == msra.state_dict().keys()


def _out_of_place(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's function written as relu(residual + shortcut), allocating every intermediate."""
    identity = x if block.downsample is None else block.downsample(x)
    out = torch.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "conv3"):
        out = torch.relu(block.bn2(block.conv2(out)))
        return torch.relu(block.bn3(block.conv3(out)) + identity)
    return torch.relu(block.bn2(block.conv2(out)) + identity)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_in_place_residual_is_bit_identical_forward_and_backward(arch: str) -> None:
    """The in-place add and ReLU (torchvision's) must compute exactly the out-of-place function,
    gradients included, and leave the block's input untouched."""
    model = resnet(arch, width=4)
    for m in model.modules():  # non-trivial BN so that every term matters
        if isinstance(m, FrozenStatsBatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.bias.data.uniform_(-0.5, 0.5)
    for block in (model.layer1[1], model.layer2[0]):  # identity and projection shortcuts
        x = torch.randn(2, block.conv1.in_channels, 9, 11)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours, ref = block(x1), _out_of_place(block, x2)
        assert torch.equal(ours, ref) and torch.equal(x1.detach(), x)
        g = torch.randn_like(ours)
        grads = [torch.autograd.grad(y, [xi, *block.parameters()], g) for y, xi in ((ours, x1), (ref, x2))]
        assert all(torch.equal(a, b) for a, b in zip(*grads))


def _expected_tensor_count(layers: tuple[int, ...]) -> int:
    """Bottleneck ResNet without fc: every conv has 1 tensor, every BN 5, one projection per layer."""
    conv_bn = 1 + 5
    return conv_bn + sum(layers) * 3 * conv_bn + len(layers) * conv_bn


@pytest.mark.parametrize("arch,count", [("resnet50", 318), ("resnet101", 624)])
def test_torchvision_state_dict_keys(arch: str, count: int) -> None:
    keys = list(resnet(arch, width=4).state_dict())
    assert len(keys) == _expected_tensor_count(LAYERS[arch]) == count
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.num_batches_tracked", "layer4.2.bn3.running_var", "layer3.5.conv2.weight"):
        assert key in keys
    assert not any(k.startswith("fc.") for k in keys)
    assert "layer1.1.downsample.0.weight" not in keys


def test_all_bn_layers_are_frozen_stats() -> None:
    bns = [m for m in resnet("resnet18", width=4).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FrozenStatsBatchNorm2d) for m in bns)


def test_frozen_stats_bn_ignores_batch_statistics() -> None:
    bn = FrozenStatsBatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        bn.weight.copy_(torch.tensor([1.5, 1.0, -2.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.1, 0.2]))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    train_out = bn.train()(x)
    eval_out = bn.eval()(x)
    assert torch.allclose(train_out, eval_out)
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert set(before) == set(torch.nn.BatchNorm2d(3).state_dict())


def test_frozen_stats_bn_affine_still_learns() -> None:
    bn = FrozenStatsBatchNorm2d(2).train()
    bn(torch.randn(2, 2, 3, 3)).sum().backward()
    assert bn.weight.grad is not None and bn.bias.grad is not None


# ---- weights ---------------------------------------------------------------------------------


def _save_torchvision_file(model: torch.nn.Module, path, n_out: int = 10) -> None:
    state = dict(model.state_dict())
    state["fc.weight"] = torch.randn(n_out, model.out_channels[-1])
    state["fc.bias"] = torch.randn(n_out)
    torch.save(state, path)


def test_weights_round_trip(tmp_path) -> None:
    source = resnet("resnet50", width=8)
    with torch.no_grad():
        for buf in source.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    path = tmp_path / "resnet50-19c8e357.pth"
    _save_torchvision_file(source, path)
    target = resnet("resnet50", width=8)
    report = load_backbone_weights(target, str(path), "resnet50")
    assert report.loaded == 318
    assert report.skipped == ["fc.weight", "fc.bias"]
    assert str(report) == f"loaded 318 tensors from {path} (skipped: fc.weight, fc.bias)"
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_weights_nested_and_without_bn_counters(tmp_path) -> None:
    """Old torchvision files lack num_batches_tracked; checkpoints may nest under "state_dict"."""
    source = resnet("resnet18", width=4)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "nested.pth"
    torch.save({"state_dict": state}, path)
    target = resnet("resnet18", width=4)
    report = load_backbone_weights(target, str(path), "resnet18")
    assert report.loaded == len(state) and report.skipped == []
    assert torch.equal(target.conv1.weight, source.conv1.weight)


def test_weights_missing_file(tmp_path) -> None:
    with pytest.raises(ContaError, match="nope-123.pth"):
        load_backbone_weights(resnet("resnet18", width=4), str(tmp_path / "nope-123.pth"), "resnet18")


def test_weights_wrong_width(tmp_path) -> None:
    path = tmp_path / "wide.pth"
    _save_torchvision_file(resnet("resnet18", width=8), path)
    with pytest.raises(ContaError, match=r"wide\.pth.*'conv1\.weight'"):
        load_backbone_weights(resnet("resnet18", width=4), str(path), "resnet18")


def test_weights_unexpected_key_and_garbage(tmp_path) -> None:
    model = resnet("resnet18", width=4)
    state = dict(model.state_dict())
    state["head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ContaError, match="head.weight"):
        load_backbone_weights(model, str(tmp_path / "extra.pth"), "resnet18")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ContaError, match="text.pth"):
        load_backbone_weights(model, str(tmp_path / "text.pth"), "resnet18")


def test_weights_hub_empty_and_present(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = resnet("resnet18", width=4)
    with pytest.raises(ContaError, match=r"resnet18-5c106cde\.pth") as info:
        load_backbone_weights(model, "hub", "resnet18", config_key="cam.backbone.pretrained")
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value)
    assert "cam.backbone.pretrained" in str(info.value)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    _save_torchvision_file(model, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    report = load_backbone_weights(resnet("resnet18", width=4), "hub", "resnet18")
    assert report.source.endswith("resnet18-f37072fd.pth")


def test_convert_batchnorm_shares_parameters_and_statistics() -> None:
    model = resnet("resnet18", width=4)
    model.bn1.running_mean.fill_(0.5)
    weight = model.bn1.weight
    keys = model.state_dict().keys()
    convert_batchnorm(model, FrozenStatsBatchNorm2d, torch.nn.BatchNorm2d)
    assert type(model.bn1) is torch.nn.BatchNorm2d and type(model.layer4[0].downsample[1]) is torch.nn.BatchNorm2d
    assert not any(isinstance(m, FrozenStatsBatchNorm2d) for m in model.modules())
    assert model.bn1.weight is weight and torch.equal(model.bn1.running_mean, torch.full((4,), 0.5))
    assert model.state_dict().keys() == keys
    model.train()(torch.randn(2, 3, 32, 32))
    assert not torch.equal(model.bn1.running_mean, torch.full((4,), 0.5))  # now it learns statistics
