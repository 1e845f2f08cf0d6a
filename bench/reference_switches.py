"""What conta's reference switches change, measured on one finished round of a run.

    PYTHONPATH=. .venv/bin/python bench/reference_switches.py --config configs/demo.yaml --run-dir runs/demo [--round 0]

The round's outputs are read, not rewritten (scratch files go to a temporary folder):

cam.high_res   every eval-split image's stored CAMs (made with the default, direct): the full-
               resolution map fused at the stride-16 size against the stride-4 map upsampled.
               Label agreement at cam.eval_threshold, CAM mIoU each way, and the seed labels each
               way (ir_label thresholds and CRF): agreement, precision, recall.
seg.crf.image  the round's DeepLab on the first of data.val_splits, refined with each colour
               input of the CRF: mIoU (deeplab-pytorch's mean) and label agreement with bgr.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from conta.artifacts.cam_map import CamRecord, read_cam_map, write_cam_map
from conta.artifacts.label_png import label_path, write_label
from conta.config import load_config
from conta.data.build import build_dataset
from conta.engine.device import resolve_device
from conta.eval.metrics import DEEPLAB, IRNET, ConfusionMatrix
from conta.ops.crf import crf_refine_probs
from conta.seg_predictor import load_seg_model, logits_to_probs, predict_logits
from conta.stages.ir_label import score_seeds, seed_label, threshold_argmax
from conta.stages.paths import round_paths


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Share of pixels where two lists of label maps agree."""
    same = sum(int((x == y).sum()) for x, y in zip(a, b))
    return same / sum(x.size for x in a)


def high_res_effect(cfg, t: int, scratch: Path) -> None:
    data = build_dataset(cfg.data, cfg.data.eval_split)
    names = ["background", *data.class_names]
    kinds = {"direct": lambda r, size: r.high_res, "upsampled": lambda r, size: CamRecord(r.keys, r.cam).full_res(size)}
    labels: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    seeds: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    cms = {k: ConfusionMatrix(names) for k in kinds}
    sizes = {"direct": 0, "upsampled": 0}
    for image_id in data.ids:
        image, gt = data.image(image_id), data.mask(image_id)
        path = round_paths(cfg, t).cam_map(image_id)
        record = read_cam_map(path, gt.shape)
        sizes["direct"] += path.stat().st_size
        write_cam_map(scratch / "strided.npz", CamRecord(record.keys, record.cam))
        sizes["upsampled"] += (scratch / "strided.npz").stat().st_size
        if record.high_res is None:
            raise SystemExit(f"{image_id}: no stored high_res; make the CAMs with cam.high_res=direct")
        for kind, full_res in kinds.items():
            cams = full_res(record, gt.shape)
            label = record.label_values[threshold_argmax(cams, cfg.cam.eval_threshold)]
            cms[kind].update(label, gt)
            labels[kind].append(label)
            seed = seed_label(image, cams, record.label_values, cfg.ir_label)
            seeds[kind].append(seed)
            write_label(label_path(scratch / kind, image_id), seed)
    print(f"cam.high_res on {cfg.data.eval_split} ({len(data)} images of {gt.shape[0]} x {gt.shape[1]} and the like):")
    print(f"  CAM labels at {cfg.cam.eval_threshold:g} agree on {100 * agreement(labels['direct'], labels['upsampled']):.2f} % "
          f"of pixels; seeds on {100 * agreement(seeds['direct'], seeds['upsampled']):.2f} %; CAM files "
          f"{sizes['direct'] / 2**20:.1f} MiB (direct) against {sizes['upsampled'] / 2**20:.1f} MiB (upsampled)")
    for kind in kinds:
        s = cms[kind].scores(IRNET)
        q = score_seeds(data, data.ids, scratch / kind)
        print(f"  {kind:9s}: CAM mIoU {100 * s['miou']:.2f}; seeds precision {100 * q['precision']:.2f}, "
              f"recall {100 * q['recall']:.2f}, ignored {100 * q['ignored_fraction']:.2f} %")


def crf_image_effect(cfg, t: int) -> None:
    split = cfg.data.val_splits[0]
    data = build_dataset(cfg.data, split)
    device = resolve_device(cfg.run.device)
    model, meta = load_seg_model(round_paths(cfg, t).seg / "model.pt", device)
    names = ["background", *data.class_names]
    kinds = ("bgr", "rgb", "bgr_mean_wrapped")
    labels: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    cms = {k: ConfusionMatrix(names) for k in ("no CRF", *kinds)}
    for image_id in data.ids:
        image, gt = data.image(image_id), data.mask(image_id)
        probs = logits_to_probs(predict_logits(model, image, meta["normalization"], device), gt.shape).numpy()
        cms["no CRF"].update(probs.argmax(0), gt)
        for kind in kinds:
            label = crf_refine_probs(image, probs, dataclasses.replace(cfg.seg.crf, image=kind)).argmax(0)
            cms[kind].update(label, gt)
            labels[kind].append(label)
    print(f"seg.crf.image on {split} ({len(data)} images), mIoU over the classes in the ground truth:")
    for kind, cm in cms.items():
        same = "" if kind in ("no CRF", "bgr") else f"; labels agree with bgr on {100 * agreement(labels[kind], labels['bgr']):.2f} %"
        print(f"  {kind:16s}: mIoU {100 * cm.scores(DEEPLAB)['miou']:.2f}{same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the run's YAML config")
    parser.add_argument("--run-dir", required=True, type=Path, help="the run directory")
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(args.config, [*args.overrides, f"run.out_dir={args.run_dir.parent}", f"run.name={args.run_dir.name}"])
    with tempfile.TemporaryDirectory() as scratch:
        high_res_effect(cfg, args.round, Path(scratch))
    crf_image_effect(cfg, args.round)


if __name__ == "__main__":
    main()
