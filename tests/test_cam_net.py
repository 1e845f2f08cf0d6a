"""CamNet: output stride, IRNet's freezing (and the train() fix), parameter groups, the CONTA
context paths (zero-initialised, then learning) and BN calibration of random backbones."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conta.models.cam_net import FROZEN_PARTS, CamNet, calibrate_bn_statistics
from conta.models.intervention import ConfounderAttention
from conta.models.resnet import FrozenStatsBatchNorm2d, resnet

N_CLASSES = 3


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny(context_at: str | None = None, arch: str = "resnet18", module: nn.Module | None = None) -> CamNet:
    return CamNet(resnet(arch, width=4), N_CLASSES, context_at, module)


def frozen_params(model: CamNet) -> list[nn.Parameter]:
    return [p for name in FROZEN_PARTS for p in getattr(model.backbone, name).parameters()]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_output_stride_16(arch: str) -> None:
    model = tiny(arch=arch)
    x = torch.randn(2, 3, 64, 96)
    assert model(x).shape == (2, N_CLASSES)
    assert model.cam(x).shape == (2, N_CLASSES, 4, 6)
    assert (model.cam(x) >= 0).all()


def test_logits_are_the_pooled_cam_before_relu() -> None:
    model = tiny()
    x = torch.randn(2, 3, 64, 64)
    raw = model.classifier(model.features(x))
    assert torch.allclose(model(x), raw.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(model.cam(x), F.relu(raw))


@pytest.mark.parametrize("context_at", [None, "image", "stage3", "head"])
def test_frozen_parts_get_no_gradient(context_at: str | None) -> None:
    model = tiny(context_at)
    m = torch.rand(2, 1, 8, 8) if context_at else None
    model(torch.randn(2, 3, 64, 64), m).sum().backward()
    assert all(p.grad is None for p in frozen_params(model))
    assert all(p.grad is not None for p in model.backbone.layer3.parameters())
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0


def test_train_mode_keeps_freezing_and_propagates() -> None:
    model = tiny()
    model.eval()
    assert not any(m.training for m in model.modules())  # IRNet's override never reached children
    frozen_params(model)[0].requires_grad_(True)
    model.train()
    assert all(m.training for m in model.modules())
    assert not any(p.requires_grad for p in frozen_params(model))
    assert all(p.requires_grad for p in model.backbone.layer4.parameters())


def test_bn_uses_running_statistics_in_train_mode() -> None:
    model = tiny().train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FrozenStatsBatchNorm2d) for m in bns)
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    assert torch.equal(model(x), before) and torch.equal(model.eval()(x), before)


@pytest.mark.parametrize("context_at", [None, "image", "stage3", "head"])
def test_param_groups_hold_exactly_the_trainable_parameters(context_at: str | None) -> None:
    model = tiny(context_at, module=nn.Conv2d(1, 1, 1) if context_at else None)
    backbone, head = model.param_groups(10.0)
    assert (backbone["lr_mult"], head["lr_mult"]) == (1.0, 10.0)
    grouped = [id(p) for g in (backbone, head) for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert len(set(grouped)) == len(grouped)
    assert {id(p) for p in head["params"]} == {id(p) for n, p in model.named_parameters()
                                               if not n.startswith("backbone.") and p.requires_grad}


def baseline_and_context(context_at: str) -> tuple[CamNet, CamNet]:
    """Two nets built from the same seed: identical weights except the context's zero-initialised filters."""
    torch.manual_seed(5)
    base = CamNet(resnet("resnet18", width=4), N_CLASSES)
    torch.manual_seed(5)
    ctx = CamNet(resnet("resnet18", width=4), N_CLASSES, context_at)
    return base, ctx


