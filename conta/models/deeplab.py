"""DeepLab v2, v3 and v3+: dilated ResNets, ASPP, multi-scale max fusion.

v2: output stride 8, an ASPP of summed dilated classifiers. Fixes over deeplab-pytorch: BN is
frozen by construction (running statistics, requires_grad=False, and `train()` keeps
BN modules in eval), so calling `.train()` again cannot unfreeze it.

v3 (Chen et al. 2017) and v3+ (Chen et al. 2018): output stride 16 or 8, an ASPP of
conv-BN-ReLU branches (1x1, three 3x3 at rates 6/12/18 for stride 16, doubled for 8, image
pooling) projected to one map, and for v3+ a decoder on the layer1 features. BN trains
everywhere. The layers and their sizes are those of pytorch-deeplab-xception (v3+) and of
deeplab-pytorch's v3; docs/segmentation.md checks the parameter counts against them and torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conta.models.backbone import Backbone, create_backbone
from conta.models.resnet import FrozenStatsBatchNorm2d, convert_batchnorm


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

    kind = "deeplab_v2"
    output_stride = 8
    head_name = "ASPP"

    def __init__(self, backbone: Backbone, n_classes: int, rates: Sequence[int]) -> None:
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


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average, 1x1 conv-BN-ReLU, spread back over the map."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(*_conv_bn_relu(in_channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.mean((2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])


class ASPPv3(nn.Module):
    """DeepLab v3's ASPP: 1x1, 3x3 at each rate and image pooling (conv-BN-ReLU, `channels` each),
    concatenated, then a 1x1 conv-BN-ReLU projection and dropout 0.5."""

    def __init__(self, in_channels: int, rates: Sequence[int], channels: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList([
            nn.Sequential(*_conv_bn_relu(in_channels, channels, 1)),
            *(nn.Sequential(*_conv_bn_relu(in_channels, channels, 3, r)) for r in rates),
            ImagePooling(in_channels, channels),
        ])
        self.project = nn.Sequential(*_conv_bn_relu(channels * (len(rates) + 2), channels, 1), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], 1))


class Decoder(nn.Module):
    """DeepLab v3+'s decoder: the layer1 map reduced to `reduced` channels (1x1 conv-BN-ReLU), the
    ASPP output upsampled to it and concatenated, then two 3x3 conv-BN-ReLU (dropout 0.5, 0.1)."""

    def __init__(self, low_channels: int, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(*_conv_bn_relu(low_channels, reduced, 1))
        self.refine = nn.Sequential(*_conv_bn_relu(channels + reduced, channels, 3), nn.Dropout(0.5),
                                    *_conv_bn_relu(channels, channels, 3), nn.Dropout(0.1))

    def forward(self, x: Tensor, low: Tensor) -> Tensor:
        low = self.reduce(low)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(torch.cat([x, low], 1))


class DeepLabV3(nn.Module):
    """ResNet trunk at `output_stride` + ASPPv3 (+ Decoder for v3+) + a 1x1 classifier; logits at
    /output_stride (v3) or /4 (v3+). Head widths scale with the trunk: 256 and 48 at width 64."""

    def __init__(self, backbone: Backbone, n_classes: int, rates: Sequence[int], output_stride: int,
                 decoder: bool, channels: int = 256, reduced: int = 48) -> None:
        super().__init__()
        self.backbone = backbone
        self.output_stride = output_stride
        self.aspp = ASPPv3(backbone.out_channels[-1], rates, channels)
        self.decoder = Decoder(backbone.out_channels[1], channels, reduced) if decoder else None
        self.classifier = nn.Conv2d(channels, n_classes, 1)
        for m in [*self.aspp.modules(), *(self.decoder.modules() if decoder else ()), self.classifier]:
            if isinstance(m, nn.Conv2d):  # as pytorch-deeplab-xception; biases keep PyTorch's default
                nn.init.kaiming_normal_(m.weight)

    @property
    def kind(self) -> str:
        return "deeplab_v3plus" if self.decoder is not None else "deeplab_v3"

    @property
    def head_name(self) -> str:
        return "ASPP and decoder" if self.decoder is not None else "ASPP"

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone.forward_stages(x)
        out = self.aspp(feats[-1])
        if self.decoder is not None:
            out = self.decoder(out, feats[1])
        return self.classifier(out)


class MSC(nn.Module):
    """Runs the shared `base` on the input and on down-scaled copies, fusing logits by max.

    Training returns [logits_1.0, logits_s1, ..., logits_max] (each scale at its own size, max at
    the 1.0 size) so every output gets its own loss; eval returns only the max. With
    `train_scales=False` (DeepLab v3/v3+, trained at one scale) training returns [logits_1.0].
    """

    def __init__(self, base: nn.Module, scales: Sequence[float] = (0.5, 0.75), train_scales: bool = True) -> None:
        super().__init__()
        self.base = base
        self.scales = tuple(scales)
        self.train_scales = train_scales

    @property
    def output_stride(self) -> int:
        """The base network's: images are padded to a multiple of it."""
        return self.base.output_stride

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        logits = self.base(x)
        if self.training and not self.train_scales:
            return [logits]
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
    backbone = create_backbone(arch, width, strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4),
                      stride_in_1x1=stride_in_1x1, maxpool_ceil_mode=True)
    return MSC(DeepLabV2(backbone, n_classes, atrous_rates), msc_scales)


