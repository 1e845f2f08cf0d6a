"""ResNet backbones with torchvision key names, configurable strides/dilations and frozen-statistics BN.

One class serves all the references: IRNet's classifier and IRN (torchvision layout, strides
(2, 2, 2, 1), no dilation), DeepLab v2 (strides (2, 2, 1, 1), dilations
(1, 1, 2, 4), ceil-mode max-pool, optionally the MSRA stride-in-1x1 layout) and DeepLab
v3/v3+ (output stride 16 or 8, optionally multi-grid, BN made trainable by `convert_batchnorm`).
Keeping torchvision's key names lets ImageNet checkpoints load strictly (`conta.weights.backbone`).

Dilation rule: every block of a layer uses that layer's dilation, the first block included. This
is deeplab-pytorch's behaviour (and pytorch-deeplab-xception's); IRNet forces dilation 1 on first
blocks, which makes no difference with its all-ones dilations. `multi_grid` multiplies the last
layer's dilation block by block (DeepLab v3's Multi-Grid).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from conta.registry import BACKBONES


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BN that always normalises with its running statistics, in train mode too.

    Small WSSS batches would make batch statistics noisy, so the references freeze them (IRNet's
    FixedBatchNorm). The affine weight and bias stay ordinary parameters: whether they learn is up
    to `requires_grad`. Subclassing nn.BatchNorm2d keeps its state-dict keys.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            training=False, momentum=0.0, eps=self.eps,
        )


def convert_batchnorm(module: nn.Module, source: type[nn.BatchNorm2d], target: type[_BatchNorm]) -> nn.Module:
    """Replace, in place, every BN of exactly type `source` under `module` by a `target` that shares
    its parameters and statistics (so devices, values and state-dict keys stay); returns `module`.

    Builds DeepLab v3's trainable BN from the frozen one, and the cross-process BN under DDP.
    """
    for name, child in module.named_children():
        if type(child) is source:
            new = target(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            setattr(module, name, new.train(child.training))
        else:
            convert_batchnorm(child, source, target)
    return module


def _conv3x3(cin: int, cout: int, stride: int, dilation: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """The 1x1 projection shortcut (keys downsample.0 / downsample.1), or None for identity."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, stride=stride, bias=False), FrozenStatsBatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34).

    `stride_in_1x1` is accepted for a uniform block interface; the first conv is both the "1x1
    slot" and a 3x3 here, so both layouts put the stride on it.
    """

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation)
        self.bn1 = FrozenStatsBatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = FrozenStatsBatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as torchvision: no new block-sized tensor (nor its page faults)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101).

    `stride_in_1x1=False` puts the stride on the 3x3 (torchvision); True puts it on the first
    1x1 (MSRA/Caffe, as deeplab-pytorch and its converted Caffe weights expect).
    """

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, stride=s1, bias=False)
        self.bn1 = FrozenStatsBatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, s3, dilation)
        self.bn2 = FrozenStatsBatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = FrozenStatsBatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place, as torchvision: no new block-sized tensor (nor its page faults)
        return self.relu(out)


class ResNet(nn.Module):
    """Stem + four residual layers (no fc); keys follow torchvision (conv1, bn1, layer1..layer4).

    `strides` = (conv1, layer2, layer3, layer4); layer1 has stride 1 and the max-pool stride 2.
    `dilations` = (layer1, layer2, layer3, layer4), applied to every block of the layer; block j of
    layer4 has dilations[3] * multi_grid[j] when `multi_grid` is given (one value per block).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        width: int = 64,
        strides: Sequence[int] = (2, 2, 2, 1),
        dilations: Sequence[int] = (1, 1, 1, 1),
        stride_in_1x1: bool = False,
        maxpool_ceil_mode: bool = False,
        multi_grid: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(strides) != 4 or len(dilations) != 4:
            raise ValueError("layers, strides and dilations need four values each")
        if multi_grid and len(multi_grid) != layers[3]:
            raise ValueError(f"multi_grid needs one value per block of layer4 ({layers[3]}), got {list(multi_grid)}")
        self.conv1 = nn.Conv2d(3, width, 7, stride=strides[0], padding=3, bias=False)
        self.bn1 = FrozenStatsBatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=maxpool_ceil_mode)
        self.out_channels: list[int] = [width]
        cin = width
        layer_strides = (1, *strides[1:])
        for i, (n, stride, dilation) in enumerate(zip(layers, layer_strides, dilations)):
            planes = width * 2**i
            blocks = []
            grid = multi_grid if i == 3 and multi_grid else (1,) * n
            for j in range(n):
                blocks.append(block(cin, planes, stride if j == 0 else 1, dilation * grid[j], stride_in_1x1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(cin)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The five maps IRN and CAM need: stem (after max-pool, stride 4), layer1..layer4."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]


ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


for _arch, (_block, _layers) in ARCHS.items():  # (width, strides, dilations, stride_in_1x1, maxpool_ceil_mode, multi_grid)
    BACKBONES.register(_arch)(functools.partial(ResNet, _block, _layers))


def resnet(
    arch: str,
    width: int = 64,
    strides: Sequence[int] = (2, 2, 2, 1),
    dilations: Sequence[int] = (1, 1, 1, 1),
    stride_in_1x1: bool = False,
    maxpool_ceil_mode: bool = False,
    multi_grid: Sequence[int] = (),
) -> ResNet:
    """Build resnet18/34/50/101; `width` 64 is standard, smaller widths give CPU-sized networks."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (known: {', '.join(ARCHS)})")
    block, layers = ARCHS[arch]
    return ResNet(block, layers, width, strides, dilations, stride_in_1x1, maxpool_ceil_mode, multi_grid)
