"""Stage 5: DeepLab trained on the round's pseudo-masks, then test and dense-CRF post-processing.

DeepLab v2 (the default) follows deeplab-pytorch as CONTA ran it: its scale augmentation
(`augment`), 321 crops, MSC loss summed over the four outputs, iter_size accumulation, SGD with
1x/10x/20x groups and a poly lr refreshed every 10 iterations, frozen BN. What changes:
whole-state checkpoints with exact resume (the data stream is a function of (seed, sample
number), not of a shuffling iterator), strict weight loading, NaN detection, and the CRF sees the
raw image. DeepLab v3/v3+ (seg.model, docs/segmentation.md) train at one scale with trainable BN,
their logits upsampled to the crop for the loss, with 1x/10x groups.

Under torchrun training is DDP: each iteration's seg.batch_size x seg.iter_size samples are split
over the ranks (each accumulates its share in micro-batches of at most seg.batch_size), trainable
BN is synchronised over the ranks (seg.sync_bn), and test / CRF shard the images over the ranks;
rank 0 writes checkpoints, TensorBoard and metrics.

Artifacts (round_<t>/seg/): checkpoint.pt, model.pt (+ meta), tb/, pred/<split>/<id>.png,
pred/<split>_crf/<id>.png, logits/<split>/<id>.npz (float16 logits + image size).

Test as deeplab-pytorch: the whole unpadded image, logits upsampled straight to H x W.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from conta.artifacts.label_png import label_path, read_label, write_label
from conta.artifacts.model_file import read_meta
from conta.config import CrfConfig, SegConfig
from conta.data.build import build_dataset, ensure_dataset
from conta.data.palette import IGNORE_INDEX, colorize
from conta.data.transforms import (denormalize, normalize, random_crop, random_hflip, resize, resize_linear,
                                   to_chw)
from conta.data.voc import VOCLayoutDataset
from conta.engine.device import cpu_workers, loader_workers, resolve_device, seed_everything
from conta.engine.distributed import (RankSlices, barrier, is_main, local_batch, main_only,
                                      world_size)
from conta.engine.inference import WriteJob, pending, run_inference
from conta.engine.parallel import run_parallel
from conta.engine.precision import Precision
from conta.engine.sampling import sample_rng
from conta.engine.schedule import PolySchedule
from conta.engine.sync_bn import convert_sync_batchnorm
from conta.engine.trainer import Checkpointer, LossCheck, LRSchedule, ProgressBar, Trainer
from conta.errors import ConfigError, ContaError, DataError
from conta.eval.evaluate import score_predictions
from conta.eval.metrics import DEEPLAB, format_table
from conta.io import load_npz, load_rgb, save_npz
from conta.models.deeplab import MSC, deeplab_param_groups
from conta.seg_predictor import (architecture_note, build_seg_model, load_seg_model, logits_to_probs,
                                 model_meta, predict_logits, save_seg_model, trains_bn)
from conta.stages.calibration import calibrate_random_bns
from conta.stages.paths import RoundPaths, update_metrics
from conta.stages.provenance import claim, made_by, model_identity
from conta.stages.round_context import RoundContext
from conta.weights.backbone import load_backbone_weights
from conta.weights.convert import LOADABLE, load_converted

Log = Callable[[str], None]


# -- data ------------------------------------------------------------------------------------


class SegTrainStream(Dataset):
    """Training sample number k = an id and an augmentation, both functions of (seed, k) only.

    Epoch e = k // N visits the ids in the permutation drawn from (seed, e), so resuming at any
    iteration replays exactly the samples an uninterrupted run would have drawn, for any worker count.
    """

    def __init__(self, dataset: VOCLayoutDataset, ids: list[str], label_dir: Path, seg: SegConfig, seed: int) -> None:
        self.dataset, self.ids, self.label_dir, self.seg, self.seed = dataset, ids, label_dir, seg, seed

    def locate(self, k: int) -> tuple[str, np.random.Generator]:
        epoch, pos = divmod(k, len(self.ids))
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))
        return self.ids[order[pos]], sample_rng(self.seed, epoch, pos)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id, rng = self.locate(k)
        image = self.dataset.image(image_id)
        label = read_label(label_path(self.label_dir, image_id), image.shape[:2], self.dataset.n_classes)
        image, label = augment(image, label, self.seg, rng)
        return torch.from_numpy(to_chw(image)), torch.from_numpy(label.astype(np.int64))


def augment(image: np.ndarray, label: np.ndarray, seg: SegConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """deeplab-pytorch's training augmentation of a uint8 image and its labels: a scale s drawn
    from seg.scales, int(H s) x int(W s) (the float image bilinear without antialiasing, the
    labels PIL nearest), padding bottom/right to the crop (the mean colour / 255), a random
    seg.crop_size crop, a horizontal flip with p = 0.5, then the normalisation."""
    scale = float(rng.choice(seg.scales))
    size = (int(image.shape[0] * scale), int(image.shape[1] * scale))
    image = normalize(resize_linear(image.astype(np.float32), size), seg.normalization)
    label = resize(label, size, Image.NEAREST)
    image, label = random_crop(image, label, seg.crop_size, rng, pad_at="end")  # 0 = the mean after normalize
    return random_hflip(image, label, rng)


def label_dir_for(rnd: RoundContext, dataset: VOCLayoutDataset) -> Path:
    """seg.label_source: the round's pseudo-masks, or the dataset's ground truth (read only)."""
    return dataset.mask_dir if rnd.cfg.seg.label_source == "gt" else rnd.paths.pseudo_mask


# -- loss and initialisation -----------------------------------------------------------------


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x H x W labels to `size` by nearest neighbour with PIL's pixel-centre convention."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def msc_loss(outputs: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Sum over the MSC outputs of the mean cross-entropy (ignore 255) against labels resized to each.

    An output whose resized labels are all ignored adds 0 instead of torch's NaN (0 / 0).
    """
    total = outputs[0].new_zeros(())
    for logits in outputs:
        target = resize_labels(labels, logits.shape[-2:])
        valid = (target != IGNORE_INDEX).sum()
        total = total + F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum") / valid.clamp(min=1)
    return total


