"""The arithmetic of `conta study`: mean and sample sd over seeds, and paired-t intervals.

Pure functions on plain numbers (no files, no NumPy, no SciPy). The t quantile is computed, not
looked up: the two-sided tail of Student's t with ν degrees of freedom is P(|T| > t) =
I_x(ν/2, 1/2) with x = ν / (ν + t²), where I is the regularised incomplete beta function; it is
evaluated by its continued fraction and inverted by bisection, for any ν.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONFIDENCE = 0.95


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def sample_sd(values: Sequence[float]) -> float | None:
    """Standard deviation with ddof = 1 (None for fewer than two values)."""
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def regularised_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x = {x} is outside [0, 1]")
    if x in (0.0, 1.0):
        return x
    # the continued fraction converges fast below the mean of the distribution; use the
    # symmetry I_x(a, b) = 1 - I_{1-x}(b, a) above it
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularised_incomplete_beta(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a) - _log_beta(a, b)
    return math.exp(log_front) * _beta_continued_fraction(x, a, b)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _beta_continued_fraction(x: float, a: float, b: float, tol: float = 1e-15, max_terms: int = 500) -> float:
    """1 / (1 + d1 / (1 + d2 / (1 + ...))) by the modified Lentz method, where
    d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)) and d_{2m} = m(b-m) x / ((a+2m-1)(a+2m))."""
    tiny = 1e-300
    f, c, d = tiny, tiny, 0.0
    for n in range(max_terms):
        if n == 0:
            coeff = 1.0
        elif n % 2 == 0:
            m = n // 2
            coeff = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            m = n // 2
            coeff = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + coeff * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + coeff / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(c * d - 1.0) < tol:
            return f
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (x={x}, a={a}, b={b})")


def t_two_sided_tail(t: float, df: int) -> float:
    """P(|T| > t) for Student's t with `df` degrees of freedom."""
    return regularised_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The t with P(|T| <= t) = confidence (for 0.95, the 0.975 quantile): 12.706 for df = 1."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    alpha = 1.0 - confidence
    # P(|T| > t) = I_x(df/2, 1/2) rises with x = df / (df + t^2): bisect on x
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_two_sided_tail(math.sqrt(df * (1.0 - mid) / mid), df) < alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-17:
            break
    x = (lo + hi) / 2.0
    return math.sqrt(df * (1.0 - x) / x)


@dataclass(frozen=True)
class Spread:
    """Values over seeds of one run's metric in one round."""

    values: dict[int, float]
    mean: float
    sd: float | None


@dataclass(frozen=True)
class PairedDifference:
    """Per-seed differences a - b and their mean with a paired-t interval (None below two seeds)."""

    per_seed: dict[int, float]
    mean: float
    sd: float | None
    t: float | None
    low: float | None
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0.0 or self.high < 0.0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "per_seed": {str(s): v for s, v in self.per_seed.items()},
                "excludes_zero": self.excludes_zero}


def spread(values: dict[int, float]) -> Spread:
    ordered = [values[s] for s in sorted(values)]
    return Spread(dict(sorted(values.items())), mean(ordered), sample_sd(ordered))


def paired_difference(a: dict[int, float], b: dict[int, float], confidence: float = CONFIDENCE) -> PairedDifference | None:
    """a - b over the seeds both have; mean ± t_{n-1} · sd / √n. None when no seed is shared."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = {s: a[s] - b[s] for s in seeds}
    values = list(diffs.values())
    m, sd = mean(values), sample_sd(values)
    if sd is None:
        return PairedDifference(diffs, m, None, None, None, None)
    t = t_quantile(len(values) - 1, confidence)
    half = t * sd / math.sqrt(len(values))
    return PairedDifference(diffs, m, sd, t, m - half, m + half)


@dataclass(frozen=True)
class StudyEntry:
    """One metric in one round: each run's spread over seeds, and the reference run's paired
    differences against every other run."""

    metric: str
    round: int
    runs: dict[str, Spread]
    differences: dict[str, PairedDifference]

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "round": self.round,
            "runs": {mode: {"values": {str(s): v for s, v in sp.values.items()}, "mean": sp.mean, "sd": sp.sd}
                     for mode, sp in self.runs.items()},
            "differences": {name: d.to_json() for name, d in self.differences.items()},
        }


Table = dict[str, dict[tuple[str, int], dict[int, float]]]   # run -> (metric, round) -> seed -> value


def summarise(table: Table, reference: str, confidence: float = CONFIDENCE) -> list[StudyEntry]:
    """Every (metric, round) that any run has, metric by metric (in the order first seen), round
    by round; differences are `reference` minus each other run, over the seeds both have."""
    metrics: list[str] = []
    for cells in table.values():
        metrics += [m for m, _ in cells if m not in metrics]
    keys = sorted({k for cells in table.values() for k in cells}, key=lambda k: (metrics.index(k[0]), k[1]))
    entries = []
    for key in keys:
        runs = {mode: spread(cells[key]) for mode, cells in table.items() if cells.get(key)}
        differences = {}
        if reference in runs:
            for mode in runs:
                if mode != reference:
                    diff = paired_difference(table[reference][key], table[mode][key], confidence)
                    if diff is not None:
                        differences[f"{reference} - {mode}"] = diff
        entries.append(StudyEntry(key[0], key[1], runs, differences))
    return entries
