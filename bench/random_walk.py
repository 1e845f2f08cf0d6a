"""Time the stencil random walk against the reference's dense repeated squaring.

    .venv/bin/python bench/random_walk.py [--sizes 32x24 64x48 125x94] [--skip-dense-above N] [--repeat N]
    .venv/bin/python bench/random_walk.py --sizes 125x94 --skip-dense-above 0 --device cuda --repeat 10
    .venv/bin/python bench/random_walk.py --sizes 64x48 125x94 --skip-dense-above 0 --walk chebyshev

Sizes are W x H of the stride-4 grid (125x94 is a 500x375 VOC image). Both run in float32 (the
dense one as the reference does, on the CPU). The stencil's times are medians over --repeat
runs, on --device (CUDA times are synchronised). --walk picks the stencil's evaluation
(pseudo_mask.walk); "f64 dev" is its largest deviation from the float64 power walk, relative to
that map's maximum.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from conta.ops.path_index import PathIndex, path_affinity, radius_floor
from conta.ops.random_walk import propagate


def propagate_dense(cams: torch.Tensor, boundary: torch.Tensor, radius: int, beta: float, exp_times: int) -> torch.Tensor:
    """The reference formulation: dense (hw)^2 transition matrix squared exp_times times."""
    k, h, w = cams.shape
    n = h * w
    rf = radius_floor(radius)
    index = PathIndex(radius, (h + rf, w + 2 * rf))
    aff = path_affinity(F.pad(boundary[None], (rf, rf, 0, rf), value=1.0), index)[0]
    src = torch.arange(n).expand_as(aff)
    dy, dx = index.offsets[:, :1], index.offsets[:, 1:]
    ty, tx = src // w + dy, src % w + dx
    inside = (ty < h) & (tx >= 0) & (tx < w)
    dense = torch.eye(n)
    dense[src[inside], (ty * w + tx)[inside]] = aff[inside]
    dense[(ty * w + tx)[inside], src[inside]] = aff[inside]
    trans = dense**beta
    trans /= trans.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        trans = trans @ trans
    return ((cams * (1 - boundary)).reshape(k, n) @ trans).reshape(k, h, w)


def _timed(fn, *args, device: torch.device = torch.device("cpu"), repeat: int = 1) -> tuple[float, float, torch.Tensor]:
    """Median wall and process-CPU seconds: CPU time stays meaningful when other jobs share the cores."""
    walls, cpus = [], []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["32x24", "64x48", "125x94"], help="W x H grids")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--beta", type=float, default=10.0)
    parser.add_argument("--exp-times", type=int, default=8)
    parser.add_argument("--skip-dense-above", type=int, default=None, metavar="N", help="no dense run above N pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the stencil walk runs")
    parser.add_argument("--repeat", type=int, default=1, help="stencil runs per size (the median is shown)")
    parser.add_argument("--walk", choices=["power", "chebyshev"], default="chebyshev", help="pseudo_mask.walk")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    figures: dict[str, dict[str, float]] = {}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, K={args.classes}, "
          f"r={args.radius}, beta={args.beta}, steps={2 ** args.exp_times}, walk={args.walk}")
    print(f"{'grid':>8} {'pixels':>7} {'stencil wall/cpu s':>19} {'f64 dev':>8} {'dense wall/cpu s':>17} "
          f"{'speed-up wall/cpu':>18} {'argmax agree':>13} {'max |diff|':>10}")
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        gen = torch.Generator().manual_seed(args.seed)
        cams = torch.rand(args.classes, h, w, generator=gen)
        boundary = torch.rand(h, w, generator=gen) ** 4           # mostly low, a few strong edges
        wall, cpu, ours = _timed(propagate, cams.to(device), boundary.to(device), args.radius, args.beta,
                                 args.exp_times, None, args.walk, device=device, repeat=args.repeat)
        ours = ours.cpu()
        exact = propagate(cams.double(), boundary.double(), args.radius, args.beta, args.exp_times)
        deviation = ((ours.double() - exact).abs().max() / exact.abs().max()).item()
        figures[size] = {"wall_s": wall, "cpu_s": cpu, "f64_deviation": deviation}
        row = f"{size:>8} {h * w:>7} {wall:>9.3f} / {cpu:<7.3f} {deviation:>8.1e}"
        if args.skip_dense_above is not None and h * w > args.skip_dense_above:
            print(f"{row} {'skipped':>17}")
            continue
        dense_wall, dense_cpu, ref = _timed(propagate_dense, cams, boundary, args.radius, args.beta, args.exp_times)
        agree = (ours.argmax(0) == ref.argmax(0)).float().mean().item()
        diff = (ours - ref).abs().max().item()
        speed = f"{dense_wall / wall:.0f}x / {dense_cpu / cpu:.0f}x"
        print(f"{row} {dense_wall:>7.2f} / {dense_cpu:<7.2f} {speed:>18} {agree:>13.2%} {diff:>10.1e}")
    if args.json is not None:  # "seconds": the last grid's median wall time per walk
        args.json.write_text(json.dumps({"device": str(device), "sizes": figures,
                                         "seconds": figures[args.sizes[-1]]["wall_s"]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
