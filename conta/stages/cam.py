"""Stage 1: the CAM classifier, IRNet's train_cam / make_cam / eval_cam.

    round_<t>/cam/checkpoint.pt   whole training state after every epoch (resume)
    round_<t>/cam/model.pt        {"model": weights, "meta": how to rebuild the network}
    round_<t>/cam/maps/<id>.npz   the image's CAMs (format: conta.artifacts.cam_map)
    round_<t>/metrics.json        sections "cam_train" (per-epoch log) and "cam" (scores)

Optimiser: SGD with an explicit momentum (cam.momentum). IRNet's PolyOptimizer passed its weight
decay in SGD's positional momentum slot, so the published IRNet and CONTA numbers were produced
with momentum 1e-4, in effect none: the default 0.0 reproduces them, 0.9 is the textbook value.

Context (CONTA rounds t >= 1, an `Intervention`): its `provider(image_id)` returns the image's
context input, an hc x wc float32 map (e.g. the previous round's foreground X_m; it is also asked
for validation images). The optional `module` turns a (B, 1, hc, wc) batch of those into M inside
the classifier's forward pass, so it trains with the classifier and is saved in model.pt; without
a module the provided map is M itself (the "mask" control). The map is treated as part of the
image: in training it is resized, flipped and cropped with the image and then brought back to
hc x wc; at test time it is flipped with the image. Where M enters is its `at` (the round
driver passes `conta.inject_at`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from conta.artifacts.cam_map import CamRecord, read_cam_map, write_cam_map
from conta.artifacts.model_file import load_weights, read_model_file, save_model_file
from conta.config import CamConfig
from conta.data.build import build_dataset, ensure_dataset
from conta.data.synthetic import known_confounders
from conta.data.transforms import normalize, random_crop, random_hflip, rescale, resize, resize_long_side, to_chw
from conta.data.voc import VOCLayoutDataset
from conta.engine.device import loader_workers, resolve_device, seed_everything
from conta.engine.distributed import all_reduce_sum, barrier, is_main, main_only, shard, world_size
from conta.engine.inference import WriteJob, describe_todo, pending, run_inference
from conta.engine.loop import EpochTraining, ValidateFn, steps_per_epoch, train_epochs
from conta.engine.precision import Precision
from conta.engine.sampling import EpochAugmented
from conta.engine.schedule import PolySchedule
from conta.errors import ContaError, DataError
from conta.eval.metrics import IRNET, ConfusionMatrix, Leakage, average_precision, format_table
from conta.io import save_rgb
from conta.models.backbone import create_backbone
from conta.models.cam_net import CamNet, ContextAt
from conta.ops.cam_fusion import scale_cams, tagged_cams
from conta.progress import progress, rate
from conta.stages.calibration import calibrate_random_bns
from conta.stages.paths import update_metrics
from conta.stages.round_context import RoundContext
from conta.viz import caption, grid, heatmap_overlay, label_legend, label_overlay
from conta.weights.backbone import load_backbone_weights

ContextProvider = Callable[[str], np.ndarray]
"""image id -> (hc, wc) float32 context input of the intervened classifier."""


@dataclass(frozen=True)
class Intervention:
    """What the classifier of a round t >= 1 adds: each image's context map, where M enters the
    network, and the module turning the map into M (None: the map is M, the "mask" control)."""

    provider: ContextProvider
    at: ContextAt
    module: torch.nn.Module | None = None

Log = Callable[[str], None]
CAM_KIND = "cam_net"
CALIBRATION_IMAGES = 32


# -- model files -------------------------------------------------------------------------------


def cam_meta(cam: CamConfig, data: VOCLayoutDataset, context_at: ContextAt | None,
             context_module: torch.nn.Module | None = None) -> dict:
    """What model.pt records to rebuild the classifier for `data`'s classes."""
    bb = cam.backbone
    return {"kind": CAM_KIND, "arch": bb.arch, "width": bb.width, "strides": list(bb.strides),
            "dilations": list(bb.dilations), "n_classes": data.n_classes, "class_names": list(data.class_names),
            "context_at": context_at,
            "context_module": type(context_module).__name__ if context_module is not None else None}


def build_cam_net(meta: dict, context_module: torch.nn.Module | None = None,
                  pretrained: str | None = None, log: Log = print) -> CamNet:
    """The network `meta` describes (arch, width, strides, dilations, n_classes, context_at);
    ImageNet weights go into the backbone before any context channel is added."""
    backbone = create_backbone(meta["arch"], meta["width"], meta["strides"], meta["dilations"])
    if pretrained:
        log(f"cam backbone: {load_backbone_weights(backbone, pretrained, meta['arch'], 'cam.backbone.pretrained')}")
    return CamNet(backbone, meta["n_classes"], meta["context_at"], context_module)


