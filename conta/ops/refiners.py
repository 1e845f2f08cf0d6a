"""The seed refiners of the ir_label step: each snaps a thresholded CAM label map to the image.

A refiner takes the raw image (H x W x 3 uint8), an H x W map of label indices (0 = background,
k = the k-th tagged class), the number of labels and the ir_label section, and returns the
refined index map. It is registered under its `ir_label.refiner` name in
`conta.registry.REFINERS` (docs/design.md, "Adding a seed refiner"); a refiner is looked up in
the stage and handed to its worker processes, so it must be a module-level function.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from conta.config import IrLabelConfig
from conta.ops.crf import crf_refine_labels
from conta.registry import REFINERS

SeedRefiner = Callable[[np.ndarray, np.ndarray, int, IrLabelConfig], np.ndarray]


@REFINERS.register("crf")
def dense_crf(image: np.ndarray, index: np.ndarray, n_labels: int, cfg: IrLabelConfig) -> np.ndarray:
    """IRNet's refinement: a dense CRF with the label map as unary (ir_label.crf); the identity
    when ir_label.crf.enabled is false."""
    return crf_refine_labels(image, index, n_labels, cfg.crf) if cfg.crf.enabled else index


@REFINERS.register("none")
def unrefined(image: np.ndarray, index: np.ndarray, n_labels: int, cfg: IrLabelConfig) -> np.ndarray:
    """The thresholded CAMs as they are."""
    return index
