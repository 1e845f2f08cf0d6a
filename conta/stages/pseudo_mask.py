"""Stage 4: pseudo-masks by a random walk of the CAMs on IRN boundaries (IRNet's make_sem_seg_labels).

The CAM is sharp where it fires but incomplete; the walk spreads each class's score within the
regions the IRN's boundaries enclose, so masks fill objects without crossing into neighbours.
Also hosts the driver of stages 2-4 (IRNet's run_sample.py without the instance steps).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from conta.artifacts.cam_map import CamRecord, cam_map_path, read_cam_map, require_cam_maps
from conta.artifacts.label_png import label_path, read_label, write_label
from conta.config import PseudoMaskConfig
from conta.data.build import build_dataset
from conta.data.voc import VOCLayoutDataset
from conta.engine.device import cpu_workers, loader_workers, resolve_device
from conta.engine.distributed import is_main, main_only
from conta.engine.inference import WriteJob, describe_todo, pending, run_inference
from conta.engine.parallel import run_parallel
from conta.errors import ConfigError
from conta.eval.evaluate import score_predictions
from conta.eval.metrics import IRNET, format_table
from conta.io import load_rgb
from conta.models.irn import IRN, infer_boundary_displacement
from conta.ops.cam_fusion import upsample_cam
from conta.ops.random_walk import propagate
from conta.stages.ir_label import finish_and_find_scored, make_ir_labels, threshold_argmax
from conta.stages.irn import image_tensor, load_irn, train_irn
from conta.stages.paths import update_metrics
from conta.stages.round_context import RoundContext

STEPS = ("ir_label", "irn", "pseudo_mask")


@torch.no_grad()
def pseudo_mask(model: IRN, image: np.ndarray, record: CamRecord, cfg: PseudoMaskConfig,
                device: torch.device, crop_size: int) -> np.ndarray:
    """H x W uint8 labels 0..C for one image: walk the strided CAMs on the boundaries of the IRN
    (trained on `crop_size` crops), upsample, global-max normalise, then argmax against a
    constant background score."""
    size = image.shape[:2]
    if len(record.keys) == 0:
        return np.zeros(size, np.uint8)
    with torch.autocast(device.type, torch.bfloat16, enabled=cfg.irn_amp == "bf16"):
        boundary, _ = infer_boundary_displacement(model, image_tensor(image).to(device), crop_size, displacement=False)
    boundary = boundary.float()
    walked = propagate(torch.from_numpy(record.cam).to(device), boundary, cfg.radius, cfg.beta, cfg.exp_times,
                       walk=cfg.walk)
    scores = upsample_cam(walked, size)
    scores = (scores / scores.max().clamp_min(1e-5)).cpu().numpy()
    return record.label_values[threshold_argmax(scores, cfg.bg_threshold)]


_walker: dict = {}  # what every job of this process shares: set once by _start_walker


def _start_walker(rnd: RoundContext) -> None:
    device = resolve_device(rnd.cfg.run.device)
    irn = load_irn(rnd, device)
    _walker.update(model=irn.model, cfg=rnd.cfg.pseudo_mask, device=device, crop_size=irn.crop_size)


def _walk_inputs(image_path: Path, cam_path: Path) -> tuple[np.ndarray, CamRecord]:
    image = load_rgb(image_path)
    return image, read_cam_map(cam_path, image.shape[:2], high_res=False)


def _walk_one(job: tuple[Path, Path, Path]) -> None:
    image_path, cam_path, out_path = job
    label = pseudo_mask(_walker["model"], *_walk_inputs(image_path, cam_path), _walker["cfg"], _walker["device"],
                        _walker["crop_size"])
    write_label(out_path, label)


def _load_for_walk(dataset: VOCLayoutDataset, cam_dir: Path, image_id: str) -> tuple[np.ndarray, CamRecord]:
    return _walk_inputs(dataset.image_path(image_id), cam_map_path(cam_dir, image_id))


def _walk_on_device(rnd: RoundContext, dataset: VOCLayoutDataset, todo: list[str], device: torch.device) -> None:
    """The accelerator path: inputs read in data.num_workers DataLoader workers, PNGs written in the background."""
    paths = rnd.paths
    irn = load_irn(rnd, device)

    def walk(image_id: str, inputs: tuple[np.ndarray, CamRecord]) -> WriteJob:
        label = pseudo_mask(irn.model, *inputs, rnd.cfg.pseudo_mask, device, irn.crop_size)
        return partial(write_label, label_path(paths.pseudo_mask, image_id), label)

    run_inference(todo, partial(_load_for_walk, dataset, paths.cam_maps), walk,
                  loader_workers(rnd.cfg.data.num_workers, device), "pseudo-masks", device)


def make_pseudo_masks(rnd: RoundContext, log: Callable[[str], None] = print) -> dict:
    """Write round_<t>/pseudo_mask/<id>.png for every infer-split image (existing files are kept),
    then score them on the eval split; returns the scores stored under "pseudo_mask".

    On a GPU one process per device walks its images; on the CPU the single-threaded walk runs in
    pseudo_mask.workers processes (0 = the node's cores shared among its ranks). Under torchrun
    each rank makes the masks of its shard, and the scores are summed over the ranks.
    """
    log = main_only(log)
    paths = rnd.paths
    dataset = build_dataset(rnd.cfg.data, rnd.cfg.data.infer_split)
    todo = pending(dataset.ids, lambda i: label_path(paths.pseudo_mask, i).is_file())
    require_cam_maps(paths.cam_maps, todo)
    device = resolve_device(rnd.cfg.run.device)
    if device.type == "cpu":
        workers = cpu_workers(rnd.cfg.pseudo_mask.workers)
        log(f"pseudo-masks: {describe_todo(todo, dataset.ids)}, {workers} workers")
        jobs = [(dataset.image_path(i), paths.cam_map(i), label_path(paths.pseudo_mask, i)) for i in todo]
        run_parallel(_walk_one, jobs, workers, "pseudo-masks", setup=_start_walker, setup_args=(rnd,))
        _walker.clear()  # the setup also ran here (run_parallel checks it first): free the IRN for the stages after
    elif todo:
        log(f"pseudo-masks: {describe_todo(todo, dataset.ids)} on {device}")
        _walk_on_device(rnd, dataset, todo, device)
    eval_set, ids = finish_and_find_scored(rnd.cfg.data, paths.pseudo_mask, len(dataset), "pseudo-masks", log)
    if not ids:
        return {}
    scores = score_predictions(eval_set, ids, lambda i: read_label(label_path(paths.pseudo_mask, i)),
                               miou_over=IRNET)
    scores["images"] = len(ids)
    if is_main():
        update_metrics(paths.metrics, "pseudo_mask", scores)
    log(format_table(scores, f"pseudo-masks vs ground truth [{rnd.cfg.data.eval_split}, {len(ids)} images]"))
    return scores


def parse_steps(text: str) -> tuple[str, ...]:
    """`ir_label,irn` -> ("ir_label", "irn"), checked against the known steps."""
    steps = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise ConfigError(f"--steps: unknown step {unknown[0] if unknown else '(none)'!r} (known: {', '.join(STEPS)})")
    return steps


def run_pseudo_mask_stages(rnd: RoundContext, steps: Sequence[str] = STEPS,
                           log: Callable[[str], None] = print) -> dict:
    """Stages 2-4 in order, each skipping finished work; returns {step: its metrics}."""
    log = main_only(log)
    paths = rnd.paths
    stages = {
        "ir_label": (make_ir_labels, paths.ir_label),
        "irn": (train_irn, paths.irn_model),
        "pseudo_mask": (make_pseudo_masks, paths.pseudo_mask),
    }
    results = {}
    for step in STEPS:
        if step not in steps:
            continue
        run, output = stages[step]
        started = time.perf_counter()
        results[step] = run(rnd, log=log)
        log(f"{step}: done in {time.perf_counter() - started:.1f} s -> {output}")
    log(f"round {rnd.t} metrics: {paths.metrics}")
    return results
