"""Time stage 5's DeepLab training iteration (`conta.stages.seg.SegStep` run by the trainer's `run_step`)
on synthetic crops: images/s and peak memory.

    PYTHONPATH=. .venv/bin/python bench/seg_train_step.py [--config configs/demo.yaml] [--steps 10] [KEY=VALUE ...]
    torchrun --nproc_per_node=8 bench/seg_train_step.py --config configs/voc12.yaml --images 320 \\
        run.device=cuda run.amp=bf16 run.channels_last=true data.synth.image_size=400

One iteration is seg.batch_size x seg.iter_size crops (the effective batch, split over the
processes under torchrun): forward passes at every MSC scale, the summed loss, backward, SGD.
The crops are made once (augmented from the synthetic images and their ground truth) and kept
in memory, so data loading is not timed; the network is randomly initialised with BN statistics
calibrated on the first crops, as `conta seg train` does from scratch.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from _common import add_config_args, bench_run, describe, peak_gib, peak_memory, reset_peak_memory, write_json
from conta.data.build import build_dataset, ensure_dataset
from conta.engine.distributed import RankSlices, is_main
from conta.engine.precision import Precision
from conta.engine.trainer import Trainer
from conta.models.cam_net import calibrate_bn_statistics
from conta.seg_predictor import build_seg_model, model_meta, trains_bn
from conta.stages.seg import SegStep, SegTrainStream, build_optimizer, micro_batches, synchronise_bn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, "configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (allocator, cuDNN autotuning)")
    args = parser.parse_intermixed_args()
    with bench_run(args) as (cfg, device):
        seg = cfg.seg
        ensure_dataset(cfg.data, log=lambda _: None)
        dataset = build_dataset(cfg.data, cfg.data.train_split)
        stream = SegTrainStream(dataset, dataset.ids, dataset.mask_dir, seg, cfg.run.seed)
        per_iteration = seg.batch_size * seg.iter_size
        iterations = args.warmup + args.steps
        sampler = RankSlices(range(iterations * per_iteration), per_iteration, range(iterations),
                             "seg.batch_size x seg.iter_size")
        micro, accumulate = micro_batches(sampler.local, seg.batch_size)
        crops = list(DataLoader(stream, batch_size=micro, sampler=sampler))

        precision = Precision.from_run(cfg.run, device)
        meta = model_meta(seg, ["background", *dataset.class_names])
        model = build_seg_model(meta)
        if not trains_bn(meta):  # v2's frozen BN, as the demo trains it; v3/v3+ train theirs
            calibrate_bn_statistics(model.base, torch.cat([images for images, _ in crops[:accumulate]]))
        synchronise_bn(model, meta, seg, micro, device)
        model.to(device).train()
        optimizer, schedule = build_optimizer(model, seg)
        trainer = Trainer(model, optimizer, SegStep(upsample=trains_bn(meta)), iterations, device, hooks=[],
                          precision=precision, accumulate=accumulate)
        batches = iter(crops)

        def run(its: range) -> None:
            for it in its:
                schedule.apply(it)
                trainer.run_step(batches)

        run(range(args.warmup))
        reset_peak_memory(device)
        started, started_cpu = time.perf_counter(), time.process_time()
        run(range(args.warmup, iterations))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        if is_main():
            print(describe(cfg, device))
            print(f"seg train step: {seg.arch} width {seg.width}, crop {seg.crop_size}, MSC scales {seg.msc_scales}, "
                  f"{seg.batch_size} x {seg.iter_size} crops per iteration ({micro} x {accumulate} per process)")
            print(f"  {args.steps} iterations in {seconds:.2f} s: {seconds / args.steps:.3f} s/iteration "
                  f"({cpu / args.steps:.4f} CPU s), "
                  f"{args.steps * per_iteration / seconds:.2f} images/s, peak {peak_memory(device)}")
        write_json(args.json, {"iterations_s": args.steps / seconds, "images_s": args.steps * per_iteration / seconds,
                               "cpu_s_per_iteration": cpu / args.steps, "peak_gib": peak_gib(device)})


if __name__ == "__main__":
    main()
