"""Weight conversion: a tiny Caffe DeepLab / MSRA ResNet written as a real NetParameter, and a
synthetic deeplab-pytorch state dict, converted, loaded strictly and compared tensor by tensor."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conta.cli import main
from conta.errors import ContaError
from conta.models.deeplab import deeplab_v2
from conta.weights.caffe.proto import message_class
from conta.weights.convert import (BN_EPS, convert_caffemodel, convert_deeplab_pytorch, load_converted,
                                   save_conversion)

WIDTH = 4
BLOCKS_101 = (3, 4, 23, 3)
BLOCKS_50 = (3, 4, 6, 3)


class CaffeNet:
    """Writes a Caffe ResNet layer by layer with MSRA names and keeps every blob for comparison."""

    def __init__(self, seed: int = 0) -> None:
        self.net = message_class("NetParameter")()
        self.rng = np.random.default_rng(seed)
        self.blobs: dict[str, list[np.ndarray]] = {}

    def layer(self, name: str, kind: str, *arrays: np.ndarray):
        layer = self.net.layer.add(name=name, type=kind)
        for array in arrays:
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.reshape(-1).tolist())
        self.blobs[name] = list(arrays)
        return layer

    def conv(self, name: str, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, bias: bool = False):
        arrays = [self.rng.normal(size=(cout, cin, k, k)).astype(np.float32)]
        if bias:
            arrays.append(self.rng.normal(size=cout).astype(np.float32))
        layer = self.layer(name, "Convolution", *arrays)
        p = layer.convolution_param
        p.num_output, p.bias_term = cout, bias
        p.kernel_size.append(k)
        if stride > 1:
            p.stride.append(stride)
        if k > 1:
            p.pad.append(dilation * (k // 2))
        if dilation > 1:
            p.dilation.append(dilation)

    def bn_scale(self, suffix: str, c: int, factor: float = 999.98, eps: float = BN_EPS) -> None:
        mean = self.rng.normal(size=c).astype(np.float32)
        var = self.rng.uniform(0.5, 2.0, size=c).astype(np.float32)
        bn = self.layer(f"bn{suffix}", "BatchNorm", mean * factor, var * factor, np.array([factor], np.float32))
        bn.batch_norm_param.eps = eps
        scale = self.layer(f"scale{suffix}", "Scale", self.rng.normal(size=c).astype(np.float32),
                           self.rng.normal(size=c).astype(np.float32))
        scale.scale_param.bias_term = True
        self.layer(f"{suffix}_relu", "ReLU")

    def save(self, path: Path) -> Path:
        path.write_bytes(self.net.SerializeToString())
        return path


def block_name(stage: int, index: int, numbered: tuple[int, ...]) -> str:
    """MSRA naming: res2a, res2b, ... except in `numbered` stages: res4a, res4b1 ... res4b22
    (ResNet-101 numbers stages 3 and 4, ResNet-50 none)."""
    if index == 0:
        return f"{stage}a"
    return f"{stage}b{index}" if stage in numbered else f"{stage}{chr(ord('a') + index)}"


def caffe_resnet(blocks: tuple[int, ...], numbered: tuple[int, ...] = (), stride_in_1x1: bool = True, eps: float = BN_EPS,
                 aspp: tuple[int, ...] = (), n_classes: int = 3, msc: bool = False, fc1000: bool = False) -> CaffeNet:
    """DeepLab v2's trunk (res3 strides 2, res4/res5 dilated 2/4) with optional ASPP, MSC twins and fc1000."""
    net = CaffeNet()
    net.layer("data", "Input")
    net.conv("conv1", 3, WIDTH, 7, stride=2)
    net.bn_scale("_conv1", WIDTH, eps=eps)
    cin = WIDTH
    for i, n in enumerate(blocks):
        stage, planes = i + 2, WIDTH * 2**i
        stride, dilation = (2 if stage == 3 else 1), {4: 2, 5: 4}.get(stage, 1)
        for b in range(n):
            name = block_name(stage, b, numbered)
            s = stride if b == 0 else 1
            if b == 0:
                net.conv(f"res{name}_branch1", cin, planes * 4, 1, stride=s)
                net.bn_scale(f"{name}_branch1", planes * 4, eps=eps)
            net.conv(f"res{name}_branch2a", cin, planes, 1, stride=s if stride_in_1x1 else 1)
            net.bn_scale(f"{name}_branch2a", planes, eps=eps)
            net.conv(f"res{name}_branch2b", planes, planes, 3, stride=1 if stride_in_1x1 else s, dilation=dilation)
            net.bn_scale(f"{name}_branch2b", planes, eps=eps)
            net.conv(f"res{name}_branch2c", planes, planes * 4, 1)
            net.bn_scale(f"{name}_branch2c", planes * 4, eps=eps)
            cin = planes * 4
    for k, rate in enumerate(aspp):
        net.conv(f"fc1_voc12_c{k}", cin, n_classes, 3, dilation=rate, bias=True)
    if msc:  # DeepLab's MSC prototxt repeats layers for the 0.75 and 0.5 inputs, sharing weights
        net.conv("conv1_res075", 3, WIDTH, 7, stride=2)
        net.conv("fc1_voc12_c0_res05", cin, n_classes, 3, dilation=aspp[0], bias=True)
    if fc1000:
        net.layer("fc1000", "InnerProduct", net.rng.normal(size=(10, cin)).astype(np.float32),
                  np.zeros(10, np.float32))
    return net