def pretrained_meta(source: str | None) -> dict | None:
    """The meta of a conta weights file (a `conta seg train` model or a `conta weights convert`
    output); None for null, "hub" and torchvision ImageNet files."""
    if source is None or source == "hub" or not Path(source).is_file():
        return None
    meta = read_meta(source)
    return meta if meta is not None and meta["kind"] in LOADABLE else None


CALIBRATION_CROPS = 32
"""Training crops whose statistics become a random trunk's frozen BN statistics: one batch of 5
left the from-scratch demo segmenter's results swinging with the seed."""


def init_weights(model: MSC, seg: SegConfig, source_meta: dict | None,
                 sample_images: Callable[[], torch.Tensor], log: Log = print) -> str:
    """Apply seg.pretrained (whose `pretrained_meta` is `source_meta`) and say what it did.

    null                  random initialisation; v2's frozen BN statistics estimated on `sample_images()`
    a conta weights file  (model.pt of `conta seg train`, or `conta weights convert` output): the
                          trunk strictly, the head too when its architecture and classes match
    anything else         a torchvision ImageNet ResNet file or "hub": the backbone strictly, head random
    """
    source = seg.pretrained
    if source is None and seg.model != "deeplabv2":
        return "seg.pretrained is null: random initialisation (BN trains, so no statistics to estimate)"
    if source is None:
        # frozen BN keeps a random net's identity statistics, so activations are badly scaled and
        # training from scratch stalls or diverges; estimate them from data instead
        images = sample_images()
        n = calibrate_random_bns(model.base, images, name="seg train", log=log, samples=f"{len(images)} training crops",
                                 why="random initialisation (seg.pretrained is null)")
        return f"seg.pretrained is null: random initialisation, {n} BN layers' statistics from {len(images)} training crops"
    if source_meta is not None:
        return load_converted(model, source)
    report = load_backbone_weights(model.base.backbone, source, seg.arch, config_key="seg.pretrained")
    return f"backbone: {report}; {model.base.head_name} randomly initialised"


