"""The statistics of the myopia gap: per size, the mean over seeds with a paired 95% t-interval; across sizes, a
least-squares fit of the gap against log10(non-embedding parameters) with a 95% interval on the slope."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel
from scipy import stats


class SizeGap(BaseModel):
    size: str
    n_params_nonembedding: int
    n_pairs: int
    gap_mean: float
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


def size_gap(size: str, n_params: int, vanilla: Sequence[float], myopic: Sequence[float]) -> SizeGap:
    """Paired over seeds: the interval is on the mean of the per-seed differences (myopic − vanilla)."""
    if len(vanilla) != len(myopic) or not vanilla:
        raise ValueError("a size needs the same, non-zero number of vanilla and myopic losses (one per seed)")
    diffs = [m - v for v, m in zip(vanilla, myopic, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    ci = None
    if n > 1:
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        ci = (mean - half, mean + half)
    return SizeGap(size=size, n_params_nonembedding=n_params, n_pairs=n, gap_mean=mean, gap_ci95=ci,
                   vanilla_loss_mean=sum(vanilla) / n, myopic_loss_mean=sum(myopic) / n)  # fmt: skip


def fit_gap(points: Sequence[SizeGap]) -> GapFit | None:
    """Ordinary least squares with one point per size (its mean gap over seeds). None with fewer than three sizes:
    a slope through two points has no interval."""
    if len(points) < 3:
        return None
    x = [math.log10(p.n_params_nonembedding) for p in points]
    y = [p.gap_mean for p in points]
    n = len(x)
    res = stats.linregress(x, y)
    half = stats.t.ppf(0.975, n - 2) * res.stderr
    return GapFit(slope=res.slope, slope_ci95=(res.slope - half, res.slope + half), intercept=res.intercept,
                  r_squared=res.rvalue**2, n_points=n)  # fmt: skip
