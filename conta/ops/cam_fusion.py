"""Multi-scale + flip CAM inference and the CAM normalisation shared by every consumer.

The inputs are the image at each scale, already resized and normalised (the CAM stage does it as
IRNet does: PIL bicubic on the uint8 image, then normalisation).

Two fusions of the same per-scale maps, as in IRNet's make_cam: the stride-4 CAM (each scale's
map resized to ceil(H/4) x ceil(W/4), summed, max-normalised), which the random walk reads, and
the full-resolution CAM (each scale's map resized straight to 16 ceil(H/16) x 16 ceil(W/16),
summed, cropped to H x W, max-normalised again), which CAM evaluation and seed labels read.
`upsample_cam` derives a full-resolution map from the stride-4 one instead (cam.high_res:
upsampled, which stores nothing more; docs/reproduce.md has what it changes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-5


class CamModel(Protocol):
    def cam(self, x: Tensor, context: Tensor | None = None) -> Tensor: ...


def strided_size(height: int, width: int, stride: int = 4) -> tuple[int, int]:
    """ceil(H/4) x ceil(W/4): the CAM grid every later stage works on."""
    return math.ceil(height / stride), math.ceil(width / stride)


def strided_up_size(height: int, width: int, stride: int = 16) -> tuple[int, int]:
    """16 ceil(H/16) x 16 ceil(W/16): the size the full-resolution CAM is fused at before its crop."""
    h, w = strided_size(height, width, stride)
    return h * stride, w * stride


@torch.no_grad()
def scale_cams(model: CamModel, images: Sequence[Tensor], flip: bool = True,
               context: Tensor | None = None) -> list[Tensor]:
    """Each scale's (flip-fused) CAM, (C, h_s, w_s) float32, in the order of `images`.

    `images` are one image's normalised (3, h_s, w_s) tensors, one per scale, on the model's
    device; `context` its (1, hc, wc) map, which is flipped with the image (the model resizes it
    to each scale itself). Scales of the same size share one forward pass together with their
    flips (distinct sizes cannot: padding would change the activations near the borders, so each
    runs with its flip only); the flip's map is flipped back and added.
    """
    if not images:
        raise ValueError("multiscale CAMs need at least one scale")
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(i)
    maps: list[Tensor | None] = [None] * len(images)
    for members in by_size.values():
        x = torch.stack([images[i] for i in members])
        m = context[None].expand(len(members), -1, -1, -1) if context is not None else None
        if flip:
            x = torch.cat([x, x.flip(-1)])
            m = torch.cat([m, m.flip(-1)]) if m is not None else None
        out = model.cam(x, m).float()  # under autocast: fuse in float32, whatever the network computed in
        for j, i in enumerate(members):
            maps[i] = out[j] + out[len(members) + j].flip(-1) if flip else out[j]
    return maps


def fuse_scales(maps: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
    """Sum of the per-scale maps, each resized bilinearly (align_corners=False) to `size`."""
    if maps[0].shape[0] == 0:  # no class (an untagged image): nothing to resize
        return maps[0].new_zeros((0, *size))
    return torch.stack([F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0]
                        for m in maps]).sum(dim=0)


def tagged_cams(maps: Sequence[Tensor], keys: np.ndarray | Tensor, size: tuple[int, int],
                high_res: bool = True) -> tuple[Tensor, Tensor | None]:
    """The tagged classes' fused CAMs of an H x W image from its per-scale maps: the stride-4 CAM
    (K, ceil(H/4), ceil(W/4)) and, with `high_res`, the full-resolution one (K, H, W), each
    max-normalised. Classes are selected first (the resizes act per class)."""
    keys = torch.as_tensor(keys, dtype=torch.long, device=maps[0].device)
    maps = [m[keys] for m in maps]
    strided = normalize_max(fuse_scales(maps, strided_size(*size)))
    if not high_res:
        return strided, None
    full = fuse_scales(maps, strided_up_size(*size))[:, : size[0], : size[1]]
    return strided, normalize_max(full)


def normalize_max(maps: Tensor) -> Tensor:
    """Each map divided by its own spatial maximum + 1e-5 (maps are >= 0; no min subtraction)."""
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + EPS)


def upsample_cam(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """Stride-4 CAMs (K, h4, w4) to (K, H, W): bilinear to exactly 4*h4 x 4*w4, then crop, which
    keeps the stride-4 grid aligned with the image (IRNet's strided_up_size)."""
    h4, w4 = cam.shape[-2:]
    up = F.interpolate(cam[None].float(), size=(4 * h4, 4 * w4), mode="bilinear", align_corners=False)[0]
    return up[:, : size[0], : size[1]]
