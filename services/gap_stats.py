"""The statistics of the myopia gap.

- Per size: the mean over seeds of the paired differences (myopic − vanilla) with a 95% t-interval; one pair has
  no interval (None, never a zero-width one).
- Across sizes: a least-squares line of the gap against log10(non-embedding parameters), weighted by each size's
  standard error where every size has one (else unweighted, and said so), with a 95% t-interval on the slope.
- Between a scheduled sweep and the one before it: a two-sample Welch test per size, or why it cannot test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel
from scipy import optimize, stats

DRIFT_ALPHA = 0.05


class SizeGap(BaseModel):
    size: str
    n_params_nonembedding: int
    n_pairs: int
    gaps: list[float]  # one per pair (seed)
    gap_mean: float
    gap_se: float | None  # None with a single pair
    gap_ci95: tuple[float, float] | None  # None with a single pair: no interval from one difference
    vanilla_loss_mean: float
    myopic_loss_mean: float


class GapFit(BaseModel):
    """gap ≈ intercept + slope · log10(non-embedding parameters)."""

    slope: float
    slope_ci95: tuple[float, float]
    intercept: float
    r_squared: float
    n_points: int
    sizes: list[str]
    weighted: bool  # by 1 / standard error² of each size's mean gap


class Drift(BaseModel):
    test: str  # "welch", or why there is no test
    p_value: float | None
    drift: bool | None  # the gap moved (p < 0.05); None when it cannot be tested


def size_gap(size: str, n_params: int, vanilla: Sequence[float], myopic: Sequence[float]) -> SizeGap:
    """Paired over seeds: the interval is on the mean of the per-seed differences (myopic − vanilla)."""
    if len(vanilla) != len(myopic) or not vanilla:
        raise ValueError("a size needs the same, non-zero number of vanilla and myopic losses (one per seed)")
    diffs = [m - v for v, m in zip(vanilla, myopic, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = ci = None
    if n > 1:
        se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) / math.sqrt(n)
        half = stats.t.ppf(0.975, n - 1) * se
        ci = (mean - half, mean + half)
    return SizeGap(
        size=size,
        n_params_nonembedding=n_params,
        n_pairs=n,
        gaps=diffs,
        gap_mean=mean,
        gap_se=se,
        gap_ci95=ci,
        vanilla_loss_mean=sum(vanilla) / n,
        myopic_loss_mean=sum(myopic) / n,
    )


def fit_gap(points: Sequence[SizeGap], min_params: int = 0) -> GapFit | None:
    """The line through the sizes with at least `min_params` non-embedding parameters; None with fewer than three
    (a slope through two points has no interval)."""
    points = [p for p in points if p.n_params_nonembedding >= min_params]
    if len(points) < 3:
        return None
    x = np.log10([p.n_params_nonembedding for p in points])
    y = np.array([p.gap_mean for p in points])
    weighted = all(p.gap_se for p in points)
    sigma = np.array([p.gap_se for p in points]) if weighted else None
    # absolute_sigma=False: the standard errors weight the points; the scatter about the line sets the scale
    (slope, intercept), cov = optimize.curve_fit(lambda t, a, b: a * t + b, x, y, sigma=sigma, absolute_sigma=False)
    w = 1 / sigma**2 if weighted else np.ones_like(y)
    resid = y - (slope * x + intercept)
    total = w @ (y - np.average(y, weights=w)) ** 2
    half = stats.t.ppf(0.975, len(x) - 2) * math.sqrt(cov[0, 0])
    return GapFit(
        slope=slope,
        slope_ci95=(slope - half, slope + half),
        intercept=intercept,
        r_squared=1 - (w @ resid**2) / total if total > 0 else 0.0,
        n_points=len(x),
        sizes=[p.size for p in points],
        weighted=weighted,
    )


def drift(previous: Sequence[float], current: Sequence[float]) -> Drift:
    """Did the gap move between two sweeps? Welch's two-sample t-test on the per-pair gaps."""
    if len(previous) < 2 or len(current) < 2:
        return Drift(
            test=f"cannot test: n < 2 (previous {len(previous)}, now {len(current)})", p_value=None, drift=None
        )
    p = float(stats.ttest_ind(current, previous, equal_var=False).pvalue)
    if math.isnan(p):  # identical constant samples
        return Drift(test="cannot test: no spread in either sweep", p_value=None, drift=None)
    return Drift(test="welch", p_value=p, drift=p < DRIFT_ALPHA)
