"""Stage 2: seed (IR) labels from the CAMs, IRNet's cam_to_ir_label.

A high threshold (fg_threshold) keeps only confident foreground and a low one (bg_threshold) only
confident background; both maps are snapped to image edges by the seed refiner ir_label.refiner
names (`conta.ops.refiners`; IRNet's dense CRF on the raw picture by default).
Pixels that the two disagree on are ignored (255), so the IRN learns pixel relations only where
the CAM is trustworthy. Images are independent CPU work, so they run in a process pool.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from conta.artifacts.cam_map import read_cam_map, require_cam_maps
from conta.artifacts.label_png import label_path, read_label, write_label
from conta.config import DataConfig, IrLabelConfig
from conta.data.build import build_dataset
from conta.data.palette import IGNORE_INDEX
from conta.data.voc import VOCLayoutDataset
from conta.engine.device import cpu_workers
from conta.engine.distributed import all_reduce_sum, barrier, is_main, main_only, shard
from conta.engine.inference import describe_todo, pending
from conta.engine.parallel import run_parallel
from conta.eval.metrics import ConfusionMatrix
from conta.io import load_rgb
from conta.ops.refiners import SeedRefiner
from conta.registry import REFINERS
from conta.stages.paths import update_metrics, write_done_marker
from conta.stages.round_context import RoundContext


def threshold_argmax(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Argmax over [a constant background plane, scores]: 0 = background, k = scores[k - 1]."""
    plane = np.full((1, *scores.shape[1:]), threshold, dtype=scores.dtype)
    return np.concatenate([plane, scores]).argmax(axis=0)


def seed_label(image: np.ndarray, cams: np.ndarray, label_values: np.ndarray, cfg: IrLabelConfig,
               refine: SeedRefiner | None = None) -> np.ndarray:
    """H x W uint8 seeds from full-resolution CAMs (K, H, W): class, 0 = sure background, 255 = unsure;
    both thresholded maps snapped to the image by `refine` (default: the one ir_label.refiner names)."""
    refine = refine or REFINERS.get(cfg.refiner)
    fg = _confident(image, cams, cfg.fg_threshold, cfg, refine)
    bg = _confident(image, cams, cfg.bg_threshold, cfg, refine)
    label = label_values[fg]
    label[fg == 0] = IGNORE_INDEX
    label[(fg == 0) & (bg == 0)] = 0
    return label


def _confident(image: np.ndarray, cams: np.ndarray, threshold: float, cfg: IrLabelConfig,
               refine: SeedRefiner) -> np.ndarray:
    index = threshold_argmax(cams, threshold)
    if len(cams) > 0:  # with no tagged class there is nothing to refine
        index = refine(image, index, len(cams) + 1, cfg)
    return index


def _seed_one(job: tuple[Path, Path, Path, IrLabelConfig, SeedRefiner]) -> None:
    """Worker: one image from its files to its seed PNG (top level, so a process pool can call it;
    the refiner travels by reference, so one registered outside conta is imported there too)."""
    image_path, cam_path, out_path, cfg, refine = job
    image = load_rgb(image_path)
    record = read_cam_map(cam_path, image.shape[:2])
    write_label(out_path, seed_label(image, record.full_res(image.shape[:2]), record.label_values, cfg, refine))


def scored_ids(dataset: VOCLayoutDataset, pred_dir: Path) -> list[str]:
    """Ids of `dataset` with both a ground-truth mask and a prediction in `pred_dir` (VOC's
    train_aug has masks for a subset; COCO's are made on demand, so `has_masks` covers all)."""
    with_gt = dataset.ids if dataset.has_masks else [i for i in dataset.ids if dataset.mask_path(i).is_file()]
    return [i for i in with_gt if label_path(pred_dir, i).is_file()]


