"""Time one training step of the CAM classifier (stage 1) or the IRN (stage 3) on synthetic crops.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/train_step.py cam [--config configs/demo.yaml] \\
        [--images 64] [--steps 10] [--warmup 2] [KEY=VALUE ...]
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/train_step.py irn ...

A step is what the stage's training loop does per batch: the forward pass under the configured
autocast, the stage's loss (the classifier's multilabel soft margin; the IRN's path-affinity
losses over the radius-`irn.radius` path index, with the displacement losses when the branch is
on), backward and the SGD step. The batches (cam.batch_size / irn.batch_size crops, augmented as
the stage augments them; the IRN's labels are the synthetic ground truth) are made once and kept
in memory, so data loading is not timed. Networks are randomly initialised with BN statistics
calibrated on the first batch. Prints CPU and wall seconds per step and images/s.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from _common import add_config_args, bench_run, describe, peak_gib, peak_memory, reset_peak_memory, write_json
from conta.config import Config
from conta.data.build import build_dataset, ensure_dataset
from conta.engine.precision import Precision
from conta.models.cam_net import calibrate_bn_statistics
from conta.models.irn import irn_losses
from conta.ops.path_index import PathIndex
from conta.stages import cam
from conta.stages.irn import IrnTrainDataset, build_irn, irn_meta


def _cam_setup(cfg: Config, device: torch.device):
    data = build_dataset(cfg.data, cfg.data.train_split)
    model = cam.build_cam_net(cam.cam_meta(cfg.cam, data, context_at=None)).to(device)
    samples = cam.CamTrainSet(data, cfg.cam, cfg.run.seed)
    optimizer = torch.optim.SGD(model.param_groups(cfg.cam.head_lr_mult), lr=cfg.cam.lr, momentum=cfg.cam.momentum,
                                weight_decay=cfg.cam.weight_decay)

    def loss(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return cam.classification_loss(net, batch)[0]

    return model, model, samples, cfg.cam.batch_size, optimizer, loss


def _irn_setup(cfg: Config, device: torch.device):
    data = build_dataset(cfg.data, cfg.data.train_split)
    model = build_irn(irn_meta(cfg.irn)).to(device)
    samples = IrnTrainDataset(data, data.ids, data.mask_dir, cfg.irn, cfg.run.seed)
    groups = [{"params": list(model.boundary_head.parameters())}]
    if model.displacement_head is not None:
        groups.append({"params": list(model.displacement_head.parameters())})
    optimizer = torch.optim.SGD(groups, lr=cfg.irn.lr, momentum=cfg.irn.momentum, weight_decay=cfg.irn.weight_decay)
    grid = cfg.irn.crop_size // 4
    index = PathIndex(cfg.irn.radius, (grid, grid))

    def loss(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return irn_losses(net(batch["image"]), batch["label"], index, data.n_classes)["total"]

    return model, model.backbone, samples, cfg.irn.batch_size, optimizer, loss


SETUPS = {"cam": _cam_setup, "irn": _irn_setup}


def measure(stage: str, cfg: Config, device: torch.device, steps: int, warmup: int) -> dict:
    """{"cpu_s", "wall_s"} per step, {"steps_s", "images_s"} over `steps` timed steps after `warmup` ones."""
    model, calibrated, samples, batch_size, optimizer, loss_fn = SETUPS[stage](cfg, device)
    n = (warmup + steps) * batch_size
    batches = list(DataLoader(torch.utils.data.Subset(samples, [i % len(samples) for i in range(n)]),
                              batch_size=batch_size))
    calibrate_bn_statistics(calibrated, batches[0]["image"].to(device))
    precision = Precision.from_run(cfg.run, device)
    net = precision.model(model.train())

    def step(batch: dict[str, torch.Tensor]) -> None:
        batch = {k: precision.input(v.to(device, non_blocking=True)) for k, v in batch.items()}
        with precision.autocast():
            loss = loss_fn(net, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[:warmup]:
        step(batch)
    reset_peak_memory(device)
    started, started_cpu = time.perf_counter(), time.process_time()
    for batch in batches[warmup:]:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    return {"cpu_s": cpu / steps, "wall_s": wall / steps, "steps_s": steps / wall, "images_s": steps * batch_size / wall,
            "batch": batch_size, "peak_gib": peak_gib(device), "peak": peak_memory(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=sorted(SETUPS))
    add_config_args(parser, "configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    args = parser.parse_intermixed_args()
    with bench_run(args) as (cfg, device):
        ensure_dataset(cfg.data, log=lambda _: None)
        result = measure(args.stage, cfg, device, args.steps, args.warmup)
        section = cfg.cam if args.stage == "cam" else cfg.irn
        print(describe(cfg, device))
        print(f"{args.stage} train step: {section.backbone.arch} width {section.backbone.width}, crop "
              f"{section.crop_size}, batch {result['batch']}"
              + (f", radius {cfg.irn.radius}, displacement {cfg.irn.displacement}" if args.stage == "irn" else ""))
        print(f"  {result['cpu_s']:.4f} CPU s, {result['wall_s']:.4f} wall s per step, {result['images_s']:.2f} images/s, "
              f"peak {result['peak']}")
        write_json(args.json, result)


if __name__ == "__main__":
    main()
