"""Random walk of class scores over boundary-aware affinities (IRNet's semantic propagation).

The reference builds the dense (hw)^2 transition matrix T and squares it `exp_times` times; here
the same x·T^(2^exp_times) is applied as 2^exp_times steps of a 69-point stencil (radius 5),
so memory is O(hw) and the work O(69·hw·K) per step.

A step of T is x <- D^-1 A x, with A the symmetric affinities (to the power beta) and D their
row sums. The walk runs on z = D^(1/2) x instead, where the step is z <- S z with the symmetric
S = D^(-1/2) A D^(-1/2): the weight of a pair is the same map seen from either end, so the 34
half-plane maps serve all 68 off-centre taps, halving the weight memory each step streams
through (~15 % faster on CPU); x = D^(-1/2) z at the end.

Precision: float32 (float64 for float64 CAMs). The weights are computed in float64 and rounded
once; the per-step rounding of the 69-term sums then accumulates over 256 steps to ~2e-4 of the
map's maximum (docs/benchmarks.md), which moves pseudo-mask labels only at near-ties.

Step schedule: on the CPU one fused multiply-add per tap on cache-resident maps (batching the
taps would materialise 69 shifted copies per step, measured slower there); elsewhere, where every
op is a kernel launch, a step is one multiply over a strided view of the (2r - 1)^2 window and
one sum, instead of 69 launches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from conta.ops.path_index import PathIndex, path_affinity, radius_floor

Taps = list[tuple[int, int]]


def _shift(maps: Tensor, dy: int, dx: int) -> Tensor:
    """out[..., y, x] = maps[..., y - dy, x - dx], zero where that falls outside the grid."""
    h, w = maps.shape[-2:]
    out = torch.zeros_like(maps)
    out[..., max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = (
        maps[..., max(-dy, 0): h - max(dy, 0), max(-dx, 0): w - max(dx, 0)]
    )
    return out


def transition_stencil(boundary: Tensor, radius: int, beta: float,
                       dtype: torch.dtype = torch.float64) -> tuple[Taps, list[Tensor], Tensor]:
    """Taps (dy, dx), their (h, w) weight maps in S = D^(-1/2) A^beta D^(-1/2), and D^(1/2) (h, w).

    Weights are computed in float64 and returned in `dtype`; the two taps of a pair are views of
    one zero-padded map. Padding the boundary with 1.0 (rf = radius - 1 rows below, rf columns
    either side) makes the source block of `PathIndex` exactly the real grid, and any pair whose
    far end lies in the padding gets affinity 1 - 1 = 0, i.e. no edge, which is what cropping the
    padded dense matrix does in the reference.
    """
    h, w = boundary.shape
    rf = radius_floor(radius)
    boundary = boundary.to(torch.float64).clamp(0.0, 1.0)
    index = PathIndex(radius, (h + rf, w + 2 * rf))
    forward = path_affinity(F.pad(boundary[None], (rf, rf, 0, rf), value=1.0), index)[0]
    forward = forward.reshape(-1, h, w).clamp(0.0, 1.0) ** beta             # A(p, p + o)
    offsets = index.offsets.tolist()
    degree = 1.0 + sum(a + _shift(a, dy, dx) for (dy, dx), a in zip(offsets, forward))  # + A(p - o, p)
    inv_sqrt = F.pad(degree.rsqrt(), (rf, rf, rf, rf))
    pairs = torch.stack([
        F.pad(a * inv_sqrt[rf: rf + h, rf: rf + w] * inv_sqrt[rf + dy: rf + dy + h, rf + dx: rf + dx + w], (rf, rf, rf, rf))
        for (dy, dx), a in zip(offsets, forward)]).to(dtype)               # S(p, p + o), zero-padded
    taps, weights = [(0, 0)], [(1.0 / degree).to(dtype)]
    for (dy, dx), pair in zip(offsets, pairs):
        taps += [(dy, dx), (-dy, -dx)]
        weights += [pair[rf: rf + h, rf: rf + w], pair[rf - dy: rf - dy + h, rf - dx: rf - dx + w]]  # S(p - o, p)
    return taps, weights, degree.sqrt().to(dtype)


def _buffers(z: Tensor, margin: int) -> tuple[list[Tensor], list[Tensor]]:
    """Two zero-bordered buffers read and written in turn, and their inner (K, h, w) views; the
    first holds `z`."""
    k, h, w = z.shape
    buffers = [z.new_zeros(k, h + 2 * margin, w + 2 * margin) for _ in range(2)]
    inner = [b[:, margin: margin + h, margin: margin + w] for b in buffers]
    inner[0].copy_(z)
    return buffers, inner


def _walk_taps(z: Tensor, taps: Taps, weights: list[Tensor], steps: int, margin: int) -> Tensor:
    """`steps` applications of the stencil, one multiply-add per tap (the shifted views are made
    once: per-op overhead is a quarter of a step at VOC size)."""
    buffers, inner = _buffers(z, margin)
    h, w = z.shape[-2:]
    views = [[b[:, margin + dy: margin + dy + h, margin + dx: margin + dx + w] for dy, dx in taps] for b in buffers]
    src = 0
    for _ in range(steps):
        out = inner[1 - src]
        torch.mul(weights[0], views[src][0], out=out)
        for weight, view in zip(weights[1:], views[src][1:]):
            out.addcmul_(weight, view)
        src = 1 - src
    return inner[src]


def _walk_batched(z: Tensor, taps: Taps, weights: list[Tensor], steps: int, margin: int) -> Tensor:
    """The same steps as `_walk_taps`, each one multiply and one sum over the whole window."""
    buffers, inner = _buffers(z, margin)
    k, h, w = z.shape
    side = 2 * margin + 1
    square = z.new_zeros(side, side, 1, h, w)                      # taps outside the radius stay 0
    for (dy, dx), weight in zip(taps, weights):
        square[margin + dy, margin + dx, 0] = weight
    windows = []
    for b in buffers:                                              # window[i, j, c, y, x] = b[c, y + i, x + j]
        sk, sy, sx = b.stride()
        windows.append(b.as_strided((side, side, k, h, w), (sy, sx, sk, sy, sx)))
    product = torch.empty_like(square.expand(side, side, k, h, w))
    src = 0
    for _ in range(steps):
        torch.mul(square, windows[src], out=product)
        torch.sum(product, dim=(0, 1), out=inner[1 - src])
        src = 1 - src
    return inner[src]


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
def propagate(cams: Tensor, boundary: Tensor, radius: int = 5, beta: float = 10.0, exp_times: int = 8,
              batched: bool | None = None) -> Tensor:
    """Propagate stride-4 CAMs (K, h, w) along affinities from a boundary map (h, w) in [0, 1].

    Equals IRNet's (cams * (1 - boundary)) · T^(2^exp_times) with T the column-normalised
    A^beta, A the symmetric path affinities (radius `radius`) with ones on the diagonal.
    Returns (K, h, w) on the CAMs' device, float32 (float64 for float64 CAMs; stored float16
    CAMs come back float32). `batched` picks the step schedule (default: taps on the CPU,
    batched elsewhere). On CPU it runs on one thread: parallelise over images instead.
    """
    if cams.dim() != 3 or boundary.dim() != 2 or cams.shape[1:] != boundary.shape:
        raise ValueError(f"need cams (K, h, w) and boundary (h, w); got {tuple(cams.shape)} and {tuple(boundary.shape)}")
    if radius < 2 or beta <= 0 or exp_times < 0:
        raise ValueError(f"need radius >= 2, beta > 0, exp_times >= 0; got {radius}, {beta}, {exp_times}")
    dtype = torch.promote_types(cams.dtype, torch.float32)
    if batched is None:
        batched = cams.device.type != "cpu"
    with _one_cpu_thread(cams.device):
        boundary = boundary.to(device=cams.device)
        taps, weights, sqrt_degree = transition_stencil(boundary, radius, beta, dtype)
        damped = cams.to(dtype) * (1.0 - boundary.to(dtype).clamp(0.0, 1.0))
        walk = _walk_batched if batched else _walk_taps
        z = walk(damped * sqrt_degree, taps, weights, 2**exp_times, radius_floor(radius))
        return (z / sqrt_degree).contiguous()
