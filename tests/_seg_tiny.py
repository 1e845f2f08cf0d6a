"""The tiny DeepLab setting the segmentation tests share: ResNet-18 of width 8, 65-pixel crops,
a handful of iterations on a 9-image synthetic dataset (generated on first use, in well under a second)."""

from __future__ import annotations

from pathlib import Path

from conta.config import Config, load_config
from conta.seg_predictor import build_seg_model, model_meta, save_seg_model

IMAGE_SIZE = 48
N_CLASSES = 7  # background + the six synthetic classes


def seg_config(out: Path, *overrides: str) -> Config:
    """Data under out/data, runs under out/runs."""
    return load_config(None, [
        f"data.root={out / 'data'}", f"data.synth.image_size={IMAGE_SIZE}", "data.synth.n_train=6",
        "data.synth.n_val=3", "data.synth.n_val_deconfounded=0", "data.val_splits=[val]",
        f"run.out_dir={out / 'runs'}", "run.name=tiny", "run.device=cpu", "run.seed=3",
        "seg.arch=resnet18", "seg.width=8", "seg.crop_size=65", "seg.batch_size=2", "seg.iter_size=2",
        "seg.iterations=6", "seg.lr=0.002", "seg.label_source=gt", "seg.scales=[0.75,1.0,1.25]",
        "seg.log_every=2", "seg.image_log_every=3", "seg.save_every=3", "seg.average_loss=4", "seg.test_size=40",
        *overrides,
    ])


def untrained_model(cfg: Config, path: Path, class_names: list[str]) -> Path:
    """A randomly initialised model file, for tests that need a model but not a good one."""
    meta = model_meta(cfg.seg, ["background", *class_names])
    save_seg_model(path, build_seg_model(meta), meta)
    return path
