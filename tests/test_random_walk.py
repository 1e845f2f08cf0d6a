"""The stencil random walk equals the reference's dense definition, step count included:
exactly in float64, within a stated tolerance in float32, with either step schedule; the
Chebyshev walk equals the float64 power walk within its truncation and float32 rounding."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from conta.ops.random_walk import CHEBYSHEV_TAIL, power_chebyshev_coefficients, propagate


def propagate_dense(cams: np.ndarray, boundary: np.ndarray, radius: int, beta: float, exp_times: int) -> np.ndarray:
    """The random walk by its definition, in float64: dense symmetric A (1 on the diagonal), A^beta, column-normalised T,
    squared exp_times times, applied to the boundary-damped CAMs. Pairs are every two pixels
    closer than `radius`; a pair's path is every lattice point of its bounding box within
    distance 1 of the line through both."""
    k, h, w = cams.shape
    n = h * w
    aff = np.eye(n)
    for (y0, x0), (y1, x1) in itertools.combinations(itertools.product(range(h), range(w)), 2):
        dy, dx = y1 - y0, x1 - x0
        if dy * dy + dx * dx >= radius * radius:
            continue
        peak = max(
            boundary[y, x]
            for y in range(min(y0, y1), max(y0, y1) + 1)
            for x in range(min(x0, x1), max(x0, x1) + 1)
            if (dy * (x - x0) - dx * (y - y0)) ** 2 < dy * dy + dx * dx
        )
        aff[y0 * w + x0, y1 * w + x1] = aff[y1 * w + x1, y0 * w + x0] = 1.0 - peak
    trans = aff**beta
    trans /= trans.sum(axis=0, keepdims=True)
    for _ in range(exp_times):
        trans = trans @ trans
    return ((cams * (1.0 - boundary)).reshape(k, n) @ trans).reshape(k, h, w)


def _inputs(k: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(k, h, w, generator=gen), torch.rand(h, w, generator=gen) ** 3


def _assert_close_to_max(ours: torch.Tensor, ref: np.ndarray, tol: float) -> None:
    """|ours - ref| <= tol * max |ref| everywhere: the float32 walk's error scale. Pseudo-masks
    divide by the map's maximum, so that is the error that can move a label."""
    err = np.abs(ours.double().numpy() - ref).max() / np.abs(ref).max()
    assert err <= tol, f"max error {err:.2e} of the maximum > {tol:.0e}"


SCHEDULES = pytest.mark.parametrize("batched", [False, True], ids=["taps", "batched"])


@SCHEDULES
@pytest.mark.parametrize("exp_times", [0, 1, 2, 3])
@pytest.mark.parametrize("size", [(5, 6), (7, 9)])
def test_matches_dense_few_steps(size: tuple[int, int], exp_times: int, batched: bool) -> None:
    cams, boundary = _inputs(3, *size, seed=exp_times)
    ours = propagate(cams, boundary, radius=5, beta=10.0, exp_times=exp_times, batched=batched)
    ref = propagate_dense(cams.double().numpy(), boundary.double().numpy(), 5, 10.0, exp_times)
    _assert_close_to_max(ours, ref, 1e-5)                  # float32: measured <= 7e-7 here


@SCHEDULES
@pytest.mark.parametrize("walk", ["chebyshev", "power"])
@pytest.mark.parametrize("radius,beta", [(5, 10.0), (3, 2.5)])
def test_matches_dense_default_steps(radius: int, beta: float, walk: str, batched: bool) -> None:
    """256 float32 steps: rounding accumulates to ~4e-5 of the maximum here (2e-4 at 125 x 94)."""
    cams, boundary = _inputs(2, 12, 10, seed=7)
    ours = propagate(cams, boundary, radius=radius, beta=beta, batched=batched, walk=walk)
    assert ours.dtype == torch.float32
    ref = propagate_dense(cams.double().numpy(), boundary.double().numpy(), radius, beta, 8)
    _assert_close_to_max(ours, ref, 1e-4)


def test_half_precision_cams_come_back_float32() -> None:
    cams, boundary = _inputs(2, 6, 8, seed=2)
    out = propagate(cams.half(), boundary, exp_times=2)
    assert out.dtype == torch.float32
    assert torch.allclose(out, propagate(cams.half().float(), boundary, exp_times=2))


@SCHEDULES
def test_float64_in_float64_out_exact(batched: bool) -> None:
    cams, boundary = _inputs(2, 6, 8, seed=3)
    ours = propagate(cams.double(), boundary.double(), exp_times=4, batched=batched)
    assert ours.dtype == torch.float64 and ours.is_contiguous()
    ref = propagate_dense(cams.double().numpy(), boundary.double().numpy(), 5, 10.0, 4)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_shape_dtype_and_averaging_bounds() -> None:
    cams, boundary = _inputs(4, 20, 30, seed=1)
    out = propagate(cams, boundary, exp_times=5)
    assert out.shape == cams.shape and out.dtype == torch.float32 and out.is_contiguous()
    damped = cams * (1 - boundary)
    assert torch.all(out >= damped.amin(dim=(1, 2), keepdim=True) - 1e-6)   # each step averages
    assert torch.all(out <= damped.amax(dim=(1, 2), keepdim=True) + 1e-6)


