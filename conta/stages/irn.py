"""Stage 3: train the inter-pixel relation network on the seed labels (IRNet's train_irn).

The IRN gets its own ImageNet backbone (not the classifier's), frozen; only the boundary and
displacement branches learn, from pixel pairs whose seeds agree (same class = high affinity,
different class = a boundary between them). Pairs come from a path index over the crop's stride-4
grid. A finished `irn/model.pt` means the stage is done; an interrupted run resumes from
`irn/checkpoint.pt` at the last finished epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from conta.artifacts.label_png import label_path, read_label
from conta.artifacts.model_file import OLD_IRN, load_weights, read_meta, read_model_file, save_model_file
from conta.config import IrnConfig
from conta.data.build import build_dataset
from conta.data.transforms import normalize, random_crop, random_hflip, rescale, to_chw
from conta.data.voc import VOCLayoutDataset
from conta.engine.checkpoint import load_checkpoint
from conta.engine.device import loader_workers, resolve_device, seed_everything
from conta.engine.distributed import all_reduce_sum, barrier, is_main, main_only, mean_over_ranks, shard
from conta.engine.loop import EpochTraining, steps_per_epoch, train_epochs
from conta.engine.precision import Precision
from conta.engine.sampling import EpochAugmented
from conta.engine.schedule import PolySchedule
from conta.errors import ConfigError, ContaError, DataError
from conta.models.backbone import create_backbone
from conta.models.irn import IRN, PAD_MULTIPLE, infer_boundary_displacement, irn_losses
from conta.ops.path_index import PathIndex
from conta.progress import progress
from conta.stages.calibration import calibrate_random_bns
from conta.stages.paths import read_metrics, update_metrics
from conta.stages.round_context import RoundContext
from conta.weights.backbone import load_backbone_weights

CALIBRATION_IMAGES = 32  # crops whose statistics replace a random backbone's identity BN statistics
IRN_KIND = "irn"


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 RGB to the IRN's (3, H, W) ImageNet-normalised input."""
    return torch.from_numpy(to_chw(normalize(image)))


class IrnTrainDataset(EpochAugmented):
    """(image crop, stride-4 seed label) pairs; augmentation is a function of (seed, epoch, index).

    Random rescale (image bicubic, label nearest), normalisation, flip, a crop_size crop (image
    padded with 0 = the mean colour, label with 255), and the label reduced x0.25 (nearest) to
    the grid of the IRN's outputs.
    """

    def __init__(self, dataset: VOCLayoutDataset, ids: list[str], label_dir: Path, cfg: IrnConfig, seed: int) -> None:
        super().__init__(seed)
        self.dataset = dataset
        self.ids = ids
        self.label_dir = label_dir
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_id = self.ids[index]
        rng = self.sample_rng(index)
        image = self.dataset.image(image_id)
        label = read_label(label_path(self.label_dir, image_id), image.shape[:2], self.dataset.n_classes)
        scale = float(rng.uniform(*self.cfg.scale_range))
        image, label = rescale(image, scale), rescale(label, scale, Image.NEAREST)
        image, label = random_hflip(normalize(image), label, rng)
        image, label = random_crop(image, label, self.cfg.crop_size, rng)
        label = rescale(label, 0.25, Image.NEAREST)
        return {"image": torch.from_numpy(to_chw(image)), "label": torch.tensor(label)}  # PIL arrays are read-only


def irn_meta(irn: IrnConfig) -> dict:
    """What model.pt records to rebuild the network (training adds what it was trained on)."""
    bb = irn.backbone
    return {"kind": IRN_KIND, "arch": bb.arch, "width": bb.width, "strides": list(bb.strides),
            "dilations": list(bb.dilations), "displacement": irn.displacement}


