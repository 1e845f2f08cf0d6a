"""Multi-scale + flip CAM inference and the CAM normalisation shared by every consumer (spec 2.6).

Images are rescaled as tensors with bicubic, antialiased interpolation (align_corners=False): that
is PIL's bicubic filter (a = -0.5, widened support when shrinking; equal to PIL's float result to
~1e-6), so the reference's PIL resizing is matched without leaving the device. The reference
resized the uint8 image before normalising; the difference is within uint8 rounding.

High-resolution CAMs are always the stored stride-4 CAMs upsampled (`upsample_cam`), so CAM
evaluation, IR labels and figures agree whether or not `high_res` was saved. IRNet instead
upsampled each scale's map directly and max-normalised the result again; here the maxima stay
those of the strided maps (interpolation can only lower them slightly), the price of one definition.
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


def rescale_image(images: Tensor, scale: float) -> Tensor:
    """(B, 3, H, W) resized to round(H*s) x round(W*s), PIL-bicubic style."""
    h, w = images.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


@torch.no_grad()
def multiscale_cam(model: CamModel, image: Tensor, scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
                   flip: bool = True, context: Tensor | None = None) -> Tensor:
    """Sum over scales of the (flip-averaged) CAMs, each resized to the stride-4 grid.

    `image` is one normalised (3, H, W) tensor on the model's device; `context` its (1, hc, wc)
    map, which is flipped with the image (the model resizes it to each scale itself). One forward
    per scale, the image and its flip batched together. Returns (C, ceil(H/4), ceil(W/4)), unnormalised.
    """
    if not scales:
        raise ValueError("multiscale_cam needs at least one scale")
    size4 = strided_size(*image.shape[-2:])
    x0 = image[None]
    m0 = context[None] if context is not None else None
    maps = []
    for scale in scales:
        x, m = rescale_image(x0, scale), m0
        if flip:
            x = torch.cat([x, x.flip(-1)])
            m = torch.cat([m, m.flip(-1)]) if m is not None else None
        out = model.cam(x, m).float()  # under autocast: fuse in float32, whatever the network computed in
        cam = out[0] + out[1].flip(-1) if flip else out[0]
        maps.append(F.interpolate(cam[None], size=size4, mode="bilinear", align_corners=False)[0])
    return torch.stack(maps).sum(dim=0)


def normalize_max(maps: Tensor) -> Tensor:
    """Each map divided by its own spatial maximum + 1e-5 (maps are >= 0; no min subtraction)."""
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + EPS)


def select_classes(cam: Tensor, keys: np.ndarray | Tensor) -> Tensor:
    """The maps of the tagged classes `keys` (0-based), max-normalised: (K, h, w)."""
    keys = torch.as_tensor(keys, dtype=torch.long, device=cam.device)
    return normalize_max(cam[keys])


def upsample_cam(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """Stride-4 CAMs (K, h4, w4) to (K, H, W): bilinear to exactly 4*h4 x 4*w4, then crop, which
    keeps the stride-4 grid aligned with the image (IRNet's strided_up_size)."""
    h4, w4 = cam.shape[-2:]
    up = F.interpolate(cam[None].float(), size=(4 * h4, 4 * w4), mode="bilinear", align_corners=False)[0]
    return up[:, : size[0], : size[1]]
