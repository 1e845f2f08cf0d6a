"""ConfusionMatrix against hand-computed examples (VOC definitions: 255 in GT ignored, 255 predicted
is a miss, classes absent from both GT and prediction left out of the means)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conta.eval.metrics import ConfusionMatrix, format_table

NAMES = ["background", "cat", "dog", "cow"]

# GT / prediction of one 2 x 4 image. The last GT pixel is ignore (255) and its prediction (dog)
# must not count, which leaves dog and cow absent from both.
GT = np.array([[0, 0, 1, 1], [0, 1, 1, 255]], np.uint8)
PRED = np.array([[0, 1, 1, 1], [0, 0, 255, 2]], np.uint8)
# kept (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (0,0) (1,0) (1,miss)
#   row background: 2 right, 1 as cat          -> 3 pixels
#   row cat:        2 right, 1 as bg, 1 missed  -> 4 pixels
#   column totals:  background 3, cat 3
#   IoU bg  = 2 / (3 + 3 - 2) = 0.5
#   IoU cat = 2 / (4 + 3 - 2) = 0.4


def scored(pred: np.ndarray, gt: np.ndarray, names: list[str] = NAMES) -> dict:
    cm = ConfusionMatrix(names)
    cm.update(pred, gt)
    return cm.scores()


def test_counts_of_the_hand_example() -> None:
    cm = ConfusionMatrix(NAMES)
    cm.update(PRED, GT)
    expected = np.zeros((4, 5), np.int64)
    expected[0, 0], expected[0, 1] = 2, 1
    expected[1, 0], expected[1, 1], expected[1, 4] = 1, 2, 1
    np.testing.assert_array_equal(cm.counts, expected)


def test_scores_of_the_hand_example() -> None:
    s = scored(PRED, GT)
    assert s["per_class"] == {"background": pytest.approx(0.5), "cat": pytest.approx(0.4), "dog": None, "cow": None}
    assert s["miou"] == pytest.approx(0.45)           # (0.5 + 0.4) / 2: dog and cow left out
    assert s["pixel_acc"] == pytest.approx(4 / 7)      # the missed pixel is in the denominator
    assert s["mean_acc"] == pytest.approx((2 / 3 + 2 / 4) / 2)
    assert s["fwiou"] == pytest.approx(3 / 7 * 0.5 + 4 / 7 * 0.4)
    assert all(isinstance(v, float) for k, v in s.items() if k not in ("per_class", "miou_over"))


def test_class_only_predicted_counts_as_zero_iou() -> None:
    # dog is predicted on one background pixel but absent from GT: IoU 0, and it stays in the mean
    s = scored(np.array([[0, 2]]), np.array([[0, 0]]), ["background", "cat", "dog"])
    assert s["per_class"] == {"background": pytest.approx(0.5), "cat": None, "dog": 0.0}
    assert s["miou"] == pytest.approx(0.25)
    assert s["mean_acc"] == pytest.approx(0.5)         # accuracy only over classes in GT
    assert s["fwiou"] == pytest.approx(0.5)


def test_both_references_means_on_a_false_class() -> None:
    # cat right on 2 of its 3 pixels; dog predicted on one background pixel but absent from GT
    gt, pred = np.array([[0, 0, 1, 1, 1]]), np.array([[0, 2, 1, 1, 0]])
    names = ["background", "cat", "dog"]
    iou = {"background": 1 / 3, "cat": 2 / 3, "dog": 0.0}
    irnet, deeplab = scored(pred, gt, names), ConfusionMatrix(names)
    deeplab.update(pred, gt)
    deeplab = deeplab.scores("gt")
    for s in (irnet, deeplab):
        assert s["per_class"] == pytest.approx(iou)
        assert s["miou_gt_or_pred"] == pytest.approx(1 / 3)   # chainercv / IRNet: nanmean over all
        assert s["miou_gt"] == pytest.approx(1 / 2)           # deeplab-pytorch: classes with GT pixels
    assert (irnet["miou_over"], irnet["miou"]) == ("gt_or_pred", irnet["miou_gt_or_pred"])
    assert (deeplab["miou_over"], deeplab["miou"]) == ("gt", deeplab["miou_gt"])
    table = format_table(deeplab).splitlines()
    assert "50.00" in table[-3] and "classes in the ground truth (deeplab-pytorch)" in table[-3]
    assert "33.33" in table[-2] and "or the prediction" in table[-2]


def test_prediction_255_is_a_miss_not_a_skip() -> None:
    s = scored(np.array([[255, 255, 1]]), np.array([[1, 1, 1]]), ["background", "cat"])
    assert s["per_class"]["cat"] == pytest.approx(1 / 3)
    assert s["per_class"]["background"] is None        # "no label" is not a background prediction
    assert s["pixel_acc"] == pytest.approx(1 / 3)


def test_ground_truth_255_is_skipped_whatever_predicted() -> None:
    gt = np.array([[1, 255, 255]])
    s = scored(np.array([[1, 0, 255]]), gt, ["background", "cat"])
    assert s["per_class"] == {"background": None, "cat": 1.0}
    assert s["pixel_acc"] == 1.0


def test_perfect_prediction() -> None:
    s = scored(GT.copy(), GT)
    assert s["miou"] == s["pixel_acc"] == s["mean_acc"] == s["fwiou"] == 1.0


def test_no_pixels_gives_nan_not_an_exception() -> None:
    s = ConfusionMatrix(NAMES).scores()
    assert math.isnan(s["miou"]) and math.isnan(s["pixel_acc"]) and math.isnan(s["mean_acc"])
    assert s["fwiou"] == 0.0
    assert set(s["per_class"].values()) == {None}


@pytest.mark.parametrize(
    ("pred", "gt", "match"),
    [
        ([[0, 4]], [[0, 1]], "predicted value 4"),      # 4 == n: one past the last class
        ([[0, -1]], [[0, 1]], "predicted value -1"),
        ([[0, 200]], [[0, 1]], "predicted value 200"),
        ([[0, 0]], [[0, 4]], "ground-truth value 4"),
        ([[0, 0]], [[-1, 1]], "ground-truth value -1"),
        ([[0, 0, 0]], [[0, 1]], "shape"),
    ],
)
def test_out_of_range_values_raise(pred: list, gt: list, match: str) -> None:
    cm = ConfusionMatrix(NAMES)
    with pytest.raises(ValueError, match=match):
        cm.update(np.array(pred, np.int64), np.array(gt, np.int64))
    assert cm.counts.sum() == 0


def _images(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        shape = (5 + k, 7)
        gt = rng.integers(0, 4, shape).astype(np.uint8)
        gt[rng.random(shape) < 0.2] = 255
        pred = rng.integers(0, 4, shape).astype(np.uint8)
        pred[rng.random(shape) < 0.1] = 255
        out.append((pred, gt))
    return out


def _naive_counts(pairs: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    counts = np.zeros((n, n + 1), np.int64)
    for pred, gt in pairs:
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
            if g != 255:
                counts[g, n if p == 255 else p] += 1
    return counts


def test_streaming_equals_one_concatenated_update() -> None:
    pairs = _images(4)
    streamed = ConfusionMatrix(NAMES)
    for pred, gt in pairs:
        streamed.update(pred, gt)
    whole = ConfusionMatrix(NAMES)
    whole.update(np.concatenate([p.ravel() for p, _ in pairs]), np.concatenate([g.ravel() for _, g in pairs]))
    np.testing.assert_array_equal(streamed.counts, whole.counts)
    np.testing.assert_array_equal(streamed.counts, _naive_counts(pairs, 4))
    assert streamed.scores() == whole.scores()


def test_merge_equals_a_single_matrix() -> None:
    pairs = _images(5, seed=1)
    single, first, second = ConfusionMatrix(NAMES), ConfusionMatrix(NAMES), ConfusionMatrix(NAMES)
    for k, (pred, gt) in enumerate(pairs):
        single.update(pred, gt)
        (first if k < 2 else second).update(pred, gt)
    first.merge(second)
    np.testing.assert_array_equal(first.counts, single.counts)
    assert first.scores() == single.scores()


def test_format_table_lists_classes_and_summary() -> None:
    table = format_table(scored(PRED, GT), title="round 0 CAMs")
    lines = table.splitlines()
    assert lines[0] == "round 0 CAMs"
    for name in NAMES:
        assert any(line.split()[0] == name for line in lines)
    assert "50.00" in table and "40.00" in table          # per-class IoU in percent
    assert "45.00" in table                               # mIoU
    assert any(line.split()[0] == "dog" and "n/a" in line for line in lines)
    assert "pixel acc  57.14" in table and "fwIoU" in table