def build_irn(meta: dict, pretrained: str | None = None, log: Callable[[str], None] = print) -> IRN:
    """The IRN `meta` describes (`irn_meta`), on a fresh backbone; `pretrained` ImageNet weights go into it."""
    net = create_backbone(meta["arch"], meta["width"], meta["strides"], meta["dilations"])
    if pretrained:
        log(f"irn backbone: {load_backbone_weights(net, pretrained, meta['arch'], 'irn.backbone.pretrained')}")
    return IRN(net, displacement=meta["displacement"])


class TrainedIRN(NamedTuple):
    """A trained IRN in eval mode and the crop size it was trained on, to which inference pads."""

    model: IRN
    crop_size: int


def load_irn(rnd: RoundContext, device: torch.device) -> TrainedIRN:
    """Round t's trained IRN, rebuilt from its model.pt alone and loaded strictly, on `device`.

    Files written before the training crop was recorded take it from `irn.crop_size`.
    """
    path = rnd.paths.irn_model
    if not path.is_file():
        raise ContaError(f"{path}: no trained IRN; run `conta irn train` first")
    weights, meta = read_model_file(path, (IRN_KIND,), "a conta IRN (a model.pt of `conta irn train`)")
    model = load_weights(build_irn(meta), weights, path).to(device).eval()
    return TrainedIRN(model, int(meta.get("crop_size", rnd.cfg.irn.crop_size)))


def upgrade_irn(rnd: RoundContext, log: Callable[[str], None] = print) -> Path:
    """Rewrite round t's IRN model.pt of the previous layout with the backbone strides and
    dilations of `rnd.cfg.irn` (the config it was trained with), checked by a strict load."""
    path = rnd.paths.irn_model
    if not path.is_file():
        raise ContaError(f"{path}: no trained IRN to upgrade")
    found = read_meta(path)
    if found is None or found["kind"] != OLD_IRN:
        raise DataError(path, "not an IRN model file of the previous layout; nothing to upgrade")
    state = load_checkpoint(path)
    meta = state["meta"]
    new = {**meta, **irn_meta(rnd.cfg.irn), "displacement": meta["displacement"], "crop_size": rnd.cfg.irn.crop_size}
    if (new["arch"], new["width"]) != (meta["arch"], meta["width"]):
        raise ConfigError(f"irn.backbone: the file was trained with {meta['arch']} width {meta['width']}, "
                          f"the config has {new['arch']} width {new['width']}; give the config it was trained with")
    load_weights(build_irn(new), state["model"], path)
    save_model_file(path, state["model"], new)
    log(f"irn upgrade: {path} now records strides {new['strides']} and dilations {new['dilations']}")
    return path


@torch.no_grad()
def displacement_mean(model: IRN, dataset: VOCLayoutDataset, ids: list[str], device: torch.device,
                      crop_size: int) -> torch.Tensor:
    """Mean raw displacement (dy, dx) over whole images in eval mode, which inference subtracts.

    Collective under torchrun: each rank sums over its shard of `ids`, the sums are added over ranks.
    """
    model.displacement_mean.zero_()
    total = torch.zeros(2, dtype=torch.float64)
    for image_id in progress(shard(ids), desc="irn displacement mean"):
        _, displacement = infer_boundary_displacement(model, image_tensor(dataset.image(image_id)).to(device), crop_size)
        total += displacement.mean(dim=(1, 2)).double().cpu()
    return (torch.from_numpy(all_reduce_sum(total.numpy())) / max(len(ids), 1)).float()


def _calibrate(model: IRN, samples: IrnTrainDataset, device: torch.device, log: Callable[[str], None]) -> None:
    """A random backbone's frozen BN statistics, estimated from the first training crops."""
    count = min(len(samples), CALIBRATION_IMAGES)
    images = torch.stack([samples[i]["image"] for i in range(count)]).to(device)
    calibrate_random_bns(model.backbone, images, name="irn backbone", log=log, samples=f"{count} training crops",
                         why="random initialisation (irn.backbone.pretrained is null)")


