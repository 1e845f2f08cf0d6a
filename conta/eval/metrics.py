"""Streaming confusion-matrix metrics with the VOC benchmark's definitions.

Rows are ground truth, columns predictions. Pixels whose ground truth is the ignore value (255)
are skipped. A prediction of 255 ("no label") counts as a miss for its ground-truth class. IoU of a
class is TP / (TP + FP + FN); classes that appear in neither ground truth nor prediction have an
undefined IoU.

The references average the IoUs over different classes, and both means are always computed:
"gt_or_pred" over the classes in the ground truth or the prediction (IRNet's evaluations,
chainercv), where a class predicted but absent counts with IoU 0, and "gt" over the classes in
the ground truth (deeplab-pytorch's scores). `miou` is the one the caller asks for, named by
`miou_over`: each stage asks for its reference's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from conta.data.palette import IGNORE_INDEX

MiouOver = Literal["gt_or_pred", "gt"]
IRNET: MiouOver = "gt_or_pred"      # CAMs, seeds, pseudo-masks (IRNet, chainercv)
DEEPLAB: MiouOver = "gt"            # the segmenter (deeplab-pytorch)
MIOU_OVER = {"gt_or_pred": "classes in the ground truth or the prediction (IRNet, chainercv)",
             "gt": "classes in the ground truth (deeplab-pytorch)"}


class ConfusionMatrix:
    """Accumulates an n x n pixel confusion matrix image by image."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        self.n = len(self.class_names)
        # one extra column for "no prediction" (255), which is a miss but not another class
        self.counts = np.zeros((self.n, self.n + 1), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
        gt = gt.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        keep = gt != IGNORE_INDEX
        gt, pred = gt[keep], pred[keep]
        bad = gt[(gt < 0) | (gt >= self.n)]
        if bad.size:
            raise ValueError(f"ground-truth value {int(bad[0])} outside 0..{self.n - 1} (and {IGNORE_INDEX} = ignore)")
        # check before mapping 255 to the "no prediction" column n, so a real value n is not a miss
        bad = pred[((pred < 0) | (pred >= self.n)) & (pred != IGNORE_INDEX)]
        if bad.size:
            raise ValueError(f"predicted value {int(bad[0])} outside 0..{self.n - 1} (and {IGNORE_INDEX} = no label)")
        pred = np.where(pred == IGNORE_INDEX, self.n, pred)
        self.counts += np.bincount(gt * (self.n + 1) + pred, minlength=self.n * (self.n + 1)).reshape(
            self.n, self.n + 1
        )

    def merge(self, other: ConfusionMatrix) -> None:
        self.counts += other.counts

    def iou(self) -> np.ndarray:
        tp = np.diag(self.counts[:, : self.n]).astype(np.float64)
        gt_total = self.counts.sum(axis=1)
        pred_total = self.counts[:, : self.n].sum(axis=0)
        union = gt_total + pred_total - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def scores(self, miou_over: MiouOver = IRNET) -> dict:
        """pixel_acc, mean_acc, both mean IoUs, fwiou and per_class IoU (by name), as plain
        floats; `miou` repeats the mean named by `miou_over`."""
        tp = np.diag(self.counts[:, : self.n]).astype(np.float64)
        gt_total = self.counts.sum(axis=1).astype(np.float64)
        total = gt_total.sum()
        iou = self.iou()
        with np.errstate(divide="ignore", invalid="ignore"):
            acc = np.where(gt_total > 0, tp / np.maximum(gt_total, 1), np.nan)
        freq = gt_total / total if total > 0 else np.zeros_like(gt_total)
        present = gt_total > 0
        means = {"gt_or_pred": _nanmean(iou), "gt": _nanmean(iou[present])}
        return {
            "miou": means[miou_over],
            "miou_over": miou_over,
            "miou_gt_or_pred": means["gt_or_pred"],
            "miou_gt": means["gt"],
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "mean_acc": _nanmean(acc),
            "fwiou": float(np.nansum(freq[present] * iou[present])),
            "per_class": {name: _float(v) for name, v in zip(self.class_names, iou)},
        }


def format_table(scores: dict, title: str = "") -> str:
    """A plain-text table of per-class IoU followed by the summary numbers (percent)."""
    width = max([len(k) for k in scores["per_class"]] + [10])
    lines = [title] if title else []
    for name, value in scores["per_class"].items():
        lines.append(f"  {name:<{width}} {_pct(value)}")
    over = scores["miou_over"]
    for name in (over, *(k for k in MIOU_OVER if k != over)):
        lines.append(f"  {'mIoU':<{width}} {_pct(scores[f'miou_{name}'])}  over {MIOU_OVER[name]}")
    lines.append(
        f"  pixel acc {_pct(scores['pixel_acc'])}  mean acc {_pct(scores['mean_acc'])}  "
        f"fwIoU {_pct(scores['fwiou'])}"
    )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "   n/a" if value is None or np.isnan(value) else f"{100 * value:6.2f}"


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class AP over the images (N x C scores and 0/1 labels): the mean, over the positives,
    of the precision at each positive's rank. Ties keep image order; a class with no positive
    image gets NaN."""
    ap = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        hits = labels[np.argsort(-scores[:, c], kind="stable"), c] > 0
        if hits.any():
            precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            ap[c] = precision[hits].mean()
    return ap


@dataclass
class Leakage:
    """Share of class `source`'s CAM mass (sum of normalised values over non-ignore pixels) that
    lies on ground-truth label `target`, averaged over images tagged with `source` (and with
    `partner`, when given); `area` is the share of those pixels, i.e. what a uniform CAM scores."""

    name: str
    source: int
    target: int
    partner: int | None = None
    share: float = 0.0
    area: float = 0.0
    images: int = 0

    def update(self, keys: list[int], cams: np.ndarray, gt: np.ndarray) -> None:
        if self.source not in keys or (self.partner is not None and self.partner not in keys):
            return
        valid = gt != IGNORE_INDEX
        cam = cams[keys.index(self.source)]
        mass = float(cam[valid].sum())
        if mass <= 0:
            return
        on_target = gt == self.target
        self.share += float(cam[on_target].sum()) / mass
        self.area += float(on_target.sum()) / float(valid.sum())
        self.images += 1

    def result(self) -> dict:
        n = max(self.images, 1)
        return {"share": self.share / n if self.images else None, "area": self.area / n if self.images else None,
                "images": self.images}
