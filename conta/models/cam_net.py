"""The multi-label classifier whose class activation maps seed the pipeline (IRNet's resnet50_cam),
with the optional context input that CONTA's intervened classifier needs.

Baseline: a stride-16 ResNet, global average pooling and a bias-free 1x1 conv.
IRNet's freezing is kept: the stem, layer1 and layer2 never learn (their parameters have
`requires_grad=False` and layer2's output is detached), every BN normalises with its running
statistics, and only layer3, layer4 (convs and BN affine) and the classifier train.

Context (CONTA, docs/conta.md): `forward(x, context)` takes a (B, 1, hc, wc) map aligned with the
image (flipped and cropped with it; any resolution). With a `context_module`, M =
context_module(context), so the module trains with the classifier and is saved with it; without
one, M = context. M is resized bilinearly to the spatial size where it enters and appended as one
more channel whose filters start at zero, so at initialisation the network computes exactly the
baseline function. `context=None` feeds M = 0. Where M enters (`context_at`):

- "image": a fourth input channel of the stem. It is a separate conv (`context_conv`, same
  geometry as conv1) added to conv1's output, which equals a 4-channel conv1 whose RGB filters stay
  frozen. layer2's output is not detached in this mode, so the gradient flows back through the
  frozen stem, layer1 and layer2 (their weights still get none) to `context_conv` and the module.
- "stage3": concatenated to layer2's (detached) output; layer3's first conv and its downsample
  conv read one extra zero-initialised input channel.
- "head": concatenated to layer4's features; the classifier reads one extra zero-initialised
  channel (its CAM then includes M's class-specific contribution).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conta.models.resnet import FrozenStatsBatchNorm2d, ResNet

ContextAt = Literal["image", "stage3", "head"]
CONTEXT_POINTS: tuple[str, ...] = ("image", "stage3", "head")
FROZEN_PARTS: tuple[str, ...] = ("conv1", "bn1", "layer1", "layer2")


class CamNet(nn.Module):
    """ResNet (output stride 16) + GAP + 1x1 classifier; `cam()` gives the ReLU'd class maps."""

    def __init__(self, backbone: ResNet, n_classes: int, context_at: ContextAt | None = None,
                 context_module: nn.Module | None = None) -> None:
        super().__init__()
        if context_at is not None and context_at not in CONTEXT_POINTS:
            raise ValueError(f"context_at must be one of {CONTEXT_POINTS} or None, got {context_at!r}")
        if context_module is not None and context_at is None:
            raise ValueError("a context_module needs a context_at entry point")
        self.backbone = backbone
        self.context_at = context_at
        self.context_module = context_module
        self.context_conv: nn.Conv2d | None = None
        self.classifier = nn.Conv2d(backbone.out_channels[-1], n_classes, 1, bias=False)
        # The context parts draw from a fork of the random stream: with the same seed, the rest
        # of the network starts exactly as the baseline's, so a round's difference from the
        # baseline control comes from M, not from a shifted initialisation.
        with torch.random.fork_rng(devices=[]):
            self._add_context_input(context_at)
            if context_module is not None and hasattr(context_module, "reset_parameters"):
                context_module.reset_parameters()
        self.n_classes = n_classes
        self._freeze()

    def _add_context_input(self, context_at: ContextAt | None) -> None:
        """The zero-initialised weights that read M where it enters."""
        backbone = self.backbone
        if context_at == "image":
            c1 = backbone.conv1
            self.context_conv = nn.Conv2d(1, c1.out_channels, c1.kernel_size, c1.stride, c1.padding, bias=False)
            nn.init.zeros_(self.context_conv.weight)
        elif context_at == "stage3":
            block = backbone.layer3[0]
            if block.downsample is None:
                raise ValueError("context_at='stage3' needs layer3 to open with a projection shortcut")
            block.conv1 = widen_conv(block.conv1)
            block.downsample[0] = widen_conv(block.downsample[0])
        elif context_at == "head":
            self.classifier = widen_conv(self.classifier)

    def train(self, mode: bool = True) -> CamNet:
        """The parent's train() (IRNet skipped it, so eval() never took effect), then re-freeze."""
        super().train(mode)
        self._freeze()
        return self

    def _freeze(self) -> None:
        for name in FROZEN_PARTS:
            getattr(self.backbone, name).requires_grad_(False)

    def param_groups(self, head_lr_mult: float) -> list[dict]:
        """Trainable backbone parameters at lr_mult 1; the new layers (classifier, context conv,
        context module) at `head_lr_mult`, as IRNet does for its classifier. Frozen ones: nowhere."""
        in_backbone = {id(p) for p in self.backbone.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return [
            {"name": "backbone", "params": [p for p in trainable if id(p) in in_backbone], "lr_mult": 1.0},
            {"name": "head", "params": [p for p in trainable if id(p) not in in_backbone], "lr_mult": head_lr_mult},
        ]

    def features(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Stride-16 features, with M appended when it enters at the head."""
        m = self._context_map(x, context)
        b = self.backbone
        h = b.conv1(x)
        if self.context_conv is not None:
            h = h + self.context_conv(_fit(m, x.shape[-2:]))
        h = b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(h)))))
        if self.context_at != "image":
            h = h.detach()
        if self.context_at == "stage3":
            h = torch.cat([h, _fit(m, h.shape[-2:])], dim=1)
        h = b.layer4(b.layer3(h))
        if self.context_at == "head":
            h = torch.cat([h, _fit(m, h.shape[-2:])], dim=1)
        return h

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(B, n_classes) logits: the classifier applied to the spatial mean of the features."""
        pooled = self.features(x, context).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def cam(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(B, n_classes, h16, w16) maps: ReLU of the classifier applied before pooling."""
        return F.relu(self.classifier(self.features(x, context)))

    def _context_map(self, x: Tensor, context: Tensor | None) -> Tensor | None:
        if self.context_at is None:
            if context is not None:
                raise ValueError("this CamNet was built without a context input (context_at=None)")
            return None
        if context is None:
            return x.new_zeros(x.shape[0], 1, 1, 1)  # resized (a constant) wherever it enters
        if context.ndim != 4 or context.shape[1] != 1 or context.shape[0] != x.shape[0]:
            raise ValueError(f"context must be (B, 1, h, w) with B={x.shape[0]}, got {tuple(context.shape)}")
        return self.context_module(context) if self.context_module is not None else context


def frozen_bns(model: nn.Module) -> list[FrozenStatsBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, FrozenStatsBatchNorm2d)]


@torch.no_grad()
def calibrate_bn_statistics(model: nn.Module, *inputs: Tensor | None,
                            on_layer: Callable[[], object] | None = None) -> int:
    """Set each frozen-statistics BN's running mean and variance to those of its input on one batch.

    A randomly initialised backbone has running statistics (0, 1), so its frozen BNs do not
    normalise and activations grow with depth (feature std ~7 for resnet18 at width 16, ~280 for
    resnet34): training diverges or crawls. One forward pass, layer by layer in order, gives the
    well-scaled start that ImageNet statistics give a pretrained backbone. `on_layer()` is called
    as each BN gets its statistics (the pass takes ~30 s at VOC size on a CPU: a progress bar).
    Returns the BN count.
    """
    def use_batch_statistics(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
        if on_layer is not None:
            on_layer()

    hooks = [m.register_forward_pre_hook(use_batch_statistics) for m in frozen_bns(model)]
    try:
        model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return len(hooks)


def widen_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of `conv` that reads one more input channel, whose filters start at zero."""
    wide = nn.Conv2d(conv.in_channels + 1, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, conv.dilation, conv.groups, bias=conv.bias is not None)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, : conv.in_channels].copy_(conv.weight)
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    return wide


def _fit(m: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """M resized (bilinear, align_corners=False) to where it enters."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
