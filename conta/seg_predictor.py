"""Segmentation inference: the DeepLab model file, whole-image logits, and a one-image `Predictor`.

A trained segmenter is one file, `model.pt` = {"model": state dict, "meta": how to rebuild it},
so predicting needs no training config: the meta carries the architecture, the input
normalisation and the class names. The stage (`conta.stages.seg`) and the demos share these
functions, so a test-set prediction and a demo prediction of the same image are identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from conta.artifacts.model_file import load_weights, read_model_file, save_model_file
from conta.config import Config, SegConfig
from conta.data.transforms import normalize, resize_long_side, to_chw
from conta.engine.device import resolve_device
from conta.errors import ConfigError, ContaError
from conta.models.deeplab import MSC, deeplab_v2, deeplab_v3, v3_rates
from conta.models.resnet import ARCHS

KINDS = {"deeplabv2": "deeplab_v2", "deeplabv3": "deeplab_v3", "deeplabv3plus": "deeplab_v3plus"}
"""seg.model -> the kind its model files record. Files from before v3 existed are all deeplab_v2."""


def model_meta(seg: SegConfig, class_names: list[str], stride_in_1x1: bool = False) -> dict[str, Any]:
    """Everything needed to rebuild the network (the keys `conta weights convert` writes too);
    `class_names` includes "background" first. v3/v3+ add their output stride and multi-grid,
    and record the ASPP rates that stride implies."""
    meta: dict[str, Any] = {
        "kind": KINDS[seg.model],
        "arch": seg.arch,
        "width": seg.width,
        "n_classes": len(class_names),
        "atrous_rates": list(seg.atrous_rates),
        "msc_scales": list(seg.msc_scales),
        "stride_in_1x1": stride_in_1x1,
        "normalization": seg.normalization,
        "class_names": list(class_names),
    }
    if seg.model != "deeplabv2":
        blocks = ARCHS[seg.arch][1][3] if seg.arch in ARCHS else None  # multi-grid is the ResNets' option
        if seg.multi_grid and len(seg.multi_grid) != blocks:
            raise ConfigError(f"seg.multi_grid: {seg.arch} has {blocks} blocks in its last stage, so "
                              f"{blocks} values (or [] for none), not {seg.multi_grid}" if blocks is not None
                              else f"seg.multi_grid: {seg.arch} is not a ResNet; leave it [] (none)")
        meta.update(atrous_rates=list(v3_rates(seg.output_stride)), output_stride=seg.output_stride,
                    multi_grid=list(seg.multi_grid))
    return meta


def build_seg_model(meta: dict[str, Any]) -> MSC:
    if meta["kind"] == KINDS["deeplabv2"]:
        return deeplab_v2(meta["n_classes"], arch=meta["arch"], width=meta["width"],
                          atrous_rates=meta["atrous_rates"], msc_scales=meta["msc_scales"],
                          stride_in_1x1=meta.get("stride_in_1x1", False))
    return deeplab_v3(meta["n_classes"], arch=meta["arch"], width=meta["width"], output_stride=meta["output_stride"],
                      decoder=meta["kind"] == KINDS["deeplabv3plus"], multi_grid=meta["multi_grid"],
                      msc_scales=meta["msc_scales"], stride_in_1x1=meta.get("stride_in_1x1", False))


def trains_bn(meta: dict[str, Any]) -> bool:
    """v3/v3+ train their BN (so it can be synchronised across processes); v2's is frozen."""
    return meta["kind"] != KINDS["deeplabv2"]


def save_seg_model(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    save_model_file(path, model.state_dict(), meta)


def load_seg_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[MSC, dict[str, Any]]:
    """Rebuild the network from the file's meta and load its weights strictly; eval mode."""
    weights, meta = read_model_file(path, tuple(KINDS.values()), "a whole conta DeepLab (a model.pt of "
                                    "`conta seg train`, or a `conta weights convert` output of kind deeplab_v2)")
    return load_weights(build_seg_model(meta), weights, path).to(device).eval(), meta


ARCHITECTURE_KEYS: tuple[str, ...] = ("kind", "arch", "width", "atrous_rates", "msc_scales", "normalization",
                                      "output_stride", "multi_grid")


def architecture_note(path: str | Path, meta: dict[str, Any], seg: SegConfig) -> str | None:
    """What a model file builds that the config's seg section would not, or None.

    The file wins: its meta is what its weights fit. Said out loud, so that a `seg.arch` the
    user set and the network that runs are never silently different.
    """
    try:
        expected = model_meta(seg, list(meta.get("class_names", [])), meta.get("stride_in_1x1", False))
    except ConfigError:  # a seg section that builds nothing; the file is used all the same
        expected = {}
    differ = [f"{key} {meta.get(key)} (config: {expected.get(key)})" for key in ARCHITECTURE_KEYS
              if meta.get(key) != expected.get(key)]
    if not differ:
        return None
    return f"{path} was built with {', '.join(differ)}; the file's own architecture is used"


@torch.no_grad()
def predict_logits(model: MSC, image: np.ndarray, normalization: str, device: torch.device) -> torch.Tensor:
    """Logits (C x h x w, float32, CPU) of the whole unpadded image, as deeplab-pytorch tests
    (v2: at /8, v3: at /output_stride, v3+: at /4); MSC max fusion in eval."""
    x = torch.from_numpy(to_chw(normalize(image, normalization)))[None]
    return model.eval()(x.to(device))[0].float().cpu()


def logits_to_probs(logits: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Upsample logits straight to the image size (H, W) (bilinear, align_corners=False) and softmax."""
    logits = torch.as_tensor(logits, dtype=torch.float32)[None]
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)[0].softmax(0)


class Predictor:
    """Load a trained segmenter once, then label any number of RGB images.

    >>> labels, probs = Predictor(cfg, "runs/demo/round_0/seg/model.pt").predict(image)
    """

    def __init__(self, cfg: Config, model_path: str | Path, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else resolve_device(cfg.run.device)
        self.model, self.meta = load_seg_model(model_path, self.device)
        self.seg = cfg.seg

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def predict(self, image: np.ndarray, resize: bool = False, crf: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(labels H x W uint8, probs C x H x W float32) at the input's size.

        `resize` runs the network with the long side at `seg.test_size` (the reference demo);
        `crf` refines the probabilities with the dense CRF `seg.crf` on the raw image.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ContaError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
        size = image.shape[:2]
        work = resize_long_side(image, self.seg.test_size, Image.BILINEAR) if resize else image
        logits = predict_logits(self.model, work, self.meta["normalization"], self.device)
        probs = logits_to_probs(logits, work.shape[:2])
        if crf:
            from conta.ops.crf import crf_refine_probs

            probs = torch.from_numpy(crf_refine_probs(work, probs.numpy(), self.seg.crf))
        if probs.shape[-2:] != size:
            probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
        probs_np = probs.numpy().astype(np.float32)
        return probs_np.argmax(0).astype(np.uint8), probs_np
