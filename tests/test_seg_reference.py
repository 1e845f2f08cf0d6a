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

