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

`walk="chebyshev"` (pseudo_mask.walk) computes the same S^(2^exp_times) z as a Chebyshev
expansion truncated where the dropped coefficients sum below 1e-6: 78 stencil applications for
256 steps, 2x faster at 125x94 and closer to a float64 walk than the float32 steps (their
rounding, not the truncation, dominates). It is the default; `walk="power"` applies the steps
one by one, and the two disagree only at near-ties (docs/benchmarks.md).
"""

from __future__ import annotations

import math
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


class _Stencil:
    """S applied between zero-bordered (K, h + 2m, w + 2m) buffers: `apply(i, j)` writes S times
    buffer i's inner view into buffer j's, either schedule. `scale` multiplies every weight
    (2 for the Chebyshev recurrence: doubling is exact in binary floating point)."""

    def __init__(self, z: Tensor, taps: Taps, weights: list[Tensor], margin: int, count: int, batched: bool,
                 scale: float = 1.0) -> None:
        k, h, w = z.shape
        self.buffers = [z.new_zeros(k, h + 2 * margin, w + 2 * margin) for _ in range(count)]
        self.inner = [b[:, margin: margin + h, margin: margin + w] for b in self.buffers]
        self.inner[0].copy_(z)
        if scale != 1.0:
            weights = [weight * scale for weight in weights]
        self.batched = batched
        if not batched:   # the shifted views are made once: per-op overhead is a quarter of a step at VOC size
            self.weights = weights
            self.views = [[b[:, margin + dy: margin + dy + h, margin + dx: margin + dx + w] for dy, dx in taps]
                          for b in self.buffers]
            return
        side = 2 * margin + 1
        self.square = z.new_zeros(side, side, 1, h, w)              # taps outside the radius stay 0
        for (dy, dx), weight in zip(taps, weights):
            self.square[margin + dy, margin + dx, 0] = weight
        self.windows = []
        for b in self.buffers:                                      # window[i, j, c, y, x] = b[c, y + i, x + j]
            sk, sy, sx = b.stride()
            self.windows.append(b.as_strided((side, side, k, h, w), (sy, sx, sk, sy, sx)))
        self.product = torch.empty_like(self.square.expand(side, side, k, h, w))

    def apply(self, src: int, dst: int) -> Tensor:
        out = self.inner[dst]
        if self.batched:                                            # one multiply and one sum over the window
            torch.mul(self.square, self.windows[src], out=self.product)
            torch.sum(self.product, dim=(0, 1), out=out)
            return out
        torch.mul(self.weights[0], self.views[src][0], out=out)     # one multiply-add per tap
        for weight, view in zip(self.weights[1:], self.views[src][1:]):
            out.addcmul_(weight, view)
        return out


def _walk_power(z: Tensor, taps: Taps, weights: list[Tensor], steps: int, margin: int, batched: bool) -> Tensor:
    """S^steps z by `steps` applications of the stencil: the reference's arithmetic."""
    stencil = _Stencil(z, taps, weights, margin, 2, batched)
    src = 0
    for _ in range(steps):
        stencil.apply(src, 1 - src)
        src = 1 - src
    return stencil.inner[src]


CHEBYSHEV_TAIL = 1e-6   # coefficient mass the truncated expansion drops: a bound on its error per unit of |z|_2