def save_cam_net(path: Path, model: CamNet, meta: dict) -> None:
    """model.pt: the weights and the `meta` that `build_cam_net` rebuilds the network from."""
    save_model_file(path, model.state_dict(), meta)


def load_cam_net(path: Path, context_module: torch.nn.Module | None = None) -> CamNet:
    """Rebuild a trained classifier from model.pt; a context module must be passed again (same
    structure) because only its weights are stored."""
    weights, meta = read_model_file(path, (CAM_KIND,), "a conta CAM classifier (a model.pt of `conta cam train`)")
    if (meta["context_module"] is None) != (context_module is None):
        raise ContaError(f"{path}: trained with context module {meta['context_module']!r}, "
                         f"given {type(context_module).__name__ if context_module is not None else None!r}")
    return load_weights(build_cam_net(meta, context_module), weights, path)


# -- training ----------------------------------------------------------------------------------


class CamTrainSet(EpochAugmented):
    """Augmented training samples: random long side in [lo, hi] (bicubic), ImageNet
    normalisation, horizontal flip, random crop padded with 0. Every random choice comes from
    (seed, epoch, index), so training resumes exactly."""

    def __init__(self, data: VOCLayoutDataset, cam: CamConfig, seed: int,
                 provider: ContextProvider | None = None) -> None:
        super().__init__(seed)
        self.data, self.cam, self.provider = data, cam, provider

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_id = self.data.ids[index]
        rng = self.sample_rng(index)
        image = self.data.image(image_id)
        native = context = None
        if self.provider is not None:
            native = provided_map(self.provider, image_id)
            context = resize(native, image.shape[:2], Image.BILINEAR)
        lo, hi = self.cam.resize_long
        long_side = int(rng.integers(lo, hi + 1))
        image = resize_long_side(image, long_side)
        if context is not None:
            context = resize_long_side(context, long_side, Image.BILINEAR)
        image, context = random_hflip(normalize(image), context, rng)
        image, context = random_crop(image, context, self.cam.crop_size, rng, label_fill=0)
        sample = {"image": torch.from_numpy(to_chw(image)), "label": torch.from_numpy(self.data.tags(image_id))}
        if context is not None:
            sample["context"] = torch.tensor(resize(context, native.shape, Image.BILINEAR))[None]
        return sample


def provided_map(provider: ContextProvider, image_id: str) -> np.ndarray:
    """The provider's map for one image as contiguous (hc, wc) float32."""
    m = np.ascontiguousarray(provider(image_id), dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"context provider returned shape {m.shape} for {image_id}; expected (hc, wc)")
    return m


def classification_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """IRNet's multilabel soft-margin loss (sigmoid BCE averaged over classes and batch), in float32
    under autocast too (log-sigmoid of fp16 logits loses the small losses of confident classes)."""
    logits = model(batch["image"], batch.get("context"))
    return F.multilabel_soft_margin_loss(logits.float(), batch["label"]), {}


def _validation(data: VOCLayoutDataset, provider: ContextProvider | None,
                device: torch.device) -> ValidateFn:
    """Mean loss and mAP of whole (unaugmented) images, one at a time since sizes differ.

    Collective under torchrun: each rank scores its shard of the images into its rows of one
    (images x [class scores, loss]) table, and the tables are summed over the ranks.
    """

    def validate(model: torch.nn.Module) -> dict[str, float]:
        table = np.zeros((len(data), data.n_classes + 1))
        for index in shard(range(len(data))):
            image_id = data.ids[index]
            x = torch.from_numpy(to_chw(normalize(data.image(image_id))))[None].to(device)
            m = torch.from_numpy(provided_map(provider, image_id))[None, None].to(device) if provider else None
            logits = model(x, m)
            y = torch.from_numpy(data.tags(image_id))[None].to(device)
            table[index, :-1] = logits[0].float().cpu().numpy()
            table[index, -1] = F.multilabel_soft_margin_loss(logits.float(), y).item()
        table = all_reduce_sum(table)
        ap = average_precision(table[:, :-1], data.tag_matrix())
        return {"loss": float(table[:, -1].mean()), "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")}

    return validate


