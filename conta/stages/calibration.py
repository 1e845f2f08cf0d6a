"""BN statistics for a randomly initialised network, the one copy the training stages share.

A random backbone's frozen BNs keep the (0, 1) statistics of a fresh network, so they do not
normalise and the deeper features are badly scaled: training from scratch stalls or diverges.
Pretrained weights bring their own statistics; without them, the stages estimate them from
their first training samples (`conta.models.cam_net.calibrate_bn_statistics`), with a progress bar.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from conta.models.cam_net import calibrate_bn_statistics, frozen_bns
from conta.progress import counter


def calibrate_random_bns(model: nn.Module, *inputs: torch.Tensor | None, name: str, why: str,
                         samples: str, log: Callable[[str], None]) -> int:
    """Estimate `model`'s frozen BN statistics on one batch `inputs` (of which `samples` says what);
    logs `name: why; ...` first. Returns the BN count."""
    layers = len(frozen_bns(model))
    log(f"{name}: {why}; estimating the statistics of its {layers} BN layers from {samples}")
    with counter(layers, f"{name} BN statistics") as bar:
        return calibrate_bn_statistics(model, *inputs, on_layer=bar.update)
