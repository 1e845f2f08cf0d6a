"""Time the stencil random walk against the reference's dense repeated squaring.

    .venv/bin/python bench/random_walk.py [--sizes 32x24 64x48 125x94] [--skip-dense-above N]

Sizes are W x H of the stride-4 grid (125x94 is a 500x375 VOC image). Both run on CPU in
float32 (the dense one as the reference does; the stencil accumulates in float64 internally).
"""

from __future__ import annotations

import argparse
import time

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


def _timed(fn, *args) -> tuple[float, float, torch.Tensor]:
    """Wall and process-CPU seconds: CPU time stays meaningful when other jobs share the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["32x24", "64x48", "125x94"], help="W x H grids")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--beta", type=float, default=10.0)
    parser.add_argument("--exp-times", type=int, default=8)
    parser.add_argument("--skip-dense-above", type=int, default=None, metavar="N", help="no dense run above N pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, K={args.classes}, "
          f"r={args.radius}, beta={args.beta}, steps={2 ** args.exp_times}")
    print(f"{'grid':>8} {'pixels':>7} {'stencil wall/cpu s':>19} {'dense wall/cpu s':>17} "
          f"{'speed-up wall/cpu':>18} {'argmax agree':>13} {'max |diff|':>10}")
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        gen = torch.Generator().manual_seed(args.seed)
        cams = torch.rand(args.classes, h, w, generator=gen)
        boundary = torch.rand(h, w, generator=gen) ** 4           # mostly low, a few strong edges
        wall, cpu, ours = _timed(propagate, cams, boundary, args.radius, args.beta, args.exp_times)
        row = f"{size:>8} {h * w:>7} {wall:>9.3f} / {cpu:<7.3f}"
        if args.skip_dense_above is not None and h * w > args.skip_dense_above:
            print(f"{row} {'skipped':>17}")
            continue
        dense_wall, dense_cpu, ref = _timed(propagate_dense, cams, boundary, args.radius, args.beta, args.exp_times)
        agree = (ours.argmax(0) == ref.argmax(0)).float().mean().item()
        diff = (ours - ref).abs().max().item()
        speed = f"{dense_wall / wall:.0f}x / {dense_cpu / cpu:.0f}x"
        print(f"{row} {dense_wall:>7.2f} / {dense_cpu:<7.2f} {speed:>18} {agree:>13.2%} {diff:>10.1e}")


if __name__ == "__main__":
    main()