def _calibrate(model: CamNet, samples: CamTrainSet, device: torch.device, log: Log) -> None:
    """A random backbone's frozen BN statistics, estimated from the first training samples."""
    batch = [samples[i] for i in range(min(len(samples), CALIBRATION_IMAGES))]
    x = torch.stack([b["image"] for b in batch]).to(device)
    m = torch.stack([b["context"] for b in batch]).to(device) if "context" in batch[0] else None
    calibrate_random_bns(model, x, m, name="cam backbone", log=log, samples=f"{len(batch)} training images",
                         why="random initialisation (cam.backbone.pretrained is null)")


def train(rnd: RoundContext, intervention: Intervention | None = None, log: Log = print) -> Path:
    """Train round t's classifier (resuming from its checkpoint) and write cam/model.pt.

    Under torchrun every rank trains (DDP, the configured batch split over the ranks), rank 0
    writes the files, and all return once model.pt is there.
    """
    log = main_only(log)
    paths, cam, data_cfg, run = rnd.paths, rnd.cfg.cam, rnd.cfg.data, rnd.cfg.run
    model_path = paths.cam_model
    if model_path.is_file():
        log(f"cam train: {model_path} exists; skipping")
        return model_path
    seed_everything(rnd.seed, run.deterministic)
    ensure_dataset(data_cfg, log=log)
    data = build_dataset(data_cfg, data_cfg.train_split)
    data.tag_matrix()  # every tag now (and, when they come from masks, every mask checked against its image)
    device = resolve_device(run.device)
    plan = EpochTraining(cam.epochs, cam.batch_size, seed=rnd.seed,
                         num_workers=loader_workers(data_cfg.num_workers, device),
                         precision=Precision.from_run(run, device), log_every=cam.log_every)
    max_step = steps_per_epoch(len(data), plan.batch_size, plan.drop_last, "cam.batch_size") * plan.epochs  # before any slow step
    provider = intervention.provider if intervention is not None else None
    context_module = intervention.module if intervention is not None else None
    context_at = intervention.at if intervention is not None else None
    meta = cam_meta(cam, data, context_at, context_module)
    model = build_cam_net(meta, context_module, cam.backbone.pretrained, log)
    model.to(device)
    train_set = CamTrainSet(data, cam, rnd.seed, provider)
    if not cam.backbone.pretrained:
        _calibrate(model, train_set, device, log)
    optimizer = torch.optim.SGD(model.param_groups(cam.head_lr_mult), lr=cam.lr,
                                momentum=cam.momentum, weight_decay=cam.weight_decay)
    schedule = PolySchedule(optimizer, cam.lr, max_step, cam.poly_power)
    validate = None
    if data_cfg.val_splits:
        validate = _validation(build_dataset(data_cfg, data_cfg.val_splits[0]), provider, device)
    started = time.perf_counter()
    history = train_epochs(model, optimizer, schedule, train_set, classification_loss, plan,
                           paths.cam_checkpoint, device, desc=f"cam r{rnd.t}", validate=validate, log=log)
    seconds = time.perf_counter() - started
    if is_main():
        update_metrics(paths.metrics, "cam_train", {
            "epochs": history, "session_seconds": seconds, "max_step": max_step, "context_at": context_at,
            "val_split": data_cfg.val_splits[0] if data_cfg.val_splits else None})
        save_cam_net(model_path, model, meta)  # written last: its presence means "trained"
    barrier()
    log(f"cam train: {model_path} written ({seconds:.1f} s this session)")
    return model_path


# -- inference ---------------------------------------------------------------------------------


def scaled_inputs(image: np.ndarray, scales: list[float]) -> list[torch.Tensor]:
    """IRNet's multi-scale inputs: the uint8 image resized by PIL bicubic to round(H s) x round(W s)
    (scale 1 untouched), then normalised, as normalised (3, h_s, w_s) tensors."""
    return [torch.from_numpy(to_chw(normalize(rescale(image, s)))) for s in scales]


CamInput = tuple[list[torch.Tensor], tuple[int, int], np.ndarray, np.ndarray | None]
"""One image's (scaled_inputs, (H, W), tagged classes, context map or None)."""


class CamInputs:
    """One image's inference inputs, read in a DataLoader worker: its `scaled_inputs`, its size,
    its tagged classes (0-based) and its context map (None without a provider)."""

    def __init__(self, data: VOCLayoutDataset, scales: list[float], provider: ContextProvider | None) -> None:
        self.data, self.scales, self.provider = data, scales, provider

    def __call__(self, image_id: str) -> CamInput:
        image = self.data.image(image_id)
        context = provided_map(self.provider, image_id) if self.provider is not None else None
        return scaled_inputs(image, self.scales), image.shape[:2], np.flatnonzero(self.data.tags(image_id)), context


