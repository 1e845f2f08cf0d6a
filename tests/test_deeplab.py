"""DeepLab v2: reference parameter count, MSC output sizes, frozen BN, ASPP sum, optimizer groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conta.models.deeplab import ASPP, MSC, DeepLabV2, deeplab_param_groups, deeplab_v2


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
