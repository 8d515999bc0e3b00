"""The statistics of the myopia gap.

Two intervals, for two sources of variance, each labelled where it is shown:
- over seeds (training variance): per size, the mean over seeds of the paired differences (myopic − vanilla) with
  a 95% t-interval; one pair has no such interval (None, never a zero-width one);
- over held-out sequences (evaluation variance): the arms of a pair are scored on the same held-out sequences, so
  the per-sequence differences (averaged over the size's seeds) give a paired interval even for a single pair.
  Neighbouring sequences come from the same documents and are correlated, so the interval is over the means of
  blocks of consecutive sequences (batch means), not over sequences as if independent. The block length is chosen
  from the series: twice arch's Politis–White estimate of its optimal block length (a fixed 16 undercovers when the
  correlation is long; the stationary bootstrap itself undercovers at these lengths: bench/interval_coverage.py
  measures all three). It says how well the evaluation set pins this model's gap down, not how a retrained model
  would land.
With a bigram arm (each position sees only itself): the share of the context benefit that myopia loses,
(myopic − vanilla) / (bigram − vanilla), with the same two intervals by Fieller's method: none (and said so) where
the denominator, bigram − vanilla, is not significantly different from zero.
With a local arm (a fresh model trained on a frozen vanilla model's past): the local myopia bonus, vanilla − local,
with the same two intervals.
- Across sizes: a least-squares line of the gap against log10(non-embedding parameters), weighted by each size's
  standard error where every size has one (else unweighted, and said so), with a 95% t-interval on the slope.
- Between a scheduled sweep and the one before it: per size, a paired t-test on the gaps of the seeds both sweeps
  ran (a rerun reuses its seeds), Welch's two-sample test where they share fewer than two seeds, or why it cannot
  test; drift is judged on Holm-adjusted p-values across the sizes of the sweep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from arch.bootstrap import optimal_block_length
from pydantic import BaseModel
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests

DRIFT_ALPHA = 0.05
# Batch means over blocks this many times the Politis–White block length: a heuristic calibrated on AR(1) series,
# where it covers 92.9–94.8% of nominal 95% intervals for ρ from 0 to 0.95 (lengths 256–2048; docs/science.md),
# against 72–84% for fixed blocks of 16 at ρ ≥ 0.9. Politis–White sizes blocks for a bootstrap's variance, not for
# coverage: the factor is empirical.
BLOCK_SCALE = 2


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
    share_lost_ci95: Interval | None = None  # over seeds (Fieller)
    share_lost_eval_ci95: Interval | None = None  # over held-out sequences (Fieller on block means)
    share_lost_note: str | None = None  # why an interval is missing (bigram − vanilla not significant)
    local_loss_mean: float | None = None
    # the local myopia bonus, vanilla − local, mean over seeds (> 0: local is better); a lower bound on the tied
    # bonus: the local arm's fresh present is trained for the vanilla run's steps, not to its minimum
    bonus: float | None = None
    bonus_ci95: Interval | None = None  # over seeds
    bonus_eval_ci95: Interval | None = None  # over held-out sequences
    # D_p: each arm's held-out Huber/p as a fraction of the trivial myopic baseline's on the same sequences
    # (0 where z = 1, x_n where z = 0), over all positions and over positions past the window; mean over seeds
    fraction_of_baseline: dict[str, dict[str, float]] | None = None
    # multiplication: each arm's exact-match accuracy, (mean, standard error, 95% interval) over seeds, and its mean
    # over seeds by operand digit counts ('3×2')
    accuracy: dict[str, tuple[float, float | None, Interval | None]] | None = None
    accuracy_hardest: dict[str, tuple[float, float | None, Interval | None]] | None = None  # max × max digits
    accuracy_by_length: dict[str, dict[str, float | None]] | None = None


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
    test: str  # "paired t" (same seeds), "welch" (different seeds), or why there is no test
    p_value: float | None
    drift: bool | None  # the gap moved (Holm-adjusted p < 0.05 across the sweep's sizes); None: cannot be tested
    p_holm: float | None = None  # adjusted across the sizes tested


def mean_interval(values: Sequence[float]) -> tuple[float, float | None, Interval | None]:
    """Mean, standard error and 95% t-interval of independent values (no SE or interval from a single value)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    se = float(x.std(ddof=1) / math.sqrt(len(x)))
    half = float(stats.t.ppf(0.975, len(x) - 1)) * se
    return mean, se, (mean - half, mean + half)


def block_length(values: Sequence[float]) -> int:
    """Batch length for a correlated series: BLOCK_SCALE × arch's Politis–White estimate of its optimal
    (stationary-bootstrap) block length, at least 1."""
    x = np.asarray(values, dtype=float)
    if len(x) < 4 or not np.ptp(x) > 0:
        return 1
    estimate = float(optimal_block_length(x)["stationary"].iloc[0])
    return max(1, math.ceil(BLOCK_SCALE * estimate)) if math.isfinite(estimate) else 1


def blocked_interval(values: Sequence[float], block: int | None = None) -> Interval | None:
    """95% interval of the mean of a correlated series in its order (per-sequence differences along the held-out
    stream) by batch means: a t-interval over the means of consecutive blocks (`block` long, by default chosen from
    the series), centred on the overall mean; None with fewer than two blocks."""
    x = np.asarray(values, dtype=float)
    block = block or block_length(x)
    if len(x) < 2 * block:
        return None
    blocks = block_means(x, block)
    _, se, _ = mean_interval(blocks)
    half = float(stats.t.ppf(0.975, len(blocks) - 1)) * se
    return (float(x.mean()) - half, float(x.mean()) + half)


