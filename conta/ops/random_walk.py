"""Random walk of class scores over boundary-aware affinities (IRNet's semantic propagation).

The reference builds the dense (hw)^2 transition matrix T and squares it `exp_times` times; here
the same x·T^(2^exp_times) is applied as 2^exp_times steps of a 69-point stencil (radius 5),
so memory is O(hw) and the work O(69·hw·K) per step. The walk runs in float64: in float32 the
normalised weights miss a row sum of 1 by ~1e-6, which 256 steps compound to ~1e-4 relative
error, while the stencil is bound by per-op overhead, so float64 costs only ~1.4x on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from conta.ops.path_index import PathIndex, path_affinity, radius_floor


def _shift(maps: Tensor, dy: int, dx: int) -> Tensor:
    """out[..., y, x] = maps[..., y - dy, x - dx], zero where that falls outside the grid."""
    h, w = maps.shape[-2:]
    out = torch.zeros_like(maps)
    out[..., max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = (
        maps[..., max(-dy, 0): h - max(dy, 0), max(-dx, 0): w - max(dx, 0)]
    )
    return out


def transition_stencil(boundary: Tensor, radius: int, beta: float) -> tuple[list[tuple[int, int]], Tensor]:
    """Neighbour steps and per-pixel weights (n_steps, h, w) of the row-stochastic D^-1 A^beta.

    Padding the boundary with 1.0 (rf = radius - 1 rows below, rf columns either side) makes the
    source block of `PathIndex` exactly the real grid, and any pair whose far end lies in the
    padding gets affinity 1 - 1 = 0, i.e. no edge, which is what cropping the padded dense
    matrix does in the reference.
    """
    h, w = boundary.shape
    rf = radius_floor(radius)
    padded = F.pad(boundary.clamp(0.0, 1.0)[None], (rf, rf, 0, rf), value=1.0)
    index = PathIndex(radius, (h + rf, w + 2 * rf))
    forward = path_affinity(padded, index)[0].reshape(-1, h, w).clamp(0.0, 1.0) ** beta
    steps = [(0, 0)]
    weights = [torch.ones_like(boundary)]
    for (dy, dx), weight in zip(index.offsets.tolist(), forward):
        steps += [(dy, dx), (-dy, -dx)]
        weights += [weight, _shift(weight, dy, dx)]  # the pair (p - o, p) seen from its far end
    stacked = torch.stack(weights)
    return steps, stacked / stacked.sum(dim=0, keepdim=True)


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run CPU work single-threaded, restoring the caller's setting.

    Each stencil op touches ~1e4-1e5 values; an OpenMP fork/join per op costs more than it
    saves, and on a busy CPU (data loaders, other jobs) every barrier can wait a scheduler
    slice: 2 threads measured 10-20x slower than 1 on an oversubscribed 2-core machine.
    """
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def propagate(cams: Tensor, boundary: Tensor, radius: int = 5, beta: float = 10.0, exp_times: int = 8) -> Tensor:
    """Propagate stride-4 CAMs (K, h, w) along affinities from a boundary map (h, w) in [0, 1].

    Equals IRNet's (cams * (1 - boundary)) · T^(2^exp_times) with T the column-normalised
    A^beta, A the symmetric path affinities (radius `radius`) with ones on the diagonal.
    Returns (K, h, w) on the CAMs' device, float32 (float64 for float64 CAMs; stored float16
    CAMs come back float32). On CPU it runs on one thread: parallelise over images instead.
    """
    if cams.dim() != 3 or boundary.dim() != 2 or cams.shape[1:] != boundary.shape:
        raise ValueError(f"need cams (K, h, w) and boundary (h, w); got {tuple(cams.shape)} and {tuple(boundary.shape)}")
    if radius < 2 or beta <= 0 or exp_times < 0:
        raise ValueError(f"need radius >= 2, beta > 0, exp_times >= 0; got {radius}, {beta}, {exp_times}")
    with _one_cpu_thread(cams.device):
        boundary = boundary.to(device=cams.device, dtype=torch.float64)
        steps, weights = transition_stencil(boundary, radius, beta)
        k, h, w = cams.shape
        m = radius_floor(radius)
        # Two zero-bordered buffers, read and written in turn; the shifted views are made once
        # because per-op overhead, not arithmetic, dominates a step.
        buffers = [torch.zeros(k, h + 2 * m, w + 2 * m, dtype=torch.float64, device=cams.device) for _ in range(2)]
        inner = [b[:, m: m + h, m: m + w] for b in buffers]
        views = [[b[:, m + dy: m + dy + h, m + dx: m + dx + w] for dy, dx in steps] for b in buffers]
        inner[0].copy_(cams.to(torch.float64) * (1.0 - boundary.clamp(0.0, 1.0)))
        src = 0
        for _ in range(2**exp_times):
            out = inner[1 - src]
            torch.mul(weights[0], views[src][0], out=out)
            for weight, view in zip(weights[1:], views[src][1:]):
                out.addcmul_(weight, view)
            src = 1 - src
        dtype = torch.promote_types(cams.dtype, torch.float32)
        return inner[src].to(dtype).contiguous()
