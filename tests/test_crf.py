"""Dense CRF wrapper: label and probability refinement, input validation, missing backend."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conta.config import CrfConfig
from conta.errors import ContaError
from conta.ops.crf import crf_available, crf_refine_labels, crf_refine_probs

needs_crf = pytest.mark.skipif(not crf_available(), reason="pydensecrf2 not installed")
DEEPLAB = CrfConfig(pos_xy_std=1.0, pos_w=3.0, bi_xy_std=67.0, bi_rgb_std=3.0, bi_w=4.0)


def _two_colours() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((40, 48, 3), np.uint8)
    image[:, 24:] = (200, 40, 30)
    truth = np.zeros((40, 48), np.int64)
    truth[:, 24:] = 1
    return image, truth


@needs_crf
def test_labels_snap_to_the_image() -> None:
    image, truth = _two_colours()
    labels = truth.copy()
    labels[5:13, 4:12] = 1            # a wrong blob inside the dark half
    labels[26:32, 30:38] = 0          # and one inside the red half
    image.setflags(write=False)       # as conta.io.load_rgb returns it
    refined = crf_refine_labels(image, labels, 2, CrfConfig())
    assert refined.shape == truth.shape
    assert np.array_equal(refined, truth)


@needs_crf
def test_probs_give_a_distribution_that_follows_the_image() -> None:
    image, truth = _two_colours()
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=truth.shape).transpose(2, 0, 1).astype(np.float32)
    probs[truth, np.arange(40)[:, None], np.arange(48)[None]] += 0.3   # a noisy lean towards the truth
    probs /= probs.sum(axis=0, keepdims=True)
    refined = crf_refine_probs(image, probs, DEEPLAB)
    assert refined.shape == probs.shape
    assert np.all(refined >= 0) and np.allclose(refined.sum(axis=0), 1.0, atol=1e-4)
    noisy, clean = (probs.argmax(axis=0) == truth).mean(), (refined.argmax(axis=0) == truth).mean()
    assert noisy < 0.9 < clean


def test_normalised_or_mismatched_images_are_refused() -> None:
    image, truth = _two_colours()
    mean_subtracted = image.astype(np.float32) - np.array([122.7, 116.7, 104.0], np.float32)
    with pytest.raises(ValueError, match="uint8 RGB"):
        crf_refine_labels(mean_subtracted, truth, 2, CrfConfig())
    with pytest.raises(ValueError, match="uint8 RGB"):
        crf_refine_probs(image[..., 0], np.ones((2, 40, 48)) / 2, DEEPLAB)
    with pytest.raises(ValueError, match="40 x 48 but"):
        crf_refine_labels(image, truth[:, :40], 2, CrfConfig())
    with pytest.raises(ValueError, match="0..1"):
        crf_refine_labels(image, truth + 1, 2, CrfConfig())


def test_missing_backend_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)     # makes the import fail
    assert not crf_available()
    image, truth = _two_colours()
    with pytest.raises(ContaError, match=r'pip install "conta\[crf\]".*crf\.enabled=false'):
        crf_refine_labels(image, truth, 2, CrfConfig())
