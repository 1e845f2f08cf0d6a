"""A plain multi-label image classifier for pretraining a backbone, with trainable BN.

The WSSS networks freeze their BN statistics (`FrozenStatsBatchNorm2d`), as the references do on
top of ImageNet weights. Pretraining is where those statistics come from, so here BN learns them
from the batches, like any supervised ImageNet recipe.
"""

from __future__ import annotations

from torch import Tensor, nn

from conta.models.resnet import FrozenStatsBatchNorm2d, ResNet


def trainable_batchnorm(model: nn.Module) -> nn.Module:
    """Turn every frozen-statistics BN of `model` into an ordinary nn.BatchNorm2d, in place.

    The two classes share their state (the frozen one only overrides `forward`), so the weights,
    the statistics and the state-dict keys carry over unchanged.
    """
    for module in model.modules():
        if type(module) is FrozenStatsBatchNorm2d:
            module.__class__ = nn.BatchNorm2d
    return model


class ImageClassifier(nn.Module):
    """Backbone -> global average pooling -> linear scores, one per class (the ImageNet head)."""

    def __init__(self, backbone: ResNet, n_classes: int) -> None:
        super().__init__()
        self.backbone = trainable_batchnorm(backbone)
        self.fc = nn.Linear(backbone.out_channels[-1], n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(x).mean(dim=(2, 3)))