def test_caffe_deeplab_resnet101_converts_strictly_with_every_tensor_mapped(tmp_path: Path) -> None:
    net = caffe_resnet(BLOCKS_101, numbered=(3, 4), aspp=(6, 12, 18, 24), msc=True)
    conversion = convert_caffemodel(net.save(tmp_path / "train2_iter_20000.caffemodel"))
    meta = conversion.meta
    assert meta["kind"] == "deeplab_v2" and meta["arch"] == "resnet101" and meta["width"] == WIDTH
    assert meta["stride_in_1x1"] is True and meta["normalization"] == "caffe"
    assert meta["n_classes"] == 3 and meta["atrous_rates"] == [6, 12, 18, 24]
    backbone_convs = 1 + 3 * sum(BLOCKS_101) + 4  # stem, three per block, one shortcut per stage
    assert conversion.converted == backbone_convs * 5 + 4 * 2  # conv + 4 BN tensors each; ASPP weight + bias
    assert {name for name, _ in conversion.skipped} == {"conv1_res075", "fc1_voc12_c0_res05"}

    out = save_conversion(conversion, tmp_path / "deeplab.pth")
    saved = torch.load(out, map_location="cpu", weights_only=True)
    model = deeplab_v2(3, "resnet101", WIDTH, meta["atrous_rates"], stride_in_1x1=True)
    model.load_state_dict(saved["model"], strict=True)
    state, blobs = saved["model"], net.blobs
    torch.testing.assert_close(state["base.backbone.layer3.22.conv2.weight"], torch.from_numpy(blobs["res4b22_branch2b"][0]))
    torch.testing.assert_close(state["base.backbone.layer1.0.downsample.0.weight"], torch.from_numpy(blobs["res2a_branch1"][0]))
    mean, var, factor = blobs["bn5c_branch2c"]
    torch.testing.assert_close(state["base.backbone.layer4.2.bn3.running_mean"], torch.from_numpy(mean / factor[0]))
    torch.testing.assert_close(state["base.backbone.layer4.2.bn3.running_var"], torch.from_numpy(var / factor[0]))
    torch.testing.assert_close(state["base.backbone.bn1.weight"], torch.from_numpy(blobs["scale_conv1"][0]))
    torch.testing.assert_close(state["base.backbone.layer2.0.downsample.1.bias"], torch.from_numpy(blobs["scale3a_branch1"][1]))
    torch.testing.assert_close(state["base.aspp.branches.3.bias"], torch.from_numpy(blobs["fc1_voc12_c3"][1]))
    assert model.eval()(torch.randn(1, 3, 33, 33)).shape == (1, 3, 5, 5)