def _stride_in_1x1(seg: SegConfig, meta: dict | None) -> bool:
    """The block layout the pretrained file was made for (Caffe ResNets stride in the 1x1 conv)."""
    if meta is None:
        return False
    if meta.get("normalization", seg.normalization) != seg.normalization:
        raise ConfigError(f"seg.pretrained {seg.pretrained} expects seg.normalization={meta['normalization']}, "
                          f"not {seg.normalization}")
    return bool(meta.get("stride_in_1x1", False))


# -- training --------------------------------------------------------------------------------


def train(rnd: RoundContext, label_dir: Path | None = None, log: Log = print) -> Path:
    """Train the round's DeepLab; returns round_<t>/seg/model.pt (skips when it exists, resumes from checkpoint.pt)."""
    from conta.engine.tensorboard import TensorBoard  # here: inference and CRF workers need no TensorBoard

    log = main_only(log)
    seg, paths, t = rnd.cfg.seg, rnd.paths, rnd.t
    model_path = paths.seg_model
    if model_path.is_file():
        log(f"seg train: {model_path} exists; skipping")
        return model_path
    ensure_dataset(rnd.cfg.data, log=log)
    dataset = build_dataset(rnd.cfg.data, rnd.cfg.data.train_split)
    label_dir = Path(label_dir) if label_dir is not None else label_dir_for(rnd, dataset)
    ids = [i for i in dataset.ids if label_path(label_dir, i).is_file()]
    if not ids:
        raise ContaError(f"seg train: no labels for split {rnd.cfg.data.train_split} in {label_dir} "
                         f"(seg.label_source={seg.label_source}; run the pseudo-mask stage first or use gt)")
    log(f"seg train: round {t}, {len(ids)} of {len(dataset)} {rnd.cfg.data.train_split} images, labels from {label_dir}")

    device = resolve_device(rnd.cfg.run.device)
    seed_everything(rnd.seed, rnd.cfg.run.deterministic)
    per_iteration = seg.batch_size * seg.iter_size
    stream = SegTrainStream(dataset, ids, label_dir, seg, rnd.seed)
    source_meta = pretrained_meta(seg.pretrained)
    meta = model_meta(seg, ["background", *dataset.class_names], _stride_in_1x1(seg, source_meta))
    model = build_seg_model(meta)
    ckpt_path = paths.seg_checkpoint
    if not ckpt_path.is_file():  # a resumed run gets its weights from the checkpoint
        def first_crops() -> torch.Tensor:  # the samples of the first iterations
            return torch.stack([stream[k][0] for k in range(max(per_iteration, CALIBRATION_CROPS))])

        log(f"seg train: {init_weights(model, seg, source_meta, first_crops, log)}")
    micro, steps = micro_batches(local_batch(per_iteration, "seg.batch_size x seg.iter_size"), seg.batch_size)
    synced = synchronise_bn(model, meta, seg, micro, device)
    precision = Precision.from_run(rnd.cfg.run, device)
    model.to(device).train()
    optimizer, schedule = build_optimizer(model, seg)
    if world_size() > 1:
        log(f"seg train: {world_size()} processes x {micro * steps} samples per iteration "
            f"(micro-batches of {micro} x {steps}{', BN synchronised over them' if synced else ''})")

    def nan_error(at: int, loss: float) -> str:
        return f"seg train: loss is {loss} at iteration {at + 1}; lower seg.lr or check the labels"

    def saved(done: int) -> bool:
        return done % seg.save_every == 0 or done == seg.iterations

    step = SegStep(upsample=trains_bn(meta))  # v3/v3+ score logits upsampled to the crop
    trainer = Trainer(model, optimizer, step, seg.iterations, device, precision=precision, accumulate=steps, hooks=[
        LRSchedule(schedule),
        ProgressBar(lambda _: f"seg train r{t}"),
        LossCheck(lambda done: done % seg.log_every == 0 or saved(done), nan_error),
        TensorBoard(paths.seg_tb, seg.average_loss, seg.log_every, seg.image_log_every, "seg train",
                    lambda: step.panel(seg.normalization), log),
    ], checkpointer=Checkpointer(ckpt_path, saved, meta, on_resume=lambda tr: log(
        f"seg train: resuming at iteration {tr.step} from {ckpt_path}")))

    def batches(start: int) -> Iterator:
        sampler = RankSlices(range(seg.iterations * per_iteration), per_iteration, range(start, seg.iterations),
                             "seg.batch_size x seg.iter_size")
        # its own generator: the loader's base seed is then drawn from (run.seed) rather than from the
        # global RNG, whose state the checkpoints save, so a resumed run saves the same state as an
        # uninterrupted one
        return iter(DataLoader(stream, batch_size=micro, num_workers=loader_workers(rnd.cfg.data.num_workers, device),
                               sampler=sampler, pin_memory=device.type == "cuda",
                               generator=torch.Generator().manual_seed(rnd.seed)))

    trainer.train(batches)
    if is_main():
        save_seg_model(model_path, model, meta)
    barrier()
    log(f"seg train: model written to {model_path}")
    return model_path


