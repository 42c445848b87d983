"""The statistics a keep or a discard records beside its rule: Welch's t, a bootstrap interval.

Both compare per-seed scores of a candidate with those of the best at label time,
as *gains* (positive: the candidate is better in the objective's direction). They
are evidence, not the rule: :func:`arl.runners.labels.decide` says which rule
labelled the trial, and the record carries both so a reader can judge the call.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import NamedTuple

#: Resamples of the bootstrap interval; the generator is seeded, so a decision's
#: evidence is the same every time it is computed from the same scores.
BOOTSTRAP_ROUNDS = 2000
BOOTSTRAP_SEED = 0


class TestResult(NamedTuple):
    test: str
    statistic: float | None = None
    p_value: float | None = None
    interval: tuple[float, float] | None = None


def compare(candidate: Sequence[float], reference: Sequence[float], direction: str) -> TestResult:
    """Welch's t where both sides have two seeds or more, else a bootstrap interval of the
    mean gain over the side that has several, else nothing to test."""
    sign = -1.0 if direction == "min" else 1.0
    cand = [sign * x for x in candidate]
    ref = [sign * x for x in reference]
    try:
        if len(cand) >= 2 and len(ref) >= 2:
            t, p = welch(cand, ref)
            return TestResult("welch_t", _finite(t), _finite(p), _finite_pair(bootstrap_interval(cand, ref)))
        if len(cand) >= 2 or len(ref) >= 2:
            return TestResult("bootstrap", None, None, _finite_pair(bootstrap_interval(cand, ref)))
    except (ArithmeticError, ValueError):
        pass  # scores so large or small that their spreads overflow or vanish: nothing to test
    return TestResult("none")


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _finite_pair(pair: tuple[float, float]) -> tuple[float, float] | None:
    return pair if all(math.isfinite(x) for x in pair) else None


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float | None, float | None]:
    """Welch's t of mean(a) - mean(b) and its two-sided p-value (None where both spreads are 0)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:
        return None, None
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, student_t_two_sided(t, df)


def bootstrap_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of mean(a*) - mean(b*) over resamples of each side."""
    rng = random.Random(BOOTSTRAP_SEED)
    diffs = sorted(
        statistics.fmean(rng.choices(a, k=len(a))) - statistics.fmean(rng.choices(b, k=len(b)))
        for _ in range(BOOTSTRAP_ROUNDS)
    )
    lo = diffs[int((1 - level) / 2 * BOOTSTRAP_ROUNDS)]
    hi = diffs[min(BOOTSTRAP_ROUNDS - 1, int((1 + level) / 2 * BOOTSTRAP_ROUNDS))]
    return lo, hi


def student_t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: I_x(df/2, 1/2), x = df/(df+t²)."""
    return _betainc(df / 2, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function (continued fraction, Numerical Recipes' form)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return front * f / a


def spread(scores: Sequence[float]) -> float:
    """The run-to-run noise of one program: the sample standard deviation of its seeds."""
    return statistics.stdev(scores) if len(scores) >= 2 else 0.0