def cam_record(model: CamNet, images: list[torch.Tensor], size: tuple[int, int], keys: np.ndarray, cam: CamConfig,
               device: torch.device, context: np.ndarray | None = None,
               precision: Precision = Precision()) -> CamRecord:
    """One H x W image's CAMs from its `scaled_inputs`: multi-scale + flip CAMs of its tagged
    classes, max-normalised (the network under `precision`'s autocast, the fusion in float32)."""
    m = torch.from_numpy(context)[None].to(device) if context is not None else None
    with precision.autocast():
        maps = scale_cams(model, [x.to(device, non_blocking=True) for x in images], cam.flip, m)
    strided, full = tagged_cams(maps, keys, tuple(size), high_res=cam.high_res == "direct")
    return CamRecord(keys.astype(np.int64), strided.cpu().numpy(), None if full is None else full.cpu().numpy())


def infer(rnd: RoundContext, intervention: Intervention | None = None, log: Log = print) -> Path:
    """Write cam/maps/<id>.npz for every image of data.infer_split (existing files are kept).

    Under torchrun each rank makes the maps of its shard (ids[rank::world]); all return once every
    rank is done. Images are decoded in data.num_workers DataLoader workers and the maps written
    by a background thread.
    """
    log = main_only(log)
    paths = rnd.paths
    data = build_dataset(rnd.cfg.data, rnd.cfg.data.infer_split)
    todo = pending(data.ids, lambda i: paths.cam_map(i).is_file())
    log(f"cam infer: {describe_todo(todo, data.ids)} ({rnd.cfg.data.infer_split} maps in {paths.cam_maps})")
    if todo:
        data.tag_matrix()  # a bad tag source (or mask) fails before the model is loaded
        _write_maps(rnd, data, todo, intervention, log)
    barrier()
    return paths.cam_maps


def _write_maps(rnd: RoundContext, data: VOCLayoutDataset, todo: list[str], intervention: Intervention | None,
                log: Log) -> None:
    paths = rnd.paths
    device = resolve_device(rnd.cfg.run.device)
    precision = Precision.from_run(rnd.cfg.run, device)
    context_provider = intervention.provider if intervention is not None else None
    context_module = intervention.module if intervention is not None else None
    model = precision.model(load_cam_net(paths.cam_model, context_module).to(device).eval())
    if (model.context_at is None) != (context_provider is None):
        raise ContaError(f"cam infer: the classifier of round {rnd.t} was trained "
                         f"{'without' if model.context_at is None else 'with'} a context input; "
                         f"the context provider must match")

    def infer_one(image_id: str, inputs: CamInput) -> WriteJob:
        images, size, keys, context = inputs
        record = cam_record(model, images, size, keys, rnd.cfg.cam, device, context, precision)
        return lambda: write_cam_map(paths.cam_map(image_id), record)

    seconds = run_inference(todo, CamInputs(data, rnd.cfg.cam.scales, context_provider), infer_one,
                            loader_workers(rnd.cfg.data.num_workers, device), f"cam maps r{rnd.t}", device)
    log(f"cam infer: {len(todo)} maps in {seconds:.1f} s ({rate(len(todo), seconds)}"
        f"{' on this process' if world_size() > 1 else ''}) -> {paths.cam_maps}")


# -- evaluation --------------------------------------------------------------------------------