def synchronise_bn(model: MSC, meta: dict, seg: SegConfig, micro: int, device: torch.device) -> bool:
    """Make a v3/v3+ model's BN cross-process under DDP when seg.sync_bn (in place); True if it did.

    Trainable BN needs two values per channel: the image-pooling branch has one per image, so a
    micro-batch of one image fails unless other processes share its statistics.
    """
    if not trains_bn(meta):
        return False
    synced = seg.sync_bn and world_size() > 1
    if micro * (world_size() if synced else 1) < 2:
        raise ConfigError(f"seg.model={seg.model} trains BatchNorm, which needs at least 2 images per "
                          f"micro-batch, and each process gets {micro}: raise seg.batch_size"
                          f"{' or set seg.sync_bn=true' if world_size() > 1 else ''}")
    if synced:
        convert_sync_batchnorm(model, device)
    return synced


def micro_batches(samples: int, batch_size: int) -> tuple[int, int]:
    """(size, count) of the micro-batches one process accumulates for its `samples` per iteration:
    the largest size up to seg.batch_size that divides them. One process: seg.batch_size x seg.iter_size."""
    size = max(d for d in range(1, min(samples, batch_size) + 1) if samples % d == 0)
    return size, samples // size


def build_optimizer(model: MSC, seg: SegConfig) -> tuple[torch.optim.SGD, PolySchedule]:
    """SGD over the model's groups (v2: 1x / 10x / 20x, BN in none; v3/v3+: 1x / 10x), lr refreshed
    every seg.lr_decay_every iterations."""
    optimizer = torch.optim.SGD(deeplab_param_groups(model, seg.lr, seg.weight_decay), lr=seg.lr, momentum=seg.momentum)
    return optimizer, PolySchedule(optimizer, seg.lr, seg.iterations, seg.poly_power, seg.lr_decay_every)


