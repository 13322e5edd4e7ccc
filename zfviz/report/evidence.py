"""The report's one rule for "shown / partly / not shown / opposite" (issue 27, "Verdicts with their evidence").

An effect is an estimate with a 95% interval over its units: a t interval over seeds, splits or repeated runs
where the data have them (``t_interval``, or ``welch`` from a table's means, standard deviations and split
counts), a seeded percentile bootstrap (2,000 resamples) where the unit is images, targets or units
(``bootstrap``, ``bootstrap_diff``). Each effect is signed so that the paper's direction is positive. Then:

- "shown" when the interval excludes zero in the paper's direction (its low end is above zero);
- "opposite" when it excludes zero the other way (its high end is below zero);
- "not shown" when it contains zero, or when there is one unit and no per-unit data ("n=1, no interval");
- a claim of several parts takes each part's verdict by this rule: all alike gives that verdict, some shown
  and some not gives "partly", none shown with some opposite and the rest not shown gives "not shown".

A claim that something barely matters is signed as (margin - largest change): shown when the interval of the
largest change stays below the margin. A claim that a threshold is reached (``threshold=True``: p(true) falls
below one half) is shown when the interval is past it, and otherwise not shown: falling short of a threshold
is not the opposite of the claim. "by eye", "n/a" and "missing" are not effects and stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0

# The rule in words, as the report prints it above its summary table.
RULE = (
    "Each verdict rests on effects, each signed so that the paper's direction is positive, with a 95% interval over "
    "its units: a t interval over seeds, splits or repeated runs, or a seeded percentile bootstrap (2,000 "
    'resamples) over images, targets or units. "shown": the interval is above zero; "opposite": below zero; '
    '"not shown": it contains zero, or there is one net or run and no per-unit data ("n=1, no interval"); '
    '"partly": a claim of several parts, some shown and some not. A cell reads verdict: estimate [interval], n.'
)


@dataclass(frozen=True)
class Evidence:
    """One effect: its estimate (signed, the paper's direction positive), its interval (None when n = 1 and
    no per-unit data exist), n and the unit counted ("seeds", "splits", "images", ...)."""

    name: str
    estimate: float
    low: float | None
    high: float | None
    n: int
    unit: str
    threshold: bool = False  # a threshold reached or not: never "opposite"

    @property
    def verdict(self) -> str:
        if self.low is None or self.high is None:
            return "not shown"
        if self.low > 0:
            return "shown"
        return "opposite" if self.high < 0 and not self.threshold else "not shown"

    def cell(self, digits: int = 2) -> str:
        """``+0.40 [-0.90, +1.60], n=3 seeds``; ``+0.40, n=1, no interval`` when there is none."""
        est = f"{self.estimate:+.{digits}f}"
        if self.low is None or self.high is None:
            return f"{est}, n={self.n}{f' {self.unit}' if self.n > 1 else ''}, no interval"
        return f"{est} [{self.low:+.{digits}f}, {self.high:+.{digits}f}], n={self.n} {self.unit}"


def single(name: str, estimate: float, unit: str = "run") -> Evidence:
    """One comparison with nothing to repeat it: an estimate without an interval (never "shown")."""
    return Evidence(name, float(estimate), None, None, 1, unit)


def t_interval(name: str, values: Sequence[float], unit: str, level: float = LEVEL) -> Evidence:
    """The mean of ``values`` (one per seed, split or repeat) with its Student t interval."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return single(name, float(x.mean()), unit)
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    mean = float(x.mean())
    return Evidence(name, mean, mean - half, mean + half, len(x), unit)


def welch(name: str, a: tuple[float, float, int], b: tuple[float, float, int], unit: str) -> Evidence:
    """Mean of ``a`` minus mean of ``b``, each given as (mean, std, n) over its splits, with Welch's t interval
    (splits taken as independent: the tables keep no per-split rows, so any pairing is lost; wider, not narrower)."""
    (ma, sa, na), (mb, sb, nb) = a, b
    diff = float(ma - mb)
    if min(na, nb) < 2:
        return single(name, diff, unit)
    va, vb = sa**2 / na, sb**2 / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return Evidence(name, diff, diff, diff, min(na, nb), unit)
    dof = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    half = stats.t.ppf(0.5 + LEVEL / 2, dof) * se
    return Evidence(name, diff, diff - half, diff + half, min(na, nb), unit)


def from_interval(name: str, estimate: float, low: float, high: float, n: int, unit: str, sign: int = 1) -> Evidence:
    """An interval a results file already holds (e.g. the evaluation's bootstrap over images), signed."""
    if sign < 0:
        estimate, low, high = -estimate, -high, -low
    return Evidence(name, float(estimate), float(low), float(high), int(n), unit)


def difference(name: str, a: tuple[float, float, float], b: tuple[float, float, float], n: int, unit: str) -> Evidence:
    """Mean of ``a`` minus mean of ``b``, each (mean, low, high) with a 95% interval a results file holds but no
    per-unit rows: each interval read as +/-1.96 standard errors, the two taken as independent (for paired
    images that errs wide, never narrow), a normal interval on the difference."""
    z = stats.norm.ppf(0.5 + LEVEL / 2)
    se = math.hypot((a[2] - a[1]) / (2 * z), (b[2] - b[1]) / (2 * z))
    diff = float(a[0] - b[0])
    return Evidence(name, diff, diff - z * se, diff + z * se, int(n), unit)


def _percentile(draws: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap(
    name: str, values: Sequence[float], unit: str, statistic: Callable[[np.ndarray], float] = np.mean, seed: int = SEED
) -> Evidence:
    """``statistic`` of per-unit ``values`` with a seeded percentile bootstrap over the units."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return single(name, float(statistic(x)), unit)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(RESAMPLES, len(x)))
    draws = np.array([statistic(x[i]) for i in idx])
    low, high = _percentile(draws, LEVEL)
    return Evidence(name, float(statistic(x)), low, high, len(x), unit)


def bootstrap_diff(
    name: str, a: Sequence[float], b: Sequence[float], unit: str, statistic: Callable[[np.ndarray], float] = np.mean
) -> Evidence:
    """``statistic(a) - statistic(b)`` for two independent samples of units, each resampled on its own."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(SEED)
    ia = rng.integers(0, len(xa), size=(RESAMPLES, len(xa)))
    ib = rng.integers(0, len(xb), size=(RESAMPLES, len(xb)))
    draws = np.array([statistic(xa[i]) - statistic(xb[j]) for i, j in zip(ia, ib, strict=True)])
    low, high = _percentile(draws, LEVEL)
    return Evidence(name, float(statistic(xa) - statistic(xb)), low, high, min(len(xa), len(xb)), unit)


def combine(verdicts: Sequence[str]) -> str:
    """The verdict of a claim of several parts, each part's verdict by the rule."""
    kinds = set(verdicts)
    if len(kinds) == 1:
        return next(iter(kinds))
    return "partly" if "shown" in kinds else "not shown"


def verdict_of(parts: Sequence[Evidence]) -> str:
    return combine([p.verdict for p in parts])


def cell(parts: Sequence[Evidence]) -> str:
    """The evidence of a verdict cell: each part's estimate, interval and n (its name when there are several)."""
    if len(parts) == 1:
        return parts[0].cell()
    return "; ".join(f"{p.name} {p.cell()}" for p in parts)