V3_RATES = (6, 12, 18)
"""DeepLab v3's ASPP rates at output stride 16; output stride 8 doubles them."""
V3_LAYOUT = {16: ((2, 2, 2, 1), (1, 1, 1, 2)), 8: ((2, 2, 1, 1), (1, 1, 2, 4))}
"""Trunk (strides, dilations) per output stride: the last one or two stages dilated instead of strided."""


def v3_rates(output_stride: int) -> tuple[int, ...]:
    return tuple(r * 16 // output_stride for r in V3_RATES)


def deeplab_v3(
    n_classes: int,
    arch: str = "resnet101",
    width: int = 64,
    output_stride: int = 16,
    decoder: bool = False,
    multi_grid: Sequence[int] = (),
    msc_scales: Sequence[float] = (),
    stride_in_1x1: bool = False,
) -> MSC:
    """DeepLab v3 (or v3+ with `decoder`) in MSC, trained at one scale; BN trainable throughout.

    `multi_grid` (e.g. (1, 2, 4)) multiplies layer4's dilation block by block; `msc_scales` are the
    extra test scales (max fusion, as for v2). Backbone weights: `model.base.backbone`.
    """
    if output_stride not in V3_LAYOUT:
        raise ValueError(f"output_stride must be one of {sorted(V3_LAYOUT)}, got {output_stride}")
    strides, dilations = V3_LAYOUT[output_stride]
    backbone = create_backbone(arch, width, strides, dilations, stride_in_1x1=stride_in_1x1, multi_grid=multi_grid)
    convert_batchnorm(backbone, FrozenStatsBatchNorm2d, nn.BatchNorm2d)
    net = DeepLabV3(backbone, n_classes, v3_rates(output_stride), output_stride, decoder,
                    channels=max(1, 256 * width // 64), reduced=max(1, 48 * width // 64))
    return MSC(net, msc_scales, train_scales=False)


HEAD_LR_MULT = 10.0
"""v3/v3+ heads learn 10x faster than the trunk (pytorch-deeplab-xception's 1x / 10x groups;
DeepLabV3Plus-Pytorch's 0.1x trunk is the same ratio)."""


def deeplab_param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """SGD groups. v2: backbone convs 1x, ASPP weights 10x, ASPP biases 20x without
    decay; BN parameters are in no group (BN is frozen). v3/v3+: every trunk parameter 1x, every
    head parameter (ASPP, decoder, classifier) 10x, all with weight decay, as the references do.

    Each group keeps its `lr_mult` so a poly scheduler can set lr = base_lr * lr_mult * decay.
    """
    net = model.base if isinstance(model, MSC) else model
    if isinstance(net, DeepLabV3):
        trunk = list(net.backbone.parameters())
        trunk_ids = {id(p) for p in trunk}
        head = [p for p in net.parameters() if id(p) not in trunk_ids]
        groups = [("backbone", 1.0, trunk, weight_decay), ("head", HEAD_LR_MULT, head, weight_decay)]
    elif isinstance(net, DeepLabV2):
        convs = [m for m in net.backbone.modules() if isinstance(m, nn.Conv2d)]  # all bias-free
        groups = [
            ("backbone", 1.0, [c.weight for c in convs], weight_decay),
            ("aspp_weight", 10.0, [c.weight for c in net.aspp.branches], weight_decay),
            ("aspp_bias", 20.0, [c.bias for c in net.aspp.branches], 0.0),
        ]
    else:
        raise TypeError(f"expected a DeepLab or MSC(DeepLab), got {type(net).__name__}")
    return [
        {"name": name, "lr_mult": mult, "params": params, "lr": lr * mult, "weight_decay": wd}
        for name, mult, params, wd in groups
    ]
