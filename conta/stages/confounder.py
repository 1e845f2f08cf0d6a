"""The confounder set of a round: class-average masks and their prior (CONTA, the paper's Sec. 4).

For class k, c_k is the mean over the images tagged with k of the binary map "the round's model
predicts k here", each resized with area interpolation to a fixed h x w. The same previous-round
masks, reduced to one foreground map per image, are the inputs X_m of the next round's attention.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from conta.artifacts.label_png import label_path, read_label
from conta.data.build import build_dataset
from conta.data.palette import IGNORE_INDEX
from conta.errors import ContaError
from conta.io import load_npz, save_npz
from conta.progress import progress
from conta.stages.round_context import RoundContext


def mask_source_dir(rnd: RoundContext) -> Path:
    """Where a round's masks for the confounder set come from (segmentation predictions by default)."""
    if rnd.cfg.conta.confounder_source == "pseudo_mask":
        return rnd.paths.pseudo_mask
    return rnd.paths.seg_pred(rnd.cfg.data.infer_split)


def area_resize(binary: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a stack of {0,1} maps (k x H x W) to k x h x w by area averaging."""
    t = torch.from_numpy(binary.astype(np.float32))[None]
    return F.adaptive_avg_pool2d(t, size)[0].numpy() if t.shape[-2:] != size else t[0].numpy()


def class_average_masks(
    masks: dict[str, np.ndarray], tags: dict[str, np.ndarray], n_classes: int, size: tuple[int, int],
    include_background: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (C, counts): C[k] = mean of resized (mask == k+1) over the images tagged k.

    With `include_background`, entry 0 is the background (averaged over every image) and the
    foreground classes follow. Classes never tagged keep an all-zero entry and count 0.
    """
    n = n_classes + int(include_background)
    sums = np.zeros((n, *size), np.float64)
    counts = np.zeros(n, np.int64)
    offset = int(include_background)
    for image_id, mask in masks.items():
        tagged = np.flatnonzero(tags[image_id])
        labels = list(tagged + 1) + ([0] if include_background else [])
        binary = np.stack([(mask == v) & (mask != IGNORE_INDEX) for v in labels]).astype(np.float32)
        resized = area_resize(binary, size)
        for row, k in zip(resized, list(tagged + offset) + ([0] if include_background else [])):
            sums[k] += row
            counts[k] += 1
    conf = sums / np.maximum(counts, 1)[:, None, None]
    return conf.astype(np.float32), counts


def make_prior(counts: np.ndarray, kind: str) -> np.ndarray:
    """P(c): uniform 1/n (the authors' choice) or the class frequency among tagged images."""
    n = len(counts)
    if kind == "uniform":
        return np.full(n, 1.0 / n, np.float32)
    total = counts.sum()
    return (counts / total).astype(np.float32) if total > 0 else np.full(n, 1.0 / n, np.float32)


def foreground_map(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """X_m of one image: its predicted foreground (not background, not ignore) at h x w."""
    fg = ((mask > 0) & (mask != IGNORE_INDEX)).astype(np.float32)
    return area_resize(fg[None], size)[0]


def build_confounder_set(rnd: RoundContext, log: Callable[[str], None] = print) -> Path:
    """Write round_<t>/confounder.npz (C, prior, class names) and the X_m of every training image."""
    paths, t = rnd.paths, rnd.t
    if paths.confounder.is_file():
        log(f"confounder set of round {t} exists: {paths.confounder}")
        return paths.confounder
    source = mask_source_dir(rnd)
    dataset = build_dataset(rnd.cfg.data, rnd.cfg.data.infer_split)
    missing = [i for i in dataset.ids if not label_path(source, i).is_file()]
    if missing:
        raise ContaError(f"{source}: {len(missing)} masks missing for the confounder set (first: {missing[0]}.png); "
                         "run the segmentation stage's prediction on the training split first")
    size = tuple(rnd.cfg.conta.confounder_size)
    masks = {i: read_label(label_path(source, i)) for i in progress(dataset.ids, desc="confounder set")}
    tags = {i: dataset.tags(i) for i in dataset.ids}
    conf, counts = class_average_masks(masks, tags, dataset.n_classes, size, rnd.cfg.conta.include_background)
    prior = make_prior(counts, rnd.cfg.conta.prior)
    xm = np.stack([foreground_map(masks[i], size) for i in dataset.ids]).astype(np.float16)
    names = (["background"] if rnd.cfg.conta.include_background else []) + dataset.class_names
    save_npz(paths.confounder, confounders=conf, prior=prior, counts=counts,
             class_names=np.array(names), ids=np.array(dataset.ids), xm=xm)
    log(f"confounder set of round {t}: {len(names)} entries of {size[0]}x{size[1]} from {source} -> {paths.confounder}")
    return paths.confounder


class ConfounderSet:
    """A round's saved confounder set, and the X_m lookup that the next classifier reads."""

    def __init__(self, path: Path) -> None:
        data = load_npz(path)
        self.path = path
        self.confounders = data["confounders"]
        self.prior = data["prior"]
        self.class_names = [str(n) for n in data["class_names"]]
        self._index = {str(i): k for k, i in enumerate(data["ids"])}
        self._xm = data["xm"]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.confounders.shape[1:])

    def mask_input(self, image_id: str) -> np.ndarray:
        """X_m of an image; an image without a previous mask gets zeros, hence uniform attention."""
        k = self._index.get(image_id)
        if k is None:
            return np.zeros(self.size, np.float32)
        return self._xm[k].astype(np.float32)
