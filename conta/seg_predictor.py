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

from conta.config import Config, SegConfig
from conta.data.transforms import normalize, resize_long_side, to_chw
from conta.engine.checkpoint import load_checkpoint, save_checkpoint
from conta.engine.device import resolve_device
from conta.errors import ContaError
from conta.models.deeplab import MSC, deeplab_v2

OUTPUT_STRIDE = 8
MODEL_KIND = "deeplab_v2"


def model_meta(seg: SegConfig, class_names: list[str], stride_in_1x1: bool = False) -> dict[str, Any]:
    """Everything needed to rebuild the network (the keys `conta weights convert` writes too);
    `class_names` includes "background" first."""
    return {
        "kind": MODEL_KIND,
        "arch": seg.arch,
        "width": seg.width,
        "n_classes": len(class_names),
        "atrous_rates": list(seg.atrous_rates),
        "msc_scales": list(seg.msc_scales),
        "stride_in_1x1": stride_in_1x1,
        "normalization": seg.normalization,
        "class_names": list(class_names),
    }


def build_seg_model(meta: dict[str, Any]) -> MSC:
    return deeplab_v2(meta["n_classes"], arch=meta["arch"], width=meta["width"],
                      atrous_rates=meta["atrous_rates"], msc_scales=meta["msc_scales"],
                      stride_in_1x1=meta.get("stride_in_1x1", False))


def save_seg_model(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    save_checkpoint(path, model=model.state_dict(), meta=meta)


def load_seg_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[MSC, dict[str, Any]]:
    """Rebuild the network from the file's meta and load its weights strictly; eval mode."""
    state = load_checkpoint(path)
    if not (isinstance(state, dict) and "model" in state and state.get("meta", {}).get("kind") == MODEL_KIND):
        raise ContaError(f"{path}: not a whole conta DeepLab (a model.pt of `conta seg train`, "
                         "or a `conta weights convert` output of kind deeplab_v2)")
    meta = state["meta"]
    model = build_seg_model(meta)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise ContaError(f"{path}: weights do not match their own meta ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), meta


def padded_size(size: tuple[int, int]) -> tuple[int, int]:
    """Right/bottom padding to a multiple of the output stride."""
    return tuple(-(-s // OUTPUT_STRIDE) * OUTPUT_STRIDE for s in size)  # type: ignore[return-value]


@torch.no_grad()
def predict_logits(model: MSC, image: np.ndarray, normalization: str, device: torch.device) -> torch.Tensor:
    """Stride-8 logits (C x h x w, float32, CPU) of the padded image; MSC max fusion in eval."""
    h, w = image.shape[:2]
    hp, wp = padded_size((h, w))
    x = torch.from_numpy(to_chw(normalize(image, normalization)))[None]
    x = F.pad(x, (0, wp - w, 0, hp - h))  # zero = the mean colour after normalisation
    return model.eval()(x.to(device))[0].float().cpu()


def logits_to_probs(logits: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Upsample stride-8 logits to the padded image, crop to `size` (H, W) and softmax."""
    logits = torch.as_tensor(logits, dtype=torch.float32)[None]
    up = F.interpolate(logits, size=padded_size(size), mode="bilinear", align_corners=False)
    return up[0, :, : size[0], : size[1]].softmax(0)


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
