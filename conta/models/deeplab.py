"""DeepLab v2 (spec 7.1-7.4): dilated ResNet at output stride 8, ASPP, multi-scale max fusion.

Fixes over deeplab-pytorch (spec 9 #12): BN is frozen by construction (running statistics,
requires_grad=False, and `train()` keeps BN modules in eval), so calling `.train()` again cannot
unfreeze it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conta.models.resnet import ResNet, resnet


class ASPP(nn.Module):
    """Parallel dilated 3x3 classifiers whose logits are summed (DeepLab v2's ASPP-L)."""

    def __init__(self, in_channels: int, n_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, n_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)


class DeepLabV2(nn.Module):
    """ResNet trunk (strides (2,2,1,1), dilations (1,1,2,4), ceil-mode pool) + ASPP; logits at /8."""

    def __init__(self, backbone: ResNet, n_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels[-1], n_classes, rates)
        for m in self.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.requires_grad_(False)

    def train(self, mode: bool = True) -> DeepLabV2:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.aspp(self.backbone(x))


class MSC(nn.Module):
    """Runs the shared `base` on the input and on down-scaled copies, fusing logits by max.

    Training returns [logits_1.0, logits_s1, ..., logits_max] (each scale at its own size, max at
    the 1.0 size) so every output gets its own loss; eval returns only the max.
    """

    def __init__(self, base: nn.Module, scales: Sequence[float] = (0.5, 0.75)) -> None:
        super().__init__()
        self.base = base
        self.scales = tuple(scales)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        logits = self.base(x)
        pyramid = [
            self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
            for s in self.scales
        ]
        size = logits.shape[-2:]
        upsampled = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
        fused = torch.stack([logits, *upsampled]).amax(0)
        if self.training:
            return [logits, *pyramid, fused]
        return fused


def deeplab_v2(
    n_classes: int,
    arch: str = "resnet101",
    width: int = 64,
    atrous_rates: Sequence[int] = (6, 12, 18, 24),
    msc_scales: Sequence[float] = (0.5, 0.75),
    stride_in_1x1: bool = False,
) -> MSC:
    """DeepLab v2 wrapped in MSC; `n_classes` counts the background. Backbone weights: `model.base.backbone`."""
    backbone = resnet(arch, width, strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4),
                      stride_in_1x1=stride_in_1x1, maxpool_ceil_mode=True)
    return MSC(DeepLabV2(backbone, n_classes, atrous_rates), msc_scales)


def deeplab_param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """SGD groups of spec 7.4: backbone convs 1x, ASPP weights 10x, ASPP biases 20x without decay.

    BN parameters are in no group (BN is frozen). Each group keeps its `lr_mult` so a poly
    scheduler can set lr = base_lr * lr_mult * decay.
    """
    net = model.base if isinstance(model, MSC) else model
    if not isinstance(net, DeepLabV2):
        raise TypeError(f"expected DeepLabV2 or MSC(DeepLabV2), got {type(net).__name__}")
    convs = [m for m in net.backbone.modules() if isinstance(m, nn.Conv2d)]  # all bias-free
    groups = [
        ("backbone", 1.0, [c.weight for c in convs], weight_decay),
        ("aspp_weight", 10.0, [c.weight for c in net.aspp.branches], weight_decay),
        ("aspp_bias", 20.0, [c.bias for c in net.aspp.branches], 0.0),
    ]
    return [
        {"name": name, "lr_mult": mult, "params": params, "lr": lr * mult, "weight_decay": wd}
        for name, mult, params, wd in groups
    ]
