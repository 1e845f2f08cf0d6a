"""Score folders of predicted label PNGs against a dataset's ground truth."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from conta.data.voc import VOCLayoutDataset
from conta.engine.distributed import all_reduce_sum, shard
from conta.errors import DataError
from conta.eval.metrics import IRNET, ConfusionMatrix, MiouOver
from conta.io import load_label_png


def score_predictions(dataset: VOCLayoutDataset, ids: Iterable[str],
                      predict: Callable[[str], np.ndarray],
                      pred_path: Callable[[str], Path] | None = None, miou_over: MiouOver = IRNET) -> dict:
    """Accumulate a confusion matrix of `predict(id)` against each id's ground-truth mask; the
    scores' `miou` is the mean over `miou_over` (both means are in them).

    Collective under torchrun: each rank scores its shard of `ids` and the counts are summed over
    ranks (never the mIoUs averaged), so every rank must call it and all get the same scores.
    A prediction of the wrong size or with a value outside the classes (255 = no label) is a
    DataError naming `pred_path(id)` when given, else the ground-truth mask.
    """
    cm = ConfusionMatrix(["background"] + dataset.class_names)
    for image_id in shard(list(ids)):
        gt = dataset.mask(image_id)
        pred = predict(image_id)
        where = pred_path(image_id) if pred_path is not None else dataset.mask_path(image_id)
        if pred.shape != gt.shape:
            raise DataError(where, f"prediction size {pred.shape} differs from ground truth {gt.shape}")
        try:
            cm.update(pred, gt)
        except ValueError as exc:  # a bad predicted value: the user's file, not a traceback
            raise DataError(where, f"prediction for {image_id}: {exc}") from None
    cm.counts = all_reduce_sum(cm.counts)
    return cm.scores(miou_over)


def evaluate_folder(pred_dir: str | Path, dataset: VOCLayoutDataset) -> dict:
    """mIoU of `pred_dir/<id>.png` over a dataset split; a missing prediction is an error, not a skip."""
    pred_dir = Path(pred_dir)
    if not dataset.has_masks:
        raise DataError(dataset.mask_dir, f"no ground-truth masks for split {dataset.split}")
    missing = [i for i in dataset.ids if not (pred_dir / f"{i}.png").is_file()]
    if missing:
        raise DataError(pred_dir, f"{len(missing)} of {len(dataset)} predictions missing (first: {missing[0]}.png)")
    return score_predictions(dataset, dataset.ids, lambda i: load_label_png(pred_dir / f"{i}.png"),
                             pred_path=lambda i: pred_dir / f"{i}.png")
