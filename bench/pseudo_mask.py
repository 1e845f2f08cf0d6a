"""Time stage 4 per image (`conta.stages.pseudo_mask.pseudo_mask`): the IRN's boundaries on the
image and its flip, the random walk of the stride-4 CAMs, upsampling and the argmax.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/pseudo_mask.py [--config configs/voc12.yaml] \\
        [--size 500x375] [--images 5] [--classes 2] [KEY=VALUE ...]

The IRN is the config's (IRNet's ResNet-50 by default), randomly initialised with its frozen BN
statistics estimated on the first image (the time does not depend on the weights); images and
CAMs are seeded noise of the given W x H. Prints the median CPU and wall seconds per image after
one untimed image; CPU seconds (`time.process_time`) stay meaningful on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from conta.artifacts.cam_map import CamRecord
from conta.config import load_config
from conta.engine.device import resolve_device
from conta.models.cam_net import calibrate_bn_statistics
from conta.ops.cam_fusion import strided_size
from conta.stages.irn import build_irn, image_tensor, irn_meta
from conta.stages.pseudo_mask import pseudo_mask
from _common import REPO, peak_gib, reset_peak_memory, write_json


def measure(cfg, size: tuple[int, int], images: int, classes: int, device: torch.device) -> dict:
    """{"cpu_s", "wall_s"}: medians per image over `images` timed images (after one untimed one)."""
    height, width = size
    gen = np.random.default_rng(0)
    model = build_irn(irn_meta(cfg.irn)).to(device).eval()
    pictures = [gen.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(images + 1)]
    calibrate_bn_statistics(model.backbone, image_tensor(pictures[0])[None].to(device))
    record = CamRecord(np.arange(classes), gen.random((classes, *strided_size(height, width))).astype(np.float32))
    cpu, wall = [], []
    reset_peak_memory(device)
    for i, picture in enumerate(pictures):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started, started_cpu = time.perf_counter(), time.process_time()
        pseudo_mask(model, picture, record, cfg.pseudo_mask, device, cfg.irn.crop_size)  # ends on the host
        if i:
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    return {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall), "images": images,
            "peak_gib": peak_gib(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "voc12.yaml"))
    parser.add_argument("--size", default="500x375", help="W x H of the images")
    parser.add_argument("--images", type=int, default=5, help="timed images")
    parser.add_argument("--classes", type=int, default=2, help="tagged classes per image")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_intermixed_args()
    cfg = load_config(args.config, [*args.overrides, "irn.backbone.pretrained=null"])
    width, height = (int(v) for v in args.size.lower().split("x"))
    device = resolve_device(cfg.run.device)
    result = measure(cfg, (height, width), args.images, args.classes, device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; irn {cfg.irn.backbone.arch} "
          f"width {cfg.irn.backbone.width} displacement {cfg.irn.displacement}; walk radius {cfg.pseudo_mask.radius} "
          f"beta {cfg.pseudo_mask.beta} steps {2 ** cfg.pseudo_mask.exp_times}; {args.classes} classes")
    print(f"pseudo-mask {args.size}: {result['cpu_s']:.3f} CPU s, {result['wall_s']:.3f} wall s per image "
          f"(median of {args.images})")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
