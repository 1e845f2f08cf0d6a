"""The backbone protocol the heads build on, and the factory that builds a registered backbone.

A head (the IRN's branches, DeepLab's ASPP and decoder, the pretraining classifier) reads a
backbone's feature maps through `forward_stages` and sizes its layers from `out_channels`; it
does not reach into the backbone's layers. A backbone is registered under its `arch` name in
`conta.registry.BACKBONES` by a factory `(width, strides, dilations, **options) -> Backbone`
(docs/design.md, "Adding a backbone"); the ResNets register in `conta.models.resnet`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from torch import Tensor, nn

from conta.registry import BACKBONES


class Backbone(Protocol):
    """What heads may rely on: five feature maps (the stem's, then each of four stages') and
    their channel counts; calling it gives the last map."""

    out_channels: list[int]

    def forward_stages(self, x: Tensor) -> list[Tensor]: ...

    def __call__(self, x: Tensor) -> Tensor: ...


BackboneFactory = Callable[..., nn.Module]
"""(width, strides, dilations, **options) -> a module with the Backbone protocol."""


def create_backbone(arch: str, width: int = 64, strides: Sequence[int] = (2, 2, 2, 1),
                    dilations: Sequence[int] = (1, 1, 1, 1), **options: object) -> nn.Module:
    """The registered backbone `arch` (`strides` of the stem and stages 2-4, `dilations` of
    stages 1-4); `options` are the factory's own (the ResNets': stride_in_1x1,
    maxpool_ceil_mode, multi_grid)."""
    return BACKBONES.get(arch)(width, strides, dilations, **options)