def test_caffe_imagenet_resnet50_backbone_detects_layout_and_folds_eps(tmp_path: Path) -> None:
    net = caffe_resnet(BLOCKS_50, stride_in_1x1=False, eps=1e-3, fc1000=True)
    conversion = convert_caffemodel(net.save(tmp_path / "ResNet-50-model.caffemodel"))
    meta = conversion.meta
    assert (meta["kind"], meta["arch"], meta["stride_in_1x1"]) == ("resnet_backbone", "resnet50", False)
    assert [name for name, _ in conversion.skipped] == ["fc1000"]
    assert any("eps 0.001 folded" in note for note in conversion.notes)
    mean, var, factor = net.blobs["bn4f_branch2a"]
    expected = var / factor[0] + np.float32(1e-3 - BN_EPS)
    torch.testing.assert_close(conversion.state["layer3.5.bn1.running_var"], torch.from_numpy(expected))
    assert "conv1.weight" in conversion.state and not any(k.startswith("fc") for k in conversion.state)

    model = deeplab_v2(5, "resnet50", WIDTH, stride_in_1x1=False)
    message = load_converted(model, save_conversion(conversion, tmp_path / "r50.pth"))
    assert "ASPP randomly initialised" in message
    torch.testing.assert_close(model.base.backbone.layer3[5].bn1.running_var, torch.from_numpy(expected))


def test_load_converted_skips_a_foreign_aspp_and_refuses_the_other_layout(tmp_path: Path) -> None:
    net = caffe_resnet(BLOCKS_50, aspp=(6, 12), n_classes=4)
    path = save_conversion(convert_caffemodel(net.save(tmp_path / "m.caffemodel")), tmp_path / "m.pth")
    same = deeplab_v2(4, "resnet50", WIDTH, (6, 12), stride_in_1x1=True)
    assert load_converted(same, path).startswith("loaded trunk and ASPP")
    torch.testing.assert_close(same.base.aspp.branches[1].weight, torch.from_numpy(net.blobs["fc1_voc12_c1"][0]))
    other = deeplab_v2(7, "resnet50", WIDTH, (6, 12), stride_in_1x1=True)
    assert "classes or rates differ" in load_converted(other, path)
    with pytest.raises(ContaError, match="stride_in_1x1=True"):
        load_converted(deeplab_v2(4, "resnet50", WIDTH, (6, 12), stride_in_1x1=False), path)