def test_constant_scores_stay_constant_without_boundaries() -> None:
    out = propagate(torch.full((2, 9, 11), 0.5), torch.zeros(9, 11), exp_times=6)
    assert torch.allclose(out, torch.full_like(out, 0.5))


@pytest.mark.parametrize("walk", ["power", "chebyshev"])
def test_a_closed_wall_stops_the_walk(walk: str) -> None:
    cams = torch.zeros(1, 10, 16)
    cams[0, :, :4] = 1.0
    boundary = torch.zeros(10, 16)
    boundary[:, 7] = 1.0
    out = propagate(cams, boundary, walk=walk)
    assert torch.all(out[0, :, 7:] == 0) and torch.all(out[0, :, :7] > 0)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="cams"):
        propagate(torch.zeros(2, 5, 6), torch.zeros(6, 5))


@pytest.mark.parametrize("n", range(13))
def test_chebyshev_coefficients_are_the_exact_binomials(n: int) -> None:
    """x^n = 2^(1 - n) sum binom(n, (n - k) / 2) T_k, the k = 0 term halved; checked against exact
    fractions and against x^n itself at a few points."""
    coeffs = power_chebyshev_coefficients(n)
    exact = [Fraction(0)] * (n + 1)
    for j in range(n // 2 + 1):
        exact[n - 2 * j] = math.comb(n, j) * Fraction(2) ** (1 - n) / (2 if n - 2 * j == 0 else 1)
    assert len(coeffs) == n + 1
    np.testing.assert_allclose(coeffs, [float(c) for c in exact], rtol=1e-12, atol=0)
    x = np.linspace(-1.0, 1.0, 9)
    np.testing.assert_allclose(np.polynomial.chebyshev.chebval(x, coeffs), x**n, atol=1e-12)


def test_chebyshev_truncation_drops_at_most_the_tail() -> None:
    full = power_chebyshev_coefficients(256)
    kept = power_chebyshev_coefficients(256, CHEBYSHEV_TAIL)
    assert len(kept) == 79                                  # degree 78: 4.9 sd of Binomial(256, 1/2) folded
    assert kept == full[: len(kept)]
    assert sum(full[len(kept):]) <= CHEBYSHEV_TAIL < sum(full[len(kept) - 2:])   # and no lower even degree would do
    assert abs(math.fsum(full) - 1.0) < 1e-12               # x^n = 1 at x = 1, no underflow lost


@SCHEDULES
@pytest.mark.parametrize("exp_times", [0, 1, 2])
def test_chebyshev_few_steps_is_the_power_walk(exp_times: int, batched: bool) -> None:
    """Up to 4 steps nothing is truncated: the expansion is the power exactly (float64)."""
    cams, boundary = _inputs(3, 7, 9, seed=exp_times)
    power = propagate(cams.double(), boundary.double(), exp_times=exp_times, batched=batched, walk="power")
    ours = propagate(cams.double(), boundary.double(), exp_times=exp_times, batched=batched, walk="chebyshev")
    np.testing.assert_allclose(ours.numpy(), power.numpy(), rtol=1e-12, atol=1e-14)


@SCHEDULES
@pytest.mark.parametrize("size,beta,seed", [((24, 32), 10.0, 0), ((30, 41), 30.0, 1), ((13, 17), 2.5, 2)])
def test_chebyshev_matches_the_float64_power_walk(size: tuple[int, int], beta: float, seed: int, batched: bool) -> None:
    """256 steps on random boundaries: float64, only the truncation (measured ~1e-6 of the maximum);
    float32, its rounding dominates (measured <= 1.8e-4 up to 125 x 94, below the float32 power
    walk's 1.4-2.9e-4 on the same inputs)."""
    cams, boundary = _inputs(3, *size, seed=seed)
    boundary = boundary ** (4 / 3)                          # mostly low, a few strong edges
    ref = propagate(cams.double(), boundary.double(), beta=beta, batched=batched, walk="power").numpy()
    _assert_close_to_max(propagate(cams.double(), boundary.double(), beta=beta, batched=batched, walk="chebyshev"),
                         ref, 5 * CHEBYSHEV_TAIL)
    ours = propagate(cams, boundary, beta=beta, batched=batched, walk="chebyshev")
    assert ours.dtype == torch.float32
    _assert_close_to_max(ours, ref, 4e-4)


def test_unknown_walk_is_refused() -> None:
    with pytest.raises(ValueError, match="walk"):
        propagate(torch.zeros(2, 5, 6), torch.zeros(5, 6), walk="lanczos")