class SegStep:
    """The DeepLab step: MSC loss of one micro-batch (`upsample`: the logits upsampled to the crop
    (v3/v3+, torchvision, pytorch-deeplab-xception), not the labels shrunk to them (v2)). It keeps
    the last micro-batch for the TensorBoard panel."""

    def __init__(self, upsample: bool = False) -> None:
        self.upsample = upsample
        self.last: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None = None

    def __call__(self, net: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        images, labels = batch
        outputs = net(images)
        scored = [o.float() for o in outputs]
        if self.upsample:
            scored = [F.interpolate(o, size=labels.shape[-2:], mode="bilinear", align_corners=False) for o in scored]
        self.last = images, labels, outputs
        return msc_loss(scored, labels), {}

    def panel(self, normalization: str) -> np.ndarray:
        images, labels, outputs = self.last
        return training_panel(images[0], outputs[-1][0], labels[0], normalization)


def training_panel(image: torch.Tensor, logits: torch.Tensor, label: torch.Tensor, normalization: str) -> np.ndarray:
    """image | prediction | target, side by side (uint8 RGB) for TensorBoard."""
    size = tuple(image.shape[-2:])
    pred = F.interpolate(logits.detach()[None].float(), size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    rgb = denormalize(image.detach().cpu().numpy().transpose(1, 2, 0), normalization)
    return np.concatenate([rgb, colorize(pred.cpu().numpy()), colorize(label.cpu().numpy())], axis=1)


# -- inference -------------------------------------------------------------------------------


def default_model_path(rnd: RoundContext) -> Path:
    return rnd.paths.seg_model


def save_logits(path: Path, logits: torch.Tensor, size: tuple[int, int]) -> None:
    """Logits of the image as float16, with the image size they are upsampled to."""
    save_npz(path, logits=logits.numpy().astype(np.float16), size=np.asarray(size, np.int64))


Segmenter = tuple[MSC, dict]


class ModelOutputs:
    """The folders a model's predictions go to, and the model, loaded only when there is work.

    Each folder records the model file that filled it (`conta.stages.provenance`); one filled by
    another file is emptied first, after the new file has loaded, so a bad --model-path errors
    (one line naming it) before anything is touched, and the predictions of an earlier model are
    never reported as this one's. A missing model file is an error even when no work is left.
    """

    def __init__(self, rnd: RoundContext, model_path: Path | None, dataset: VOCLayoutDataset, log: Log) -> None:
        self.rnd, self.dataset, self.log = rnd, dataset, log
        self.path = Path(model_path) if model_path is not None else default_model_path(rnd)
        self.identity = model_identity(self.path)
        self._loaded: Segmenter | None = None

    def claim(self, *folders: Path) -> None:
        """Make `folders` this model's (collective: rank 0 empties stale ones while the others wait)."""
        stale = [folder for folder in folders if not made_by(folder, self.identity)]
        if stale:
            self.load()
            if is_main():
                for folder in stale:
                    claim(folder, self.identity, self.log)
        barrier()

    def load(self) -> Segmenter:
        if self._loaded is None:
            model, meta = load_seg_model(self.path, resolve_device(self.rnd.cfg.run.device))
            if meta["n_classes"] != self.dataset.n_classes + 1:
                raise ContaError(f"{self.path}: a model of {meta['n_classes']} classes cannot label a dataset "
                                 f"of {self.dataset.n_classes + 1} (background included)")
            note = architecture_note(self.path, meta, self.rnd.cfg.seg)
            if note:
                self.log(f"seg: {note}")
            self._loaded = model, meta
        return self._loaded


def write_predictions(rnd: RoundContext, dataset: VOCLayoutDataset, ids: list[str], segmenter: Segmenter,
                      pred_dir: Path, logit_dir: Path | None, desc: str) -> None:
    """Whole-image MSC inference for `ids`: palette PNGs into `pred_dir`, logits into `logit_dir` if given.

    Images are decoded in data.num_workers DataLoader workers; upsampling, argmax and writing run
    on the background writer thread, so the device only runs the network.
    """
    device = resolve_device(rnd.cfg.run.device)
    precision = Precision.from_run(rnd.cfg.run, device)
    model, meta = segmenter
    precision.model(model)

    def infer_one(image_id: str, image: np.ndarray) -> WriteJob:
        with precision.autocast():
            logits = predict_logits(model, image, meta["normalization"], device)

        def write() -> None:
            if logit_dir is not None:
                save_logits(logit_dir / f"{image_id}.npz", logits, image.shape[:2])
            labels = logits_to_probs(logits, image.shape[:2]).argmax(0).numpy().astype(np.uint8)
            write_label(label_path(pred_dir, image_id), labels)

        return write

    run_inference(ids, dataset.image, infer_one, loader_workers(rnd.cfg.data.num_workers, device), desc, device)


def test(rnd: RoundContext, split: str, model_path: Path | None = None, keep_logits: bool = False,
         log: Log = print) -> dict:
    """Predict every image of `split`; score them when the split has masks (metrics `seg_<split>`).

    Works on splits without ground truth too (the next round's training images). Images whose
    outputs exist are skipped, if the same model file made them (else they are made again).
    Returns the scores, or {} without ground truth. Under torchrun each rank predicts its shard
    and the confusion counts are summed over the ranks.
    """
    log = main_only(log)
    paths = rnd.paths
    ensure_dataset(rnd.cfg.data, log=log)
    dataset = build_dataset(rnd.cfg.data, split)
    outputs = ModelOutputs(rnd, model_path, dataset, log)
    pred_dir, logit_dir = paths.seg_pred(split), paths.seg_logits(split)
    outputs.claim(pred_dir, *([logit_dir] if keep_logits else []))
    todo = pending(dataset.ids, lambda i: label_path(pred_dir, i).is_file()
                   and (not keep_logits or (logit_dir / f"{i}.npz").is_file()))
    if todo:
        write_predictions(rnd, dataset, todo, outputs.load(), pred_dir, logit_dir if keep_logits else None,
                          f"seg test {split}")
    barrier()
    return _score(paths, dataset, pred_dir, f"seg_{split}", log)


def crf(rnd: RoundContext, split: str, model_path: Path | None = None, workers: int | None = None,
        log: Log = print) -> dict:
    """Dense-CRF post-processing of the kept logits (computed first where missing), on the raw
    images, in `workers` processes (default: this node's CPU cores shared among its ranks);
    metrics `seg_<split>_crf`. Under torchrun each rank refines its shard."""
    from conta.ops.crf import crf_available

    if not crf_available():
        raise ContaError('seg crf needs pydensecrf2: pip install "conta[crf]" (or run without it: seg.crf.enabled=false)')
    log = main_only(log)
    paths = rnd.paths
    ensure_dataset(rnd.cfg.data, log=log)
    dataset = build_dataset(rnd.cfg.data, split)
    outputs = ModelOutputs(rnd, model_path, dataset, log)
    logit_dir, out_dir = paths.seg_logits(split), paths.seg_pred(f"{split}_crf")
    outputs.claim(logit_dir, paths.seg_pred(split), out_dir)
    missing = pending(dataset.ids, lambda i: (logit_dir / f"{i}.npz").is_file())
    if missing:
        write_predictions(rnd, dataset, missing, outputs.load(), paths.seg_pred(split), logit_dir,
                          f"seg logits {split}")
    jobs = [(dataset.image_path(i), logit_dir / f"{i}.npz", label_path(out_dir, i), rnd.cfg.seg.crf)
            for i in pending(dataset.ids, lambda i: label_path(out_dir, i).is_file())]
    run_parallel(_crf_job, jobs, cpu_workers(workers), f"seg crf {split}")
    barrier()
    return _score(paths, dataset, out_dir, f"seg_{split}_crf", log)


def _crf_job(job: tuple[Path, Path, Path, CrfConfig]) -> None:
    from conta.ops.crf import crf_refine_probs

    image_path, logit_path, out_path, crf_cfg = job
    image = load_rgb(image_path)
    saved = load_npz(logit_path)
    probs = logits_to_probs(saved["logits"], tuple(int(s) for s in saved["size"]))
    if probs.shape[1:] != image.shape[:2]:
        raise DataError(logit_path, f"logits are for a {tuple(saved['size'])} image, {image_path} is {image.shape[:2]}")
    refined = crf_refine_probs(image, probs.numpy(), crf_cfg)
    write_label(out_path, refined.argmax(0).astype(np.uint8))


def _score(paths: RoundPaths, dataset: VOCLayoutDataset, pred_dir: Path, section: str, log: Log) -> dict:
    if not dataset.has_masks:
        log(f"{section}: no ground truth for split {dataset.split}; predictions in {pred_dir}")
        return {}
    scores = score_predictions(dataset, dataset.ids, lambda i: read_label(label_path(pred_dir, i)),
                               miou_over=DEEPLAB)
    log(format_table(scores, f"{section} ({paths.root.name}, {len(dataset)} images)"))
    if is_main():
        update_metrics(paths.metrics, section, scores)
    return scores