def power_chebyshev_coefficients(n: int, tail: float = 0.0) -> list[float]:
    """c_0..c_d with x^n = sum c_k T_k(x) on [-1, 1], truncated at the smallest degree d whose
    dropped coefficients sum to at most `tail` (|T_k| <= 1 there, so that bounds the error).

    x^n = 2^(1 - n) sum over k = n, n - 2, ... of binom(n, (n - k) / 2) T_k, the k = 0 term
    halved: the coefficients are Binomial(n, 1/2) probabilities folded about n / 2, so their
    tail is 4.9 standard deviations (sqrt(n)) out for 1e-6. Computed in float64 from
    log-binomials, which neither overflow nor lose the small terms for large n.
    """
    if n < 0:
        raise ValueError(f"need n >= 0; got {n}")
    coeffs = [0.0] * (n + 1)
    for j in range(n // 2 + 1):
        k = n - 2 * j
        log_c = math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + (1 - n) * math.log(2.0)
        coeffs[k] = math.exp(log_c) / (2.0 if k == 0 else 1.0)
    dropped, degree = 0.0, n
    while degree > 0 and dropped + coeffs[degree] <= tail:
        dropped += coeffs[degree]
        degree -= 1
    return coeffs[: degree + 1]


def _walk_chebyshev(z: Tensor, taps: Taps, weights: list[Tensor], steps: int, margin: int, batched: bool) -> Tensor:
    """S^steps z as sum c_k T_k(S) z, truncated at `CHEBYSHEV_TAIL`: T_{k+1} z = 2 S T_k z - T_{k-1} z,
    one stencil application per degree, 78 instead of 256 for the default 2^8 steps. The
    spectrum of S, similar to the stochastic D^-1 A, lies in [-1, 1], where the recurrence is
    stable."""
    coeffs = power_chebyshev_coefficients(steps, CHEBYSHEV_TAIL)
    stencil = _Stencil(z, taps, weights, margin, 3, batched, scale=2.0)
    total = z * coeffs[0]
    if len(coeffs) == 1:
        return total
    prev, cur = 0, 1
    stencil.apply(prev, cur).mul_(0.5)                              # T_1 z = S z
    if coeffs[1]:
        total.add_(stencil.inner[cur], alpha=coeffs[1])
    for k in range(2, len(coeffs)):
        nxt = 3 - prev - cur
        stencil.apply(cur, nxt).sub_(stencil.inner[prev])
        if coeffs[k]:
            total.add_(stencil.inner[nxt], alpha=coeffs[k])
        prev, cur = cur, nxt
    return total


WALKS = {"power": _walk_power, "chebyshev": _walk_chebyshev}


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
              batched: bool | None = None, walk: str = "chebyshev") -> Tensor:
    """Propagate stride-4 CAMs (K, h, w) along affinities from a boundary map (h, w) in [0, 1].

    Equals IRNet's (cams * (1 - boundary)) · T^(2^exp_times) with T the column-normalised
    A^beta, A the symmetric path affinities (radius `radius`) with ones on the diagonal.
    Returns (K, h, w) on the CAMs' device, float32 (float64 for float64 CAMs; stored float16
    CAMs come back float32). `batched` picks the step schedule (default: taps on the CPU,
    batched elsewhere). `walk` is "chebyshev" (a truncated Chebyshev expansion of the power, 3.3x
    fewer stencil applications at 2^8 steps) or "power" (the steps one by one). On CPU it runs on one thread: parallelise over images instead.
    """
    if cams.dim() != 3 or boundary.dim() != 2 or cams.shape[1:] != boundary.shape:
        raise ValueError(f"need cams (K, h, w) and boundary (h, w); got {tuple(cams.shape)} and {tuple(boundary.shape)}")
    if radius < 2 or beta <= 0 or exp_times < 0:
        raise ValueError(f"need radius >= 2, beta > 0, exp_times >= 0; got {radius}, {beta}, {exp_times}")
    if walk not in WALKS:
        raise ValueError(f"walk must be one of {sorted(WALKS)}; got {walk!r}")
    dtype = torch.promote_types(cams.dtype, torch.float32)
    if batched is None:
        batched = cams.device.type != "cpu"
    with _one_cpu_thread(cams.device):
        boundary = boundary.to(device=cams.device)
        taps, weights, sqrt_degree = transition_stencil(boundary, radius, beta, dtype)
        damped = cams.to(dtype) * (1.0 - boundary.to(dtype).clamp(0.0, 1.0))
        z = WALKS[walk](damped * sqrt_degree, taps, weights, 2**exp_times, radius_floor(radius), batched)
        return (z / sqrt_degree).contiguous()
