"""Time stage 1's CAM inference (`conta cam infer`: multi-scale + flip CAMs, npz writing) on synthetic data.

    PYTHONPATH=. .venv/bin/python bench/cam_infer.py [--config configs/demo.yaml] [--images 64] [KEY=VALUE ...]
    torchrun --nproc_per_node=8 bench/cam_infer.py --config configs/voc12.yaml --images 4096 \\
        run.device=cuda run.amp=bf16 run.channels_last=true data.num_workers=4 data.synth.image_size=448

The classifier is the config's cam network, randomly initialised with its frozen BN statistics
estimated from the first images (the time does not depend on the weights, but uncalibrated
statistics make activations overflow in fp16 and underflow into slow subnormals on the CPU).
The whole stage is timed as a user runs it: decoding in data.num_workers DataLoader workers,
the forward passes (each scale with its flip in one batch), and the background npz writer.
Throughput is images/s over all processes; the stage ends at a barrier, so it includes the
slowest shard. CPU seconds per image are rank 0's process time (its threads, not its loader
workers) over its images: on a shared machine the steadier figure.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import add_config_args, bench_run, describe, peak_gib, peak_memory, reset_peak_memory, write_json
from conta.data.build import build_dataset, ensure_dataset
from conta.data.transforms import normalize, to_chw
from conta.engine.distributed import barrier, is_main, shard
from conta.models.cam_net import calibrate_bn_statistics
from conta.stages import cam
from conta.stages.paths import round_paths
from conta.stages.round_context import RoundContext

CALIBRATION_IMAGES = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, "configs/demo.yaml")
    args = parser.parse_intermixed_args()
    with bench_run(args) as (cfg, device):
        ensure_dataset(cfg.data, log=lambda _: None)
        data = build_dataset(cfg.data, cfg.data.infer_split)
        model_path = round_paths(cfg, 0).cam_model
        if is_main():
            meta = cam.cam_meta(cfg.cam, data, context_at=None)
            model = cam.build_cam_net(meta).eval()
            images = torch.stack([torch.from_numpy(to_chw(normalize(data.image(i))))
                                  for i in data.ids[:CALIBRATION_IMAGES]])
            calibrate_bn_statistics(model, images)
            cam.save_cam_net(model_path, model, meta)
        barrier()
        reset_peak_memory(device)
        started, started_cpu = time.perf_counter(), time.process_time()
        cam.infer(RoundContext.of(cfg, 0), log=lambda _: None)
        seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        if is_main():
            scales = ", ".join(f"{s:g}" for s in cfg.cam.scales)
            print(describe(cfg, device))
            print(f"cam infer: {len(data)} images of {cfg.data.synth.image_size} px, {cfg.cam.backbone.arch} "
                  f"width {cfg.cam.backbone.width}, scales [{scales}] flip {cfg.cam.flip}, "
                  f"{cfg.data.num_workers} loader workers")
            print(f"  {seconds:.2f} s, {len(data) / seconds:.2f} images/s, {cpu / len(shard(data.ids)):.4f} CPU s per image "
                  f"(this process), peak {peak_memory(device)}")
        write_json(args.json, {"images": len(data), "seconds": seconds, "images_s": len(data) / seconds,
                               "cpu_s_per_image": cpu / len(shard(data.ids)), "peak_gib": peak_gib(device)})


if __name__ == "__main__":
    main()