def test_caffe_errors_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = caffe_resnet(BLOCKS_50)
    net.layer("mystery", "Convolution", np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(ContaError, match="'mystery'"):
        convert_caffemodel(net.save(tmp_path / "bad.caffemodel"))
    (tmp_path / "text.caffemodel").write_text("name: 'a prototxt'\nlayer { name: 'x' }\n")
    with pytest.raises(ContaError, match="text.caffemodel"):
        convert_caffemodel(tmp_path / "text.caffemodel")
    with pytest.raises(ContaError, match="caffemodel not found"):
        convert_caffemodel(tmp_path / "absent.caffemodel")
    monkeypatch.setitem(sys.modules, "conta.weights.caffe.reader", None)  # as if protobuf were missing
    with pytest.raises(ContaError, match=r'pip install "conta\[caffe\]"'):
        convert_caffemodel(tmp_path / "bad.caffemodel")


def deeplab_pytorch_state(blocks: tuple[int, ...], n_classes: int, old_names: bool = False) -> dict[str, torch.Tensor]:
    """A state dict with deeplab-pytorch's module names (MSC: base.layer1.conv1.conv, base.layer2.block1.reduce...)."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def unit(prefix: str, cin: int, cout: int, k: int) -> None:
        state[f"{prefix}.conv.weight"] = torch.randn(cout, cin, k, k, generator=g)
        for param in ("weight", "bias", "running_mean"):
            state[f"{prefix}.bn.{param}"] = torch.randn(cout, generator=g)
        state[f"{prefix}.bn.running_var"] = torch.rand(cout, generator=g) + 0.5
        if not old_names:
            state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)

    unit("base.layer1.conv1", 3, WIDTH, 7)
    cin = WIDTH
    for i, n in enumerate(blocks):
        planes = WIDTH * 2**i
        for b in range(1, n + 1):
            prefix = f"base.layer{i + 2}.block{b}"
            unit(f"{prefix}.reduce", cin, planes, 1)
            unit(f"{prefix}.conv3x3", planes, planes, 3)
            unit(f"{prefix}.increase", planes, planes * 4, 1)
            if b == 1:
                unit(f"{prefix}.{'proj' if old_names else 'shortcut'}", cin, planes * 4, 1)
            cin = planes * 4
    for k in range(4):
        aspp = f"base.aspp.{'stages.' if old_names else ''}c{k}"
        state[f"{aspp}.weight"] = torch.randn(n_classes, cin, 3, 3, generator=g)
        state[f"{aspp}.bias"] = torch.randn(n_classes, generator=g)
    return state


@pytest.mark.parametrize("old_names", [False, True])
def test_deeplab_pytorch_checkpoint_maps_by_name(tmp_path: Path, old_names: bool) -> None:
    source = deeplab_pytorch_state(BLOCKS_101, 21, old_names)
    torch.save(source, tmp_path / "deeplabv2_resnet101_msc-vocaug-20000.pth")
    conversion = convert_deeplab_pytorch(tmp_path / "deeplabv2_resnet101_msc-vocaug-20000.pth")
    meta = conversion.meta
    assert (meta["arch"], meta["n_classes"], meta["stride_in_1x1"]) == ("resnet101", 21, True)
    assert meta["class_names"][:2] == ["background", "aeroplane"]
    state = conversion.state
    pairs = {
        "base.backbone.conv1.weight": "base.layer1.conv1.conv.weight",
        "base.backbone.layer3.22.bn2.running_var": "base.layer4.block23.conv3x3.bn.running_var",
        "base.backbone.layer1.0.conv1.weight": "base.layer2.block1.reduce.conv.weight",
        "base.backbone.layer4.0.downsample.1.weight":
            f"base.layer5.block1.{'proj' if old_names else 'shortcut'}.bn.weight",
        "base.aspp.branches.2.bias": f"base.aspp.{'stages.' if old_names else ''}c2.bias",
    }
    for ours, theirs in pairs.items():
        torch.testing.assert_close(state[ours], source[theirs])
    model = deeplab_v2(21, "resnet101", WIDTH, stride_in_1x1=True)
    model.load_state_dict(state, strict=True)


def test_cli_converts_a_deeplab_v1_init_and_reports_the_skipped_head(tmp_path: Path, capsys) -> None:
    source = {k.removeprefix("base."): v for k, v in deeplab_pytorch_state(BLOCKS_50, 91).items() if "aspp" not in k}
    source["fc.weight"], source["fc.bias"] = torch.zeros(91, 8 * WIDTH * 4, 1, 1), torch.zeros(91)
    torch.save(source, tmp_path / "deeplabv1_resnet50-coco.pth")
    assert main(["weights", "convert", "--deeplab-pytorch", str(tmp_path / "deeplabv1_resnet50-coco.pth"),
                 "--out", str(tmp_path / "init.pth")]) == 0
    printed = capsys.readouterr().out
    assert "resnet_backbone resnet50" in printed and "skipped fc.weight, fc.bias: image classifier" in printed
    saved = torch.load(tmp_path / "init.pth", weights_only=True)
    assert saved["meta"]["kind"] == "resnet_backbone" and "layer4.2.conv3.weight" in saved["model"]