def evaluate(rnd: RoundContext, log: Log = print) -> dict:
    """Score round t's CAMs on data.eval_split: mIoU at cam.eval_threshold, the threshold sweep,
    two trivial baselines and, on synthetic data, the leakage onto known confounders.

    Baselines: "all_background" labels every pixel 0; "tag_fill" labels every pixel of an image
    with its lowest-index tagged class (all background without tags): the score of a CAM that
    knows the tags and nothing about location.

    Collective under torchrun: each rank scores its shard, and the confusion counts and leakage
    sums are added over ranks before any score is computed.
    """
    log = main_only(log)
    paths, cam, t = rnd.paths, rnd.cfg.cam, rnd.t
    data = build_dataset(rnd.cfg.data, rnd.cfg.data.eval_split)
    if not data.has_masks:
        raise DataError(data.mask_dir, f"CAM evaluation needs ground-truth masks for split {rnd.cfg.data.eval_split}")
    names = ["background", *data.class_names]
    thresholds = sorted({*cam.sweep, cam.eval_threshold})
    sweep = {thr: ConfusionMatrix(names) for thr in thresholds}
    all_background, tag_fill = ConfusionMatrix(names), ConfusionMatrix(names)
    confounders = known_confounders(rnd.cfg.data.synth, data.class_names) if rnd.cfg.data.dataset == "synthetic" else []
    probes = [Leakage(c.name, c.source, c.target, c.partner) for c in confounders]
    for image_id in progress(shard(data.ids), desc=f"cam eval r{t}"):
        gt = data.mask(image_id)
        record = read_cam_map(paths.cam_map(image_id), gt.shape)
        keys, cams = record.keys, record.full_res(gt.shape)
        values = np.concatenate([[0], keys + 1])
        top = cams.max(axis=0) if len(keys) else np.zeros(gt.shape, np.float32)
        best = values[1 + cams.argmax(axis=0)] if len(keys) else np.zeros(gt.shape, np.int64)
        for thr, cm in sweep.items():  # argmax over [threshold plane, CAMs]; ties go to background
            cm.update(np.where(top > thr, best, 0), gt)
        all_background.update(np.zeros_like(gt), gt)
        tag_fill.update(np.full_like(gt, values[1] if len(keys) else 0), gt)
        for probe in probes:
            probe.update(keys.tolist(), cams, gt)
    _sum_over_ranks([*sweep.values(), all_background, tag_fill], probes)
    scores = sweep[cam.eval_threshold].scores(IRNET)
    curve = [{"threshold": thr, "miou": cm.scores(IRNET)["miou"]} for thr, cm in sweep.items()]
    best_point = max(curve, key=lambda p: p["miou"])
    result = {
        "split": rnd.cfg.data.eval_split, "images": len(data), "threshold": cam.eval_threshold, **scores,
        "sweep": curve, "best_threshold": best_point["threshold"], "best_miou": best_point["miou"],
        "baselines": {"all_background": all_background.scores(IRNET)["miou"], "tag_fill": tag_fill.scores(IRNET)["miou"]},
        "leakage": {p.name: p.result() for p in probes},
    }
    if is_main():
        update_metrics(paths.metrics, "cam", result)
    log(summary(result, t))
    return result


def _sum_over_ranks(matrices: list[ConfusionMatrix], probes: list[Leakage]) -> None:
    """Replace each rank's partial counts and sums by their totals over all ranks."""
    for cm, counts in zip(matrices, all_reduce_sum(np.stack([cm.counts for cm in matrices]))):
        cm.counts = counts
    sums = all_reduce_sum(np.array([[p.share, p.area, p.images] for p in probes], np.float64).reshape(-1, 3))
    for probe, (share, area, images) in zip(probes, sums):
        probe.share, probe.area, probe.images = float(share), float(area), int(images)


def summary(result: dict, t: int) -> str:
    """The CAM scores as text: the per-class table, the sweep, baselines and leakage."""
    pct = _percent
    lines = [format_table(result, f"CAM round {t} on {result['split']} ({result['images']} images), "
                                  f"threshold {result['threshold']:g} (IoU %)")]
    lines.append("  sweep: " + "  ".join(f"{p['threshold']:g}:{pct(p['miou'])}" for p in result["sweep"]))
    lines.append(f"  best threshold {result['best_threshold']:g}: mIoU {pct(result['best_miou'])}")
    base = result["baselines"]
    lines.append(f"  trivial baselines: all background {pct(base['all_background'])}, "
                 f"tag fill {pct(base['tag_fill'])}")
    for name, leak in result["leakage"].items():
        lines.append(f"  leakage {name}: {pct(leak['share'])}% of the CAM mass "
                     f"(uniform CAM: {pct(leak['area'])}%; {leak['images']} images)")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


# -- figure ------------------------------------------------------------------------------------


def show(rnd: RoundContext, image_id: str, out_path: Path, log: Log = print) -> Path:
    """A PNG: the image, its ground truth when there is one, and one CAM overlay per tagged class
    (drawn by rank 0 only under torchrun)."""
    if not is_main():
        return out_path
    paths = rnd.paths
    data = build_dataset(rnd.cfg.data, rnd.cfg.data.infer_split)
    if image_id not in data.ids:
        raise ContaError(f"cam show: {image_id!r} is not in split {rnd.cfg.data.infer_split} (data.infer_split)")
    image = data.image(image_id)
    record = read_cam_map(paths.cam_map(image_id), image.shape[:2])
    keys, cams = record.keys, record.full_res(image.shape[:2])
    panels = [caption(image, image_id)]
    if data.mask_path(image_id).is_file():
        mask = data.mask(image_id, image.shape[:2])
        panels.append(caption(label_overlay(image, mask), "ground truth"))
        panels.append(label_legend(mask, data.class_names))
    panels += [caption(heatmap_overlay(image, cam), data.class_names[k]) for k, cam in zip(keys, cams)]
    save_rgb(out_path, grid(panels))
    log(f"cam show: {out_path}")
    return out_path