@pytest.mark.parametrize("context_at", ["image", "stage3", "head"])
def test_context_input_leaves_the_random_stream_of_the_baseline(context_at: str) -> None:
    """Same seed, same start: a CONTA round differs from the baseline control only through M."""
    module = ConfounderAttention(torch.rand(4, 8, 8), torch.full((4,), 0.25))
    draws = []
    for context in (None, context_at):
        torch.manual_seed(7)
        net = CamNet(resnet("resnet18", width=4), N_CLASSES, context, module if context else None)
        draws.append((net, torch.rand(3)))
    (base, after_base), (ctx, after_ctx) = draws
    assert torch.equal(after_base, after_ctx)
    wide = {name: p for name, p in ctx.named_parameters()}
    for name, p in base.named_parameters():
        assert torch.equal(wide[name][:, : p.shape[1]] if wide[name].shape != p.shape else wide[name], p), name
    first_query = module.query.weight.clone()
    torch.manual_seed(7)
    CamNet(resnet("resnet18", width=4), N_CLASSES, context_at, module)
    assert torch.equal(module.query.weight, first_query)   # W1, W2 depend on the seed alone


@pytest.mark.parametrize("context_at", ["image", "stage3", "head"])
def test_context_starts_as_the_baseline_function(context_at: str) -> None:
    base, ctx = baseline_and_context(context_at)
    x, m = torch.randn(2, 3, 64, 64), torch.rand(2, 1, 8, 8)
    assert torch.allclose(ctx(x, m), base(x), atol=1e-5)
    assert torch.allclose(ctx.cam(x, m), base.cam(x), atol=1e-5)
    assert torch.allclose(ctx(x, None), base(x), atol=1e-5)


def context_filters(model: CamNet) -> list[torch.Tensor]:
    """The weights that read M (views of the widened convs' last input channel)."""
    if model.context_at == "image":
        return [model.context_conv.weight]
    if model.context_at == "stage3":
        block = model.backbone.layer3[0]
        return [block.conv1.weight[:, -1], block.downsample[0].weight[:, -1]]
    return [model.classifier.weight[:, -1]]


def context_grads(model: CamNet) -> list[torch.Tensor]:
    if model.context_at == "image":
        return [model.context_conv.weight.grad]
    if model.context_at == "stage3":
        block = model.backbone.layer3[0]
        return [block.conv1.weight.grad[:, -1], block.downsample[0].weight.grad[:, -1]]
    return [model.classifier.weight.grad[:, -1]]


@pytest.mark.parametrize("context_at", ["image", "stage3", "head"])
def test_context_filters_learn(context_at: str) -> None:
    module = nn.Conv2d(1, 1, 3, padding=1)
    model = tiny(context_at, module=module)
    optimizer = torch.optim.SGD(model.param_groups(10.0), lr=0.1)
    x, m = torch.randn(4, 3, 64, 64), torch.rand(4, 1, 8, 8)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    for step in range(2):
        optimizer.zero_grad()
        F.multilabel_soft_margin_loss(model(x, m), labels).backward()
        assert all(g is not None and g.abs().sum() > 0 for g in context_grads(model))
        if step == 1:  # M's filters are nonzero now, so the gradient reaches the module too
            assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
        optimizer.step()
    assert all(w.abs().sum() > 0 for w in context_filters(model))
    assert all(p.grad is None for p in frozen_params(model))
    assert not torch.allclose(model(x, m), model(x, None))


def test_context_input_is_checked() -> None:
    with pytest.raises(ValueError, match="without a context"):
        tiny()(torch.randn(1, 3, 64, 64), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, h, w\)"):
        tiny("head")(torch.randn(2, 3, 64, 64), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="context_at"):
        tiny("everywhere")
    with pytest.raises(ValueError, match="needs a context_at"):
        tiny(None, module=nn.Identity())


def test_calibration_normalises_a_random_backbone() -> None:
    model = tiny(arch="resnet50")
    x = torch.randn(8, 3, 64, 64) * 2 + 1
    before = model.features(x).std().item()
    layers: list[int] = []
    n = calibrate_bn_statistics(model, x, on_layer=lambda: layers.append(len(layers)))
    assert n == len(layers) == sum(isinstance(m, FrozenStatsBatchNorm2d) for m in model.modules())  # one tick each
    after = model.features(x).std().item()
    assert before > 3 and 0.3 < after < 3
    stem = model.backbone.bn1(model.backbone.conv1(x))
    assert stem.mean(dim=(0, 2, 3)).abs().max() < 1e-4