def finish_and_find_scored(data: DataConfig, folder: Path, n_images: int, name: str,
                           log: Callable[[str], None]) -> tuple[VOCLayoutDataset, list[str]]:
    """After every rank has written its shard: mark `folder` complete, and return the eval split
    with the ids that have both ground truth and an output (none: said, and nothing to score)."""
    barrier()
    if is_main():
        write_done_marker(folder, {"images": n_images})
    eval_set = build_dataset(data, data.eval_split)
    ids = scored_ids(eval_set, folder)
    if not ids:
        log(f"{name}: no ground truth for split {data.eval_split}; not scored")
    return eval_set, ids


def make_ir_labels(rnd: RoundContext, log: Callable[[str], None] = print) -> dict:
    """Write round_<t>/ir_label/<id>.png for every infer-split image (existing files are kept),
    then score the seeds on the eval split; returns the metrics stored under "ir_label".

    Under torchrun each rank labels its shard with its share of the node's cores
    (ir_label.workers = 0), and the scores are summed over the ranks.
    """
    log = main_only(log)
    paths, ir_label = rnd.paths, rnd.cfg.ir_label
    dataset = build_dataset(rnd.cfg.data, rnd.cfg.data.infer_split)
    todo = pending(dataset.ids, lambda i: paths.seed_label(i).is_file())
    refiner = ir_label.refiner
    refine = REFINERS.get(refiner)
    require_cam_maps(paths.cam_maps, todo)
    workers = cpu_workers(ir_label.workers)
    log(f"ir labels: {describe_todo(todo, dataset.ids)}, {workers} workers, "
        + (f"CRF {'on' if ir_label.crf.enabled else 'off'}" if refiner == "crf" else f"refiner {refiner}"))
    jobs = [(dataset.image_path(i), paths.cam_map(i), paths.seed_label(i), ir_label, refine) for i in todo]
    run_parallel(_seed_one, jobs, workers, "ir labels")
    eval_set, ids = finish_and_find_scored(rnd.cfg.data, paths.ir_label, len(dataset), "ir labels", log)
    if not ids:
        return {}
    metrics = score_seeds(eval_set, ids, paths.ir_label)
    if is_main():
        update_metrics(paths.metrics, "ir_label", metrics)
    log(f"ir labels [{rnd.cfg.data.eval_split}, {len(ids)} images]: precision {metrics['precision']:.4f}  "
        f"recall {metrics['recall']:.4f}  coverage {metrics['coverage']:.4f}  ignored {metrics['ignored_fraction']:.4f}")
    return metrics


def score_seeds(dataset: VOCLayoutDataset, ids: list[str], seed_dir: Path) -> dict:
    """Seed quality against ground truth (GT 255 pixels skipped).

    precision: correct / non-ignored seed pixels; coverage: non-ignored seeds / GT pixels;
    recall: correct / GT pixels; ignored_fraction: 255 seeds / all seed pixels.
    Collective under torchrun: each rank counts its shard and the counts are summed over ranks.
    """
    cm = ConfusionMatrix(["background"] + dataset.class_names)
    ignored = total = 0
    for image_id in shard(ids):
        seed = read_label(label_path(seed_dir, image_id))
        cm.update(seed, dataset.mask(image_id, seed.shape))
        ignored += int((seed == IGNORE_INDEX).sum())
        total += seed.size
    cm.counts = all_reduce_sum(cm.counts)
    ignored, total = (int(v) for v in all_reduce_sum(np.array([ignored, total], np.int64)))
    labelled = cm.counts[:, : cm.n]            # GT-labelled pixels that got a real seed
    correct = np.diag(labelled).astype(np.float64)
    per_seed = labelled.sum(axis=0)
    gt_pixels = max(int(cm.counts.sum()), 1)
    return {
        "images": len(ids),
        "precision": float(correct.sum() / max(int(per_seed.sum()), 1)),
        "recall": float(correct.sum() / gt_pixels),
        "coverage": float(per_seed.sum() / gt_pixels),
        "ignored_fraction": ignored / max(total, 1),
        "per_class_precision": {
            name: (float(c / n) if n else None) for name, c, n in zip(cm.class_names, correct, per_seed)
        },
    }
