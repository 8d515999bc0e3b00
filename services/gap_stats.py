"""The statistics of the myopia gap.

Two intervals, for two sources of variance, each labelled where it is shown:
- over seeds (training variance): per size, the mean over seeds of the paired differences (myopic − vanilla) with
  a 95% t-interval; one pair has no such interval (None, never a zero-width one);
- over held-out sequences (evaluation variance): the arms of a pair are scored on the same held-out sequences, so
  the per-sequence differences (averaged over the size's seeds) give a paired interval even for a single pair.
  Neighbouring sequences come from the same documents and are correlated, so the interval is over the means of
  blocks of EVAL_BLOCK consecutive sequences (batch means), not over sequences as if independent. It says how well
  the evaluation set pins this model's gap down, not how a retrained model would land.
With a bigram arm (each position sees only itself): the share of the context benefit that myopia loses,
(myopic − vanilla) / (bigram − vanilla), with the same two intervals (over sequences by the delta method).
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
EVAL_BLOCK = 16  # held-out sequences per block: 16 windows of 128 tokens span several documents of these corpora


Interval = tuple[float, float]


class SizeGap(BaseModel):
    size: str
    n_params_nonembedding: int
    n_pairs: int
    gaps: list[float]  # one per pair (seed)
    gap_mean: float
    gap_se: float | None  # over seeds; None with a single pair
    gap_ci95: Interval | None  # over seeds; None with a single pair: no interval from one difference
    gap_eval_ci95: Interval | None = None  # over held-out sequences (None where runs recorded no per-sequence loss)
    vanilla_loss_mean: float
    myopic_loss_mean: float
    bigram_loss_mean: float | None = None
    share_lost: float | None = None  # gap_mean / (bigram − vanilla)
    share_lost_ci95: Interval | None = None  # over seeds
    share_lost_eval_ci95: Interval | None = None  # over held-out sequences


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


def mean_interval(values: Sequence[float]) -> tuple[float, float | None, Interval | None]:
    """Mean, standard error and 95% t-interval of independent values (no SE or interval from a single value)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    se = float(x.std(ddof=1) / math.sqrt(len(x)))
    half = float(stats.t.ppf(0.975, len(x) - 1)) * se
    return mean, se, (mean - half, mean + half)


def blocked_interval(values: Sequence[float], block: int = EVAL_BLOCK) -> Interval | None:
    """95% interval of the mean of a correlated series in its order (per-sequence differences along the held-out
    stream) by batch means: a t-interval over the means of consecutive blocks, centred on the overall mean; None
    with fewer than two blocks."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2 * block:
        return None
    blocks = block_means(x, block)
    _, se, _ = mean_interval(blocks)
    half = float(stats.t.ppf(0.975, len(blocks) - 1)) * se
    return (float(x.mean()) - half, float(x.mean()) + half)


def block_means(values: Sequence[float], block: int = EVAL_BLOCK) -> np.ndarray:
    """Means of consecutive blocks of about `block` values (at least one block)."""
    x = np.asarray(values, dtype=float)
    return np.array([b.mean() for b in np.array_split(x, max(1, len(x) // block))])


def ratio_interval(num: Sequence[float], den: Sequence[float]) -> Interval | None:
    """95% interval of mean(num) / mean(den) over paired observations, by the delta method (a t quantile on the
    linearised ratio); None when the denominator's mean is zero or there are fewer than two pairs."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if len(a) < 2 or b.mean() == 0:
        return None
    r = a.mean() / b.mean()
    se = float((a - r * b).std(ddof=1) / math.sqrt(len(a)) / abs(b.mean()))
    half = float(stats.t.ppf(0.975, len(a) - 1)) * se
    return (r - half, r + half)


def size_gap(
    size: str,
    n_params: int,
    vanilla: Sequence[float],
    myopic: Sequence[float],
    *,
    bigram: Sequence[float] | None = None,
    per_sequence: dict[str, list[list[float]]] | None = None,
) -> SizeGap:
    """One size's gap over its seeds (paired: the interval is on the mean of per-seed differences). `bigram`: the
    bigram arm's loss per seed. `per_sequence`: arm → one list of held-out per-sequence losses per seed."""
    if len(vanilla) != len(myopic) or not vanilla or (bigram is not None and len(bigram) != len(vanilla)):
        raise ValueError("a size needs the same, non-zero number of losses in every arm (one per seed)")
    diffs = [m - v for v, m in zip(vanilla, myopic, strict=True)]
    mean, se, ci = mean_interval(diffs)
    row = SizeGap(
        size=size,
        n_params_nonembedding=n_params,
        n_pairs=len(diffs),
        gaps=diffs,
        gap_mean=mean,
        gap_se=se,
        gap_ci95=ci,
        vanilla_loss_mean=float(np.mean(vanilla)),
        myopic_loss_mean=float(np.mean(myopic)),
    )
    seq = {arm: np.mean(lists, axis=0) for arm, lists in (per_sequence or {}).items() if lists}  # mean over seeds
    if {"vanilla", "myopic"} <= seq.keys():
        row.gap_eval_ci95 = blocked_interval(seq["myopic"] - seq["vanilla"])
    if bigram is not None:
        row.bigram_loss_mean = float(np.mean(bigram))
        benefit = row.bigram_loss_mean - row.vanilla_loss_mean
        if benefit <= 0:  # the past does not help (yet): no share of it to lose
            return row
        row.share_lost = mean / benefit
        row.share_lost_ci95 = ratio_interval(diffs, [b - v for v, b in zip(vanilla, bigram, strict=True)])
        if {"vanilla", "myopic", "bigram"} <= seq.keys():
            row.share_lost_eval_ci95 = ratio_interval(
                block_means(seq["myopic"] - seq["vanilla"]), block_means(seq["bigram"] - seq["vanilla"])
            )
    return row


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
