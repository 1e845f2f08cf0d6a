"""Image and label augmentation shared by the classifier, IRN and segmentation stages.

Images stay H x W x 3 uint8 until `normalize`; after it they are float32 H x W x 3. Every random
choice takes an explicit `numpy.random.Generator`, so a sample's augmentation is a function of
(seed, epoch, index) and training is reproducible and resumable whatever the worker count.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from conta.data.palette import IGNORE_INDEX

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([104.008, 116.669, 122.675], np.float32)


def resize(image: np.ndarray, size: tuple[int, int], resample: int = Image.BICUBIC) -> np.ndarray:
    """Resize to (height, width); labels must use `Image.NEAREST`."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), resample=resample))


def resize_linear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float32 H x W x C image to (height, width) by plain bilinear interpolation
    (align_corners=False, no antialiasing when shrinking): cv2's INTER_LINEAR on float images,
    which deeplab-pytorch's scale augmentation uses."""
    if image.shape[:2] == tuple(size):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    return out[0].permute(1, 2, 0).numpy()


def rescale(image: np.ndarray, scale: float, resample: int = Image.BICUBIC) -> np.ndarray:
    h, w = image.shape[:2]
    return resize(image, (max(1, round(h * scale)), max(1, round(w * scale))), resample)


def resize_long_side(image: np.ndarray, long_side: int, resample: int = Image.BICUBIC) -> np.ndarray:
    return rescale(image, long_side / max(image.shape[:2]), resample)


def normalize(image: np.ndarray, kind: str = "imagenet") -> np.ndarray:
    """uint8 RGB -> float32: ImageNet mean/std on [0, 1] (torchvision weights) or Caffe BGR mean."""
    x = image.astype(np.float32)
    if kind == "imagenet":
        return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    if kind == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    raise ValueError(f"unknown normalization {kind!r}")


def denormalize(image: np.ndarray, kind: str = "imagenet") -> np.ndarray:
    """Inverse of `normalize`, back to uint8 RGB (for visualisation)."""
    if kind == "imagenet":
        x = (image * IMAGENET_STD + IMAGENET_MEAN) * 255.0
    elif kind == "caffe":
        x = (image + CAFFE_MEAN_BGR)[..., ::-1]
    else:
        raise ValueError(f"unknown normalization {kind!r}")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def random_crop(
    image: np.ndarray,
    label: np.ndarray | None,
    size: int,
    rng: np.random.Generator,
    image_fill: float = 0.0,
    label_fill: int = IGNORE_INDEX,
    pad_at: Literal["random", "end"] = "random",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop a size x size window; sides shorter than `size` go into a filled container (0 after
    normalisation is the mean colour; labels get the ignore value), at a random offset (IRNet's
    random_crop) or at its start, i.e. padded bottom/right (deeplab-pytorch's pad, then crop)."""
    h, w = image.shape[:2]
    ch, cw = min(h, size), min(w, size)
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    off_y = int(rng.integers(0, size - ch + 1)) if pad_at == "random" else 0
    off_x = int(rng.integers(0, size - cw + 1)) if pad_at == "random" else 0
    out = np.full((size, size) + image.shape[2:], image_fill, dtype=image.dtype)
    out[off_y : off_y + ch, off_x : off_x + cw] = image[top : top + ch, left : left + cw]
    if label is None:
        return out, None
    lab = np.full((size, size), label_fill, dtype=label.dtype)
    lab[off_y : off_y + ch, off_x : off_x + cw] = label[top : top + ch, left : left + cw]
    return out, lab


def random_hflip(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    if rng.random() < 0.5:
        image = image[:, ::-1]
        label = label[:, ::-1] if label is not None else None
    return image, label


def to_chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1))