def block_means(values: Sequence[float], block: int) -> np.ndarray:
    """Means of consecutive blocks of about `block` values (at least one block)."""
    x = np.asarray(values, dtype=float)
    return np.array([b.mean() for b in np.array_split(x, max(1, len(x) // block))])


def fieller_interval(num: Sequence[float], den: Sequence[float]) -> tuple[Interval | None, str | None]:
    """95% interval of mean(num) / mean(den) over paired observations by Fieller's theorem (t quantile, n − 1
    degrees of freedom): (interval, None), or (None, why) with fewer than two pairs or when mean(den) is not
    significantly different from zero, where the confidence set is unbounded."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    n = len(a)
    if n < 2:
        return None, "one pair: no interval"
    ma, mb = a.mean(), b.mean()
    cov = np.cov(a, b, ddof=1) / n  # of the means
    saa, sbb, sab = cov[0, 0], cov[1, 1], cov[0, 1]
    t = float(stats.t.ppf(0.975, n - 1))
    g = t**2 * sbb / mb**2 if mb != 0 else math.inf
    if g >= 1:
        return None, "bigram − vanilla not significantly different from zero: the ratio's interval is unbounded"
    r = ma / mb
    disc = saa - 2 * r * sab + r**2 * sbb - g * (saa - sab**2 / sbb if sbb > 0 else 0.0)
    centre = r - g * sab / sbb if sbb > 0 else r
    half = t / abs(mb) * math.sqrt(max(disc, 0.0))
    return ((centre - half) / (1 - g), (centre + half) / (1 - g)), None


def size_gap(
    size: str,
    n_params: int,
    vanilla: Sequence[float],
    myopic: Sequence[float],
    *,
    bigram: Sequence[float] | None = None,
    local: Sequence[float] | None = None,
    per_sequence: dict[str, list[list[float]]] | None = None,
) -> SizeGap:
    """One size's gap over its seeds (paired: the interval is on the mean of per-seed differences). `bigram`, `local`:
    those arms' losses per seed. `per_sequence`: arm → one list of held-out per-sequence losses per seed."""
    if not vanilla or any(arm is not None and len(arm) != len(vanilla) for arm in (myopic, bigram, local)):
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
    if local is not None:
        row.local_loss_mean = float(np.mean(local))
        row.bonus, _, row.bonus_ci95 = mean_interval([v - lo for v, lo in zip(vanilla, local, strict=True)])
        if {"vanilla", "local"} <= seq.keys():
            row.bonus_eval_ci95 = blocked_interval(seq["vanilla"] - seq["local"])
    if bigram is not None:
        row.bigram_loss_mean = float(np.mean(bigram))
        benefit = row.bigram_loss_mean - row.vanilla_loss_mean
        if benefit <= 0:  # the past does not help (yet): no share of it to lose
            return row
        row.share_lost = mean / benefit
        notes = []
        if len(diffs) > 1:
            row.share_lost_ci95, why = fieller_interval(diffs, [b - v for v, b in zip(vanilla, bigram, strict=True)])
            notes += [f"over seeds: {why}"] if why else []
        if {"vanilla", "myopic", "bigram"} <= seq.keys():
            gap, gain = seq["myopic"] - seq["vanilla"], seq["bigram"] - seq["vanilla"]
            block = max(block_length(gap), block_length(gain))
            if len(gap) >= 2 * block:
                row.share_lost_eval_ci95, why = fieller_interval(block_means(gap, block), block_means(gain, block))
                notes += [f"over held-out sequences: {why}"] if why else []
        row.share_lost_note = "; ".join(notes) or None
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


def drift(previous: dict[int, float], current: dict[int, float]) -> Drift:
    """Did one size's gap move between two sweeps? Gaps by seed: a paired t-test on the seeds both ran (a rerun
    reuses its seeds), Welch's test where they share fewer than two. Unadjusted: `drift_across_sizes` adjusts."""
    shared = sorted(previous.keys() & current.keys())
    if len(shared) >= 2:
        before, now = [previous[k] for k in shared], [current[k] for k in shared]
        diffs = np.subtract(now, before)
        scale = max(np.abs(now).max(), np.abs(before).max(), 1e-300)
        if np.abs(diffs).max() <= 1e-12 * scale:  # a deterministic rerun reproduced every gap
            return Drift(test="paired t: every seed's gap unchanged", p_value=1.0, drift=False)
        if np.ptp(diffs) <= 1e-12 * scale:  # every seed moved by the same amount: no noise left to test against
            return Drift(test="paired: every seed's gap moved by the same amount", p_value=0.0, drift=True)
        test, p = "paired t", float(stats.ttest_rel(now, before).pvalue)
    elif len(previous) >= 2 and len(current) >= 2:
        test, p = (
            "welch",
            float(stats.ttest_ind(list(current.values()), list(previous.values()), equal_var=False).pvalue),
        )
    else:
        return Drift(
            test=f"cannot test: n < 2 (previous {len(previous)}, now {len(current)})", p_value=None, drift=None
        )
    if math.isnan(p):  # identical constant samples, or identical differences
        return Drift(test="cannot test: no spread in the differences", p_value=None, drift=None)
    return Drift(test=test, p_value=p, drift=p < DRIFT_ALPHA)


def drift_across_sizes(tests: list[Drift]) -> list[Drift]:
    """Holm's correction across the sizes of one sweep: a size drifted when its adjusted p-value is below 0.05."""
    tested = [i for i, d in enumerate(tests) if d.p_value is not None]
    if not tested:
        return tests
    reject, adjusted, _, _ = multipletests([tests[i].p_value for i in tested], alpha=DRIFT_ALPHA, method="holm")
    out = list(tests)
    for i, rej, adj in zip(tested, reject, adjusted, strict=True):
        out[i] = tests[i].model_copy(update={"drift": bool(rej), "p_holm": float(adj)})
    return out
