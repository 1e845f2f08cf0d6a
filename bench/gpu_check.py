"""The prepared GPU check: every speed figure docs/benchmarks.md lacks, on one GPU in under 8 minutes.

    .venv/bin/python bench/gpu_check.py [--out bench_results] [--budget 450]
    .venv/bin/python bench/gpu_check.py --quick --device cpu      # the plumbing, in ~2 minutes on a CPU

Runs the stage benchmarks one after another, each in its own process (its own peak memory, and a
failure or timeout costs only its line), on synthetic data in VOC's setting (configs/voc12.yaml:
ResNet-50 CAM and IRN, DeepLab v2 ResNet-101 with MSC, random initialisation):

    CAM inference   images/s, 448 px, scales 1, 0.5, 1.5, 2 + flip: fp32 NCHW, then bf16 + channels_last
    CAM training    steps/s, batch 16 crops of 512, run.amp=auto
    IRN training    steps/s, batch 32 crops of 512, radius 10, displacement branch on, run.amp=auto
    random walk     seconds per image, the 125 x 94 grid of a 500 x 375 image, 3 classes
    pseudo-mask     seconds per 500 x 375 image: the IRN on the image and its flip, the walk
    DeepLab v2      iterations/s and peak memory, 5 x 2 crops of 321, MSC 0.5 + 0.75: fp32, then auto

Writes <out>/gpu_check.json (every figure, the command that made it, the machine) and
<out>/gpu_check.md (the table for docs/benchmarks.md). Measurements that would start after
`--budget` seconds are skipped and marked so. `--quick` shrinks every setting (demo networks,
a few images and steps) to check that the script runs end to end; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VOC = ["--config", str(REPO / "configs" / "voc12.yaml"), "cam.backbone.pretrained=null",
       "irn.backbone.pretrained=null", "seg.pretrained=null"]
FP32 = ["run.amp=fp32", "run.channels_last=false"]
BF16 = ["run.amp=bf16", "run.channels_last=true"]


@dataclass
class Check:
    """One benchmark process: what it measures, its arguments, and how to read its result."""

    name: str
    setting: str
    script: str
    args: list[str]
    figure: str                        # key of the result dict to report
    unit: str
    timeout: int                       # seconds
    result: dict = field(default_factory=dict)

    def command(self, device: str) -> list[str]:
        where = f"--device={device}" if self.script == "random_walk.py" else f"run.device={device}"  # no config there
        return [sys.executable, str(BENCH / self.script), *self.args, where]


def checks(quick: bool) -> list[Check]:
    """The full GPU plan, or its shrunken --quick twin (same scripts and switches, tiny sizes)."""
    if quick:
        demo = ["--config", str(REPO / "configs" / "demo.yaml")]
        small_voc = [*VOC, "cam.backbone.arch=resnet18", "cam.backbone.width=8", "irn.backbone.arch=resnet18",
                     "irn.backbone.width=8", "seg.arch=resnet18", "seg.width=8", "data.synth.image_size=96"]
        return [
            Check("CAM inference", "fp32 NCHW", "cam_infer.py", [*small_voc, "--images", "2", *FP32], "images_s", "images/s", 300),
            Check("CAM inference", "bf16 + channels_last", "cam_infer.py", [*small_voc, "--images", "2", *BF16], "images_s", "images/s", 300),
            Check("CAM training", "run.amp=auto", "train_step.py", ["cam", *demo, "--images", "8", "--steps", "2", "--warmup", "1"], "steps_s", "steps/s", 300),
            Check("IRN training", "run.amp=auto", "train_step.py", ["irn", *demo, "--images", "16", "--steps", "1", "--warmup", "1"], "steps_s", "steps/s", 300),
            Check("random walk", "32 x 24 grid, float32", "random_walk.py", ["--sizes", "32x24", "--skip-dense-above", "0"], "seconds", "s/image", 300),
            Check("pseudo-mask", "128 x 96 image", "pseudo_mask.py", [*small_voc, "--size", "128x96", "--images", "1"], "wall_s", "s/image", 300),
            Check("pseudo-mask", "128 x 96 image, IRN in bf16", "pseudo_mask.py", [*small_voc, "--size", "128x96", "--images", "1", "pseudo_mask.irn_amp=bf16"], "wall_s", "s/image", 300),
            Check("DeepLab v2 training", "fp32", "seg_train_step.py", [*small_voc, "seg.crop_size=65", "seg.batch_size=2", "--images", "8", "--steps", "1", "--warmup", "1", *FP32], "iterations_s", "it/s", 300),
            Check("DeepLab v2 training", "run.amp=auto", "seg_train_step.py", [*small_voc, "seg.crop_size=65", "seg.batch_size=2", "--images", "8", "--steps", "1", "--warmup", "1"], "iterations_s", "it/s", 300),
        ]
    cam_infer = [*VOC, "--images", "192", "data.synth.image_size=448"]
    seg = [*VOC, "--images", "96", "--steps", "20", "--warmup", "3", "data.synth.image_size=400"]
    return [
        Check("CAM inference", "fp32 NCHW", "cam_infer.py", [*cam_infer, *FP32], "images_s", "images/s", 150),
        Check("CAM inference", "bf16 + channels_last", "cam_infer.py", [*cam_infer, *BF16], "images_s", "images/s", 120),
        Check("CAM training", "run.amp=auto", "train_step.py", ["cam", *VOC, "--images", "128", "--steps", "20", "--warmup", "3", "data.synth.image_size=512"], "steps_s", "steps/s", 90),
        Check("IRN training", "run.amp=auto", "train_step.py", ["irn", *VOC, "--images", "160", "--steps", "10", "--warmup", "2", "data.synth.image_size=512"], "steps_s", "steps/s", 120),
        Check("random walk", "125 x 94 grid, float32", "random_walk.py", ["--sizes", "125x94", "--skip-dense-above", "0", "--repeat", "10"], "seconds", "s/image", 60),
        Check("pseudo-mask", "500 x 375 image", "pseudo_mask.py", [*VOC, "--images", "10"], "wall_s", "s/image", 60),
        Check("pseudo-mask", "500 x 375 image, `pseudo_mask.irn_amp=bf16`", "pseudo_mask.py", [*VOC, "--images", "10", "pseudo_mask.irn_amp=bf16"], "wall_s", "s/image", 60),
        Check("DeepLab v2 training", "fp32", "seg_train_step.py", [*seg, *FP32], "iterations_s", "it/s", 90),
        Check("DeepLab v2 training", "run.amp=auto", "seg_train_step.py", seg, "iterations_s", "it/s", 90),
    ]


def run_check(check: Check, device: str, scratch: Path) -> dict:
    """Run one benchmark with --json and return its result, or {"error": ...}."""
    out = scratch / f"{len(list(scratch.iterdir()))}.json"
    command = [*check.command(device), "--json", str(out)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=check.timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {check.timeout} s"}
    result = {"process_s": round(time.perf_counter() - started, 1)}
    if proc.returncode or not out.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return {**result, "error": f"exit {proc.returncode}: " + " / ".join(t.replace("|", "/") for t in tail)}
    return {**result, **json.loads(out.read_text())}


def machine(device: str) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
            "cpu_count": os.cpu_count()}
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def markdown(results: list[Check], info: dict, device: str) -> str:
    where = info.get("gpu", device)
    lines = [f"GPU check on {where} (torch {info['torch']}, CUDA {info.get('cuda', '-')}), one process:", "",
             "| stage | setting | figure | peak memory | command |", "|---|---|---|---|---|"]
    for c in results:
        r = c.result
        figure = f"{r[c.figure]:.3g} {c.unit}" if c.figure in r else r.get("error", r.get("skipped", "?"))
        args = " ".join(c.command(device)[1:]).replace(str(REPO) + "/", "")
        peak = f"{r['peak_gib']:.2f} GiB" if "peak_gib" in r else ""
        lines.append(f"| {c.name} | {c.setting} | {figure} | {peak} | `python {args}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench_results", help="folder for the JSON and markdown")
    parser.add_argument("--device", default="cuda", help="run.device for every benchmark (cpu only with --quick)")
    parser.add_argument("--budget", type=float, help="seconds after which no new measurement starts "
                                                     "(default 450; none with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: check that everything runs")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use --quick --device cpu to check the script itself")
    plan = checks(args.quick)
    budget = args.budget if args.budget is not None else (float("inf") if args.quick else 450.0)
    info = machine(args.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="conta-gpu-check-") as scratch:
        for check in plan:
            elapsed = time.perf_counter() - started
            if elapsed + min(check.timeout, 30) > budget:
                check.result = {"skipped": f"budget of {budget:.0f} s spent"}
            else:
                check.result = run_check(check, args.device, Path(scratch))
            shown = check.result.get(check.figure, check.result.get("error", check.result.get("skipped")))
            print(f"[{time.perf_counter() - started:5.0f} s] {check.name} ({check.setting}): {shown}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": info, "device": args.device, "quick": args.quick,
              "seconds": round(time.perf_counter() - started, 1),
              "results": [{"stage": c.name, "setting": c.setting, "unit": c.unit, "figure": c.result.get(c.figure),
                           "command": " ".join(c.command(args.device)[1:]), **c.result} for c in plan]}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(plan, info, args.device))
    print(f"gpu_check: {report['seconds']:.0f} s; wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
