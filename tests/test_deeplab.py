"""DeepLab v2: reference parameter count, MSC output sizes, frozen BN, ASPP sum, optimizer groups.
DeepLab v3 / v3+: parameter counts checked against torchvision and pytorch-deeplab-xception,
training-mode output shapes at both output strides, trainable BN, torchvision trunk keys, groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conta.models.deeplab import ASPP, MSC, DeepLabV2, DeepLabV3, deeplab_param_groups, deeplab_v2, deeplab_v3
from conta.models.resnet import FrozenStatsBatchNorm2d, resnet


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_parameter_count_matches_reference() -> None:
    # torchvision ResNet-101 without fc: 42,500,160; ASPP: 4 x (2048*21*9 + 21) = 1,548,372.
    model = deeplab_v2(21)
    assert sum(p.numel() for p in model.parameters()) == 44_048_532


def test_msc_sizes_train_and_eval() -> None:
    model = deeplab_v2(21, arch="resnet101", width=4).train()
    x = torch.randn(1, 3, 321, 321)
    outs = model(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(1, 21, s, s) for s in (41, 21, 31, 41)]
    model.eval()
    with torch.no_grad():
        fused = model(x)
    assert tuple(fused.shape) == (1, 21, 41, 41)
    assert torch.allclose(fused, outs[-1].detach(), atol=1e-5)


def test_msc_fusion_is_elementwise_max() -> None:
    model = deeplab_v2(3, arch="resnet18", width=4, msc_scales=(0.5,)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model.base(x)
        half = model.base(nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))
        half = nn.functional.interpolate(half, size=full.shape[-2:], mode="bilinear", align_corners=False)
        assert torch.equal(model(x), torch.maximum(full, half))


def test_bn_frozen_in_every_mode() -> None:
    model = deeplab_v2(21, arch="resnet50", width=4)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    assert all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert model.training and model.base.aspp.training
    model.eval().train()
    assert all(not m.training for m in bns)


def test_aspp_is_sum_of_branches() -> None:
    aspp = ASPP(8, 5, (1, 2, 3))
    x = torch.randn(2, 8, 9, 9)
    expected = sum(branch(x) for branch in aspp.branches)
    assert torch.allclose(aspp(x), expected, atol=1e-6)
    assert [b.dilation for b in aspp.branches] == [(1, 1), (2, 2), (3, 3)]
    assert [b.padding for b in aspp.branches] == [(1, 1), (2, 2), (3, 3)]
    assert all(torch.count_nonzero(b.bias) == 0 for b in aspp.branches)


def test_param_groups() -> None:
    model = deeplab_v2(21, arch="resnet50", width=4)
    groups = deeplab_param_groups(model, lr=2.5e-4, weight_decay=5e-4)
    assert [g["name"] for g in groups] == ["backbone", "aspp_weight", "aspp_bias"]
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0, 20.0]
    assert [g["lr"] for g in groups] == pytest.approx([2.5e-4, 2.5e-3, 5e-3])
    assert [g["weight_decay"] for g in groups] == [5e-4, 5e-4, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    bn_ids = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert not bn_ids & set(ids)
    conv_weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(ids.count(id(w)) == 1 for w in conv_weights)
    aspp_biases = {id(b.bias) for b in model.base.aspp.branches}
    assert {id(p) for p in groups[2]["params"]} == aspp_biases
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    torch.optim.SGD(groups, lr=2.5e-4, momentum=0.9)  # the groups are valid optimizer input


def test_param_groups_accepts_bare_deeplab() -> None:
    model = deeplab_v2(4, arch="resnet18", width=4)
    assert isinstance(model, MSC) and isinstance(model.base, DeepLabV2)
    assert len(deeplab_param_groups(model.base, 1e-3, 0.0)) == 3


# -- DeepLab v3 / v3+ ------------------------------------------------------------------------

TRUNK = {"resnet101": 42_500_160, "resnet50": 23_508_032}  # torchvision ResNets without fc
# 1x1 and image-pooling branches, three 3x3 branches, the 1x1 projection; each conv is followed by a BN of 2 x 256
ASPP_V3 = 2 * (2048 * 256 + 512) + 3 * (2048 * 256 * 9 + 512) + (1280 * 256 + 512)
CLASSIFIER = 256 * 21 + 21


@pytest.mark.parametrize("arch", ["resnet101", "resnet50"])
def test_v3_parameter_counts_match_independent_implementations(arch: str) -> None:
    # torchvision's deeplabv3_resnet101 / _resnet50 list 60,996,202 / 42,004,074 parameters with
    # their aux FCNHead (1024*256*9 + 512 + 256*21 + 21 = 2,365,205) and a 3x3 conv-BN after the
    # ASPP (256*256*9 + 512 = 590,336) that the paper and deeplab-pytorch's v3 do not have.
    torchvision = {"resnet101": 60_996_202, "resnet50": 42_004_074}[arch]
    v3 = torchvision - 2_365_205 - 590_336
    assert v3 == TRUNK[arch] + ASPP_V3 + CLASSIFIER
    # pytorch-deeplab-xception's v3+ decoder: 1x1 to 48 (+BN), 3x3 304->256 (+BN), 3x3 256->256 (+BN), classifier
    v3plus = TRUNK[arch] + ASPP_V3 + (256 * 48 + 96) + (304 * 256 * 9 + 512) + (256 * 256 * 9 + 512) + CLASSIFIER
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        counts = [sum(p.numel() for p in deeplab_v3(21, arch, decoder=d).parameters()) for d in (False, True)]
    assert counts == [v3, v3plus]
    assert {"resnet101": (58_040_661, 59_344_309), "resnet50": (39_048_533, 40_352_181)}[arch] == (v3, v3plus)


@pytest.mark.parametrize("arch", ["resnet101", "resnet50"])
def test_v3_trunk_takes_torchvision_keys_and_shapes(arch: str) -> None:
    with torch.device("meta"):
        torchvision_layout = resnet(arch).state_dict()  # what load_backbone_weights checks a file against
        trunk = deeplab_v3(21, arch, output_stride=8, decoder=True, multi_grid=(1, 2, 4)).base.backbone.state_dict()
    assert {k: v.shape for k, v in trunk.items()} == {k: v.shape for k, v in torchvision_layout.items()}


@pytest.mark.parametrize(("output_stride", "decoder", "side"), [(16, False, 21), (8, False, 41), (16, True, 81), (8, True, 81)])
def test_v3_training_outputs_one_scale_at_its_stride(output_stride: int, decoder: bool, side: int) -> None:
    model = deeplab_v3(21, "resnet50", width=4, output_stride=output_stride, decoder=decoder, msc_scales=(0.5,)).train()
    assert model.output_stride == output_stride
    outs = model(torch.randn(2, 3, 321, 321))
    assert [tuple(o.shape) for o in outs] == [(2, 21, side, side)]  # trained at one scale: one output
    model.eval()
    with torch.no_grad():
        assert tuple(model(torch.randn(1, 3, 321, 321)).shape) == (1, 21, side, side)  # 1.0 and 0.5 max-fused


def test_v3_bn_trains_in_train_mode_and_freezes_in_eval() -> None:
    model = deeplab_v3(5, "resnet18", width=4, decoder=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(isinstance(m, FrozenStatsBatchNorm2d) for m in bns)
    assert all(m.training and m.weight.requires_grad for m in bns)
    stem = model.base.backbone.bn1
    model(torch.randn(2, 3, 33, 33))
    assert stem.num_batches_tracked.item() == 1 and not torch.equal(stem.running_mean, torch.zeros_like(stem.running_mean))
    model.eval()
    before = stem.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(1, 3, 33, 33))
    assert torch.equal(stem.running_mean, before)


def test_v3_layout_rates_and_multi_grid() -> None:
    os16 = deeplab_v3(3, "resnet50", width=4, multi_grid=(1, 2, 4)).base
    os8 = deeplab_v3(3, "resnet50", width=4, output_stride=8).base
    assert [b[0].dilation for b in os16.aspp.branches[1:4]] == [(6, 6), (12, 12), (18, 18)]
    assert [b[0].dilation for b in os8.aspp.branches[1:4]] == [(12, 12), (24, 24), (36, 36)]
    assert [b.conv2.dilation[0] for b in os16.backbone.layer4] == [2, 4, 8]  # rate 2 x (1, 2, 4)
    assert [b.conv2.dilation[0] for b in os8.backbone.layer3] == [2] * 6
    assert [b.conv2.dilation[0] for b in os8.backbone.layer4] == [4] * 3
    with pytest.raises(ValueError, match="one value per block"):
        deeplab_v3(3, "resnet18", width=4, multi_grid=(1, 2, 4))


def test_v3_image_pooling_branch_is_constant_over_the_map() -> None:
    model = deeplab_v3(3, "resnet18", width=4).eval()
    pooled = model.base.aspp.branches[-1](torch.randn(2, 32, 5, 7))
    assert pooled.shape == (2, 16, 5, 7) and torch.equal(pooled, pooled[..., :1, :1].expand_as(pooled))


def test_v3_param_groups_cover_every_parameter_once() -> None:
    model = deeplab_v3(21, "resnet50", width=4, decoder=True)
    groups = deeplab_param_groups(model, lr=0.007, weight_decay=5e-4)
    assert [(g["name"], g["lr_mult"], g["weight_decay"]) for g in groups] == [("backbone", 1.0, 5e-4), ("head", 10.0, 5e-4)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.base.backbone.parameters()}
    assert isinstance(model.base, DeepLabV3)
