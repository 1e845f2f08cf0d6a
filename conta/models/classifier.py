"""A plain multi-label image classifier for pretraining a backbone, with trainable BN.

The WSSS networks freeze their BN statistics (`FrozenStatsBatchNorm2d`), as the references do on
top of ImageNet weights. Pretraining is where those statistics come from, so here BN learns them
from the batches, like any supervised ImageNet recipe.
"""

from __future__ import annotations

from torch import Tensor, nn

from conta.models.backbone import Backbone
from conta.models.resnet import FrozenStatsBatchNorm2d, convert_batchnorm


class ImageClassifier(nn.Module):
    """Backbone (its BN made trainable) -> global average pooling -> linear scores, one per class."""

    def __init__(self, backbone: Backbone, n_classes: int) -> None:
        super().__init__()
        self.backbone = convert_batchnorm(backbone, FrozenStatsBatchNorm2d, nn.BatchNorm2d)
        self.fc = nn.Linear(backbone.out_channels[-1], n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(x).mean(dim=(2, 3)))
