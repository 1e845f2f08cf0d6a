"""The segmentation stage's pre- and post-processing against deeplab-pytorch's arithmetic: the
whole-image test and its upsampling, the CRF's colour order, and the scale augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from _reference import bilinear_2d
from _seg_tiny import seg_config

from conta.seg_predictor import build_seg_model, logits_to_probs, model_meta, predict_logits


def test_test_runs_the_unpadded_image_and_upsamples_straight_to_its_size(tmp_path: Path) -> None:
    # deeplab-pytorch's test: the model on the whole image, logits resized to H x W, softmax
    cfg = seg_config(tmp_path, "seg.msc_scales=[]")
    model = build_seg_model(model_meta(cfg.seg, ["background", "a", "b"])).eval()
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    image = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    logits = predict_logits(model, image, "imagenet", torch.device("cpu"))
    assert seen == [(1, 3, 37, 45)]
    probs = logits_to_probs(logits, (37, 45))
    up = np.stack([bilinear_2d(plane, (37, 45)) for plane in logits.numpy().astype(np.float64)])
    expected = np.exp(up - up.max(0)) / np.exp(up - up.max(0)).sum(0)
    np.testing.assert_allclose(probs.numpy(), expected, atol=1e-5)


class _RecordingCrf:
    """Stands in for pydensecrf's DenseCRF2D: records the bilateral image, returns the unary's softmax."""

    images: list[np.ndarray] = []

    def __init__(self, width: int, height: int, n_labels: int) -> None:
        self.unary = None

    def setUnaryEnergy(self, unary: np.ndarray) -> None:  # noqa: N802 (pydensecrf's names)
        self.unary = unary

    def addPairwiseGaussian(self, **_: float) -> None:  # noqa: N802
        pass

    def addPairwiseBilateral(self, rgbim: np.ndarray, **_: float) -> None:  # noqa: N802
        assert rgbim.dtype == np.uint8 and rgbim.flags.c_contiguous and rgbim.flags.writeable
        _RecordingCrf.images.append(rgbim.copy())

    def inference(self, iterations: int) -> np.ndarray:
        return np.exp(-self.unary) / np.exp(-self.unary).sum(0)


def test_crf_compares_bgr_for_deeplab_and_rgb_for_the_seeds(monkeypatch) -> None:
    # deeplab-pytorch reads images with cv2 (BGR); IRNet's seeds CRF gets imageio's RGB
    from types import SimpleNamespace

    from conta.config import load_config
    from conta.ops import crf

    monkeypatch.setattr(crf, "_backend", lambda: SimpleNamespace(DenseCRF2D=_RecordingCrf))
    _RecordingCrf.images = []
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 2] = 200, 10                      # red-ish in RGB
    image.setflags(write=False)                                 # as conta.io.load_rgb returns it
    cfg = load_config(None)
    crf.crf_refine_probs(image, np.full((2, 2, 3), 0.5, np.float32), cfg.seg.crf)
    crf.crf_refine_labels(image, np.zeros((2, 3), np.int64), 2, cfg.ir_label.crf)
    seg_image, seed_image = _RecordingCrf.images
    assert cfg.seg.crf.image == "bgr" and cfg.ir_label.crf.image == "rgb"
    assert (seg_image[..., 0] == 10).all() and (seg_image[..., 2] == 200).all()
    np.testing.assert_array_equal(seed_image, image)


def test_crf_image_of_deeplab_pytorch_main_wraps_the_mean_subtracted_bgr() -> None:
    from conta.ops.crf import crf_colours

    rgb = np.array([[[0, 0, 0], [200, 120, 110]]], np.uint8)
    # BGR minus (104.008, 116.669, 122.675), truncated toward zero, modulo 256
    wrapped = crf_colours(rgb, "bgr_mean_wrapped")
    np.testing.assert_array_equal(wrapped, [[[152, 140, 134], [5, 3, 77]]])
    np.testing.assert_array_equal(crf_colours(rgb, "bgr"), rgb[..., ::-1])


def _augmented(image: np.ndarray, label: np.ndarray, seed: int, **seg: object) -> tuple[np.ndarray, np.ndarray]:
    from conta.config import SegConfig
    from conta.stages.seg import augment

    return augment(image, label, SegConfig(normalization="caffe", **seg), np.random.default_rng(seed))


def test_scale_augmentation_truncates_the_size_and_pads_bottom_right() -> None:
    # deeplab-pytorch: (int(h s), int(w s)); 375 x 1.25 = 468.75 -> 468 (rounding gives 469)
    image = np.full((375, 10, 3), 100, np.uint8)
    label = np.ones((375, 10), np.uint8)
    for seed in range(4):
        out, lab = _augmented(image, label, seed, scales=[1.25], crop_size=480)
        assert (lab[:468] != 255).any(axis=1).all() and (lab[468:] == 255).all()
        assert not out[468:].any()                                  # the padding is the mean colour
        columns = np.flatnonzero((lab != 255).any(axis=0))          # 12 image columns, at either side
        assert len(columns) == 12 and columns[0] in (0, 480 - 12) and np.ptp(columns) == 11


def test_scale_augmentation_resizes_the_float_image_bilinearly_without_antialiasing() -> None:
    # cv2.resize(float image, INTER_LINEAR) and PIL-nearest labels, then the mean subtraction (BGR)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    label = rng.integers(0, 4, (40, 52), dtype=np.uint8)
    from PIL import Image

    expected = np.stack([bilinear_2d(image[..., c].astype(np.float64), (30, 39)) for c in range(3)], axis=-1)
    expected = expected[..., ::-1] - np.array([104.008, 116.669, 122.675])
    expected_label = np.asarray(Image.fromarray(label).resize((39, 30), Image.NEAREST))
    for seed in range(4):
        out, lab = _augmented(image, label, seed, scales=[0.75], crop_size=48)
        if (lab[:, 0] == 255).all():                                # flipped: the padding came out on the left
            out, lab = out[:, ::-1], lab[:, ::-1]
        np.testing.assert_allclose(out[:30, :39], expected, atol=1e-3)
        np.testing.assert_array_equal(lab[:30, :39], expected_label)
        assert (lab[30:] == 255).all() and (lab[:, 39:] == 255).all()
