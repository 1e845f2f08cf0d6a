"""Dense CRF refinement through pydensecrf2 (the maintained build of pydensecrf), an optional extra.

One wrapper serves both uses: seed labels (stage 2, label unaries) and DeepLab post-processing
(softmax unaries). Callers pass the raw uint8 RGB picture; `CrfConfig.image` says which colours
the bilateral term then compares: the RGB image (IRNet), the BGR image as cv2 reads it
(deeplab-pytorch; the permutohedral lattice is not symmetric in its feature order, so the
order moves a few labels), or deeplab-pytorch main.py's exact input, the mean-subtracted BGR
image cast to uint8, whose negative values wrap around modulo 256.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from conta.config import CrfConfig
from conta.data.transforms import CAFFE_MEAN_BGR
from conta.errors import ContaError

PROB_FLOOR = 1e-5                    # keeps -log p finite where the softmax underflows to 0


def _backend() -> ModuleType:
    try:
        return importlib.import_module("pydensecrf.densecrf")
    except ImportError:
        raise ContaError(
            'the dense CRF needs pydensecrf2: pip install "conta[crf]" '
            "(or set <section>.crf.enabled=false, e.g. ir_label.crf.enabled=false / seg.crf.enabled=false)"
        ) from None


def crf_available() -> bool:
    """Whether the pydensecrf2 backend imports."""
    try:
        _backend()
    except ContaError:
        return False
    return True


def _check_image(image: np.ndarray, size: tuple[int, ...]) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"CRF image must be the raw H x W x 3 uint8 RGB image (not normalised), got {got}")
    if image.shape[:2] != tuple(size):
        raise ValueError(f"CRF image is {image.shape[0]} x {image.shape[1]} but the labels/probabilities are {size[0]} x {size[1]}")


def crf_colours(image: np.ndarray, kind: str) -> np.ndarray:
    """The writable, contiguous uint8 image the bilateral term compares, from the raw RGB image.

    "bgr_mean_wrapped" is deeplab-pytorch's `image.astype(np.uint8)` of the mean-subtracted BGR
    float image: truncation toward zero, then the value modulo 256 (-5.3 -> 251).
    """
    if kind == "rgb":
        colours = image
    elif kind == "bgr":
        colours = image[..., ::-1]
    elif kind == "bgr_mean_wrapped":
        shifted = image[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR
        colours = (np.trunc(shifted).astype(np.int64) % 256).astype(np.uint8)
    else:
        raise ValueError(f"unknown CRF image {kind!r}")
    # pydensecrf takes a writable buffer; images read through PIL (conta.io.load_rgb) are read-only
    return np.require(colours, requirements=["C", "W"])


def _infer(image: np.ndarray, unary: np.ndarray, cfg: CrfConfig) -> np.ndarray:
    """Mean-field inference; `unary` is (n_labels, H*W) energies, returns (n_labels, H, W) marginals."""
    dcrf = _backend()
    n_labels = unary.shape[0]
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=cfg.pos_xy_std, compat=cfg.pos_w)
    crf.addPairwiseBilateral(sxy=cfg.bi_xy_std, srgb=cfg.bi_rgb_std, rgbim=crf_colours(image, cfg.image), compat=cfg.bi_w)
    marginals = crf.inference(cfg.iterations)
    return np.asarray(marginals, dtype=np.float32).reshape(n_labels, height, width)


def crf_refine_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, cfg: CrfConfig) -> np.ndarray:
    """Refine a hard label map (values 0..n_labels-1, all of them real labels) against the image.

    Each pixel trusts its label with probability cfg.gt_prob and spreads the rest evenly over
    the other labels (pydensecrf's unary_from_labels with zero_unsure=False). Returns H x W int64.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"CRF labels must be H x W, got shape {labels.shape}")
    _check_image(image, labels.shape)
    if n_labels < 2:
        raise ValueError(f"CRF needs at least 2 labels, got n_labels={n_labels}")
    if labels.min() < 0 or labels.max() >= n_labels:
        raise ValueError(f"CRF labels must lie in 0..{n_labels - 1}, got {labels.min()}..{labels.max()}")
    unary = np.full((n_labels, labels.size), -np.log((1.0 - cfg.gt_prob) / (n_labels - 1)), dtype=np.float32)
    unary[labels.reshape(-1), np.arange(labels.size)] = -np.log(cfg.gt_prob)
    return _infer(image, unary, cfg).argmax(axis=0)


def crf_refine_probs(image: np.ndarray, probs: np.ndarray, cfg: CrfConfig) -> np.ndarray:
    """Refine class probabilities (C x H x W, e.g. a softmax); returns C x H x W marginals."""
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"CRF probabilities must be C x H x W, got shape {probs.shape}")
    _check_image(image, probs.shape[1:])
    unary = -np.log(np.clip(probs, PROB_FLOOR, 1.0)).reshape(probs.shape[0], -1)
    return _infer(image, unary, cfg)