def train_irn(rnd: RoundContext, log: Callable[[str], None] = print) -> list[dict]:
    """Train round t's IRN on the train-split images that have seed labels; returns the per-epoch
    losses (also stored as metrics.json "irn_train"). Skipped when irn/model.pt exists.

    Under torchrun every rank trains (DDP, irn.batch_size split over the ranks); rank 0 writes
    the files and all return once model.pt is there.
    """
    log = main_only(log)
    paths, irn, data_cfg = rnd.paths, rnd.cfg.irn, rnd.cfg.data
    model_path = paths.irn_model
    if model_path.is_file():
        log(f"irn: {model_path} exists, training skipped")
        return read_metrics(paths.metrics).get("irn_train", [])
    if irn.crop_size % PAD_MULTIPLE:
        raise ConfigError(f"irn.crop_size: must be a multiple of {PAD_MULTIPLE} (the IRN's input stride), got {irn.crop_size}")
    dataset = build_dataset(data_cfg, data_cfg.train_split)
    ids = [i for i in dataset.ids if paths.seed_label(i).is_file()]
    if not ids:
        raise ContaError(f"{paths.ir_label}: no seed labels for split {data_cfg.train_split}; run `conta ir-label` first")
    device = resolve_device(rnd.cfg.run.device)
    seed_everything(rnd.seed, rnd.cfg.run.deterministic)
    plan = EpochTraining(irn.epochs, irn.batch_size, seed=rnd.seed,
                         num_workers=loader_workers(data_cfg.num_workers, device),
                         precision=Precision.from_run(rnd.cfg.run, device), log_every=irn.log_every)
    max_step = steps_per_epoch(len(ids), plan.batch_size, plan.drop_last, "irn.batch_size") * plan.epochs  # before any slow step
    train_set = IrnTrainDataset(dataset, ids, paths.ir_label, irn, rnd.seed)
    meta = irn_meta(irn)
    model = build_irn(meta, irn.backbone.pretrained, log).to(device)
    if not irn.backbone.pretrained:
        _calibrate(model, train_set, device, log)
    groups = [{"params": list(model.boundary_head.parameters()), "lr_mult": 1.0}]
    if model.displacement_head is not None:
        groups.append({"params": list(model.displacement_head.parameters()), "lr_mult": irn.displacement_lr_mult})
    optimizer = torch.optim.SGD(
        groups, lr=irn.lr, momentum=irn.momentum, weight_decay=irn.weight_decay,
    )
    schedule = PolySchedule(optimizer, irn.lr, max_step, irn.poly_power)
    grid = irn.crop_size // 4
    index = PathIndex(irn.radius, (grid, grid))
    log(f"irn: {len(ids)} images, {max_step} steps, radius {irn.radius} on the {grid} x {grid} grid "
        f"({index.n_offsets} offsets x {index.n_src} sources), device {device}")

    def loss_fn(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = irn_losses(net(batch["image"]), batch["label"], index, dataset.n_classes,
                            pair_counts=mean_over_ranks)  # exact under DDP: one normaliser for all ranks
        total = losses.pop("total")
        return total, losses

    checkpoint = paths.irn_checkpoint
    history = train_epochs(model, optimizer, schedule, train_set, loss_fn, plan, checkpoint, device, "irn", log=log)
    if model.displacement_head is not None:
        model.displacement_mean.copy_(displacement_mean(model, dataset, ids, device, irn.crop_size))
    if is_main():
        save_model_file(model_path, model.state_dict(), {
            **meta, "radius": irn.radius, "crop_size": irn.crop_size, "images": len(ids), "steps": max_step,
            "displacement_mean": model.displacement_mean.tolist(),
        })
        checkpoint.unlink(missing_ok=True)  # model.pt now marks the stage done; the resume state is spent
        update_metrics(paths.metrics, "irn_train", history)
    barrier()
    detail = (f"displacement mean {[round(v, 4) for v in model.displacement_mean.tolist()]}"
              if model.displacement_head is not None else "boundary branch only: irn.displacement is false")
    log(f"irn: model written to {model_path} ({detail})")
    return history
