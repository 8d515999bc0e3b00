"""Gap statistics against scipy and numpy on fixed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.signal import lfilter

from services.gap_stats import (
    Drift,
    block_length,
    block_means,
    blocked_interval,
    drift,
    drift_across_sizes,
    fieller_interval,
    fit_gap,
    mean_interval,
    size_gap,
)

VANILLA = [4.11, 4.09, 4.15, 4.12]
MYOPIC = [4.27, 4.22, 4.33, 4.25]


def test_paired_interval_equals_scipy_ttest_rel():
    g = size_gap("14m", 1_189_888, VANILLA, MYOPIC)
    ci = stats.ttest_rel(MYOPIC, VANILLA).confidence_interval(0.95)
    assert g.gap_mean == pytest.approx(np.mean(np.subtract(MYOPIC, VANILLA)))
    assert g.gap_ci95 == pytest.approx((ci.low, ci.high))
    assert (g.n_pairs, g.vanilla_loss_mean, g.myopic_loss_mean) == (4, pytest.approx(4.1175), pytest.approx(4.2675))


def test_one_seed_has_no_interval_and_unpaired_input_is_refused():
    assert size_gap("14m", 1, [4.0], [4.2]).gap_ci95 is None
    with pytest.raises(ValueError, match="same, non-zero number"):
        size_gap("14m", 1, [4.0, 4.1], [4.2])


def test_fit_against_numpy_on_the_papers_pythia_gaps():
    """The paper's Pythia gaps (docs/science.md) against log10 non-embedding parameters."""
    sizes = {
        "14m": 1_189_888,
        "31m": 4_739_072,
        "70m": 18_915_328,
        "160m": 85_056_000,
        "410m": 302_311_424,
        "1b": 805_736_448,
        "1.4b": 1_208_602_624,
        "2.8b": 2_517_652_480,
    }
    gaps = [0.16, 0.11, 0.04, 0.10, 0.15, 0.16, 0.17, 0.23]
    points = [size_gap(s, n, [0.0], [g]) for (s, n), g in zip(sizes.items(), gaps, strict=True)]
    fit = fit_gap(points)
    x, y = np.log10(list(sizes.values())), np.array(gaps)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    se = math.sqrt(resid @ resid / (len(x) - 2) / ((x - x.mean()) @ (x - x.mean())))
    half = stats.t.ppf(0.975, len(x) - 2) * se
    assert (fit.slope, fit.intercept) == (pytest.approx(slope), pytest.approx(intercept))
    assert fit.slope_ci95 == pytest.approx((slope - half, slope + half))
    assert fit.r_squared == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    assert fit_gap(points[:2]) is None
    assert fit.weighted is False  # one pair per size: no standard errors to weight by


def test_weighted_fit_against_a_hand_computation():
    """Weighted least squares, weights 1/SE², slope variance scaled by the weighted residuals (n − 2 dof)."""
    rows = {
        "160m": (85_056_000, [0.10, 0.12, 0.08]),
        "410m": (302_311_424, [0.15, 0.16, 0.14, 0.15]),
        "1b": (805_736_448, [0.16, 0.20, 0.12]),
        "2.8b": (2_517_652_480, [0.23, 0.25, 0.24]),
    }
    points = [size_gap(s, n, [0.0] * len(g), g) for s, (n, g) in rows.items()]
    fit = fit_gap(points)
    x = np.log10([n for n, _ in rows.values()])
    y = np.array([np.mean(g) for _, g in rows.values()])
    w = 1 / np.array([p.gap_se for p in points]) ** 2
    X = np.column_stack([x, np.ones_like(x)])
    beta = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w * y))
    resid = y - X @ beta
    cov = np.linalg.inv(X.T @ (w[:, None] * X)) * (w @ resid**2) / (len(x) - 2)
    half = stats.t.ppf(0.975, len(x) - 2) * math.sqrt(cov[0, 0])
    assert fit.weighted and (fit.slope, fit.intercept) == (pytest.approx(beta[0]), pytest.approx(beta[1]))
    assert fit.slope_ci95 == pytest.approx((beta[0] - half, beta[0] + half))
    assert fit_gap(points, min_params=100_000_000).sizes == ["410m", "1b", "2.8b"]
    assert fit_gap(points, min_params=500_000_000) is None


def test_local_myopia_bonus_is_vanilla_minus_local_with_both_intervals():
    local = [4.08, 4.10, 4.11, 4.10]
    g = size_gap("14m", 1, VANILLA, MYOPIC, local=local)
    ci = stats.ttest_rel(VANILLA, local).confidence_interval(0.95)
    assert g.bonus == pytest.approx(np.mean(np.subtract(VANILLA, local))) and g.local_loss_mean == pytest.approx(4.0975)
    assert g.bonus_ci95 == pytest.approx((ci.low, ci.high))
    rng = np.random.default_rng(0)
    seq = {arm: [list(rng.normal(4, 1, 400))] for arm in ("vanilla", "myopic")}
    seq["local"] = [list(np.array(seq["vanilla"][0]) - 0.02)]  # better by 0.02 on every sequence
    one = size_gap("14m", 1, [4.0], [4.1], local=[3.98], per_sequence=seq)
    assert one.bonus_ci95 is None and one.bonus_eval_ci95 == pytest.approx((0.02, 0.02))
    with pytest.raises(ValueError, match="same, non-zero number"):
        size_gap("14m", 1, VANILLA, MYOPIC, local=local[:2])


def test_interval_over_held_out_sequences_is_over_blocks_of_neighbours():
    """One pair still gets an interval: over the paired per-sequence differences on the shared held-out set, by batch
    means over blocks of a length chosen from the series (neighbouring sequences share documents), here against
    scipy's t-interval on those block means."""
    rng = np.random.default_rng(0)
    vanilla = rng.normal(4.0, 0.5, 320)
    doc_effect = np.repeat(rng.normal(0.0, 0.05, 40), 8)  # 8 sequences per document: correlated differences
    myopic = vanilla + 0.02 + doc_effect + rng.normal(0.0, 0.01, 320)
    g = size_gap("14m", 1, [vanilla.mean()], [myopic.mean()], per_sequence={"vanilla": [vanilla], "myopic": [myopic]})
    diff = myopic - vanilla
    block = block_length(diff)
    assert block >= 8  # at least a document's worth of neighbours
    ci = stats.ttest_1samp(block_means(diff, block), 0.0).confidence_interval(0.95)
    assert g.gap_ci95 is None and g.gap_eval_ci95 == pytest.approx((ci.low, ci.high))
    naive = stats.ttest_rel(myopic, vanilla).confidence_interval(0.95)
    assert g.gap_eval_ci95[1] - g.gap_eval_ci95[0] > 1.5 * (naive.high - naive.low)  # independence would overstate
    assert mean_interval([1.0]) == (1.0, None, None) and blocked_interval([0.1] * 31, block=16) is None
    assert block_length([0.1] * 50) == 1  # no spread: nothing to estimate


def _ar1(rng: np.random.Generator, phi: float, n: int) -> np.ndarray:
    """A stationary AR(1) series of mean zero (burn-in dropped)."""
    return lfilter([1.0], [1.0, -phi], rng.standard_normal(n + 500))[500:]


@pytest.mark.parametrize(("phi", "n"), [(0.9, 1024), (0.5, 256)])
def test_held_out_interval_covers_at_its_nominal_rate(phi, n):
    """95% intervals for the mean of AR(1) series, 2,000 replicates (a seed of its own, not the bench's): the block
    length chosen from the data covers at least 93%; fixed blocks of 16 (the former EVAL_BLOCK) fall short where the
    correlation is long (ρ = 0.9: about 84%)."""
    rng = np.random.default_rng(1)
    covered = {"chosen": 0, "fixed 16": 0}
    for _ in range(2000):
        x = _ar1(rng, phi, n)
        for label, block in (("chosen", None), ("fixed 16", 16)):
            lo, hi = blocked_interval(x, block)
            covered[label] += lo <= 0.0 <= hi
    assert covered["chosen"] >= 1860, covered
    if phi >= 0.9:
        assert covered["fixed 16"] < 1800, covered


def test_share_of_context_benefit_lost_with_fieller_intervals():
    vanilla, myopic, bigram = [4.0, 4.1, 4.05], [4.2, 4.25, 4.3], [5.0, 5.2, 5.1]
    g = size_gap("14m", 1, vanilla, myopic, bigram=bigram)
    gaps, benefits = np.subtract(myopic, vanilla), np.subtract(bigram, vanilla)
    assert g.share_lost == pytest.approx(gaps.mean() / benefits.mean())
    assert g.bigram_loss_mean == pytest.approx(np.mean(bigram))
    lo, hi = g.share_lost_ci95
    assert lo < g.share_lost < hi and g.share_lost_eval_ci95 is None and g.share_lost_note is None
    # a numerator proportional to the denominator has a zero-width interval at the ratio
    assert fieller_interval([0.2, 0.4, 0.6, 0.8, 1.0, 1.2], [1, 2, 3, 4, 5, 6])[0] == pytest.approx((0.2, 0.2))
    assert fieller_interval([0.2], [1.0]) == (None, "one pair: no interval")
    # the past does not help (bigram no worse than vanilla): no share of it to lose
    assert size_gap("14m", 1, [4.0, 4.1], [4.2, 4.2], bigram=[3.9, 4.0]).share_lost is None


def test_share_lost_has_no_bounded_interval_when_the_benefit_is_not_significant():
    """bigram − vanilla positive on average but not significantly: the delta method would still give a finite
    interval; Fieller's confidence set is unbounded, and the row says why."""
    interval, why = fieller_interval([0.02, 0.03, 0.01], [0.10, -0.05, 0.02])
    assert interval is None and "not significantly different from zero" in why
    g = size_gap("14m", 1, [4.0, 4.1, 4.0], [4.02, 4.13, 4.01], bigram=[4.1, 4.05, 4.02])
    assert g.share_lost is not None and g.share_lost_ci95 is None and "over seeds" in g.share_lost_note


def test_fieller_interval_against_the_delta_method_and_its_coverage():
    """With a well-determined denominator Fieller's interval approaches the delta method's; it covers the true
    ratio at about its nominal rate (1,000 simulated evaluations of 30 pairs, a noisy denominator)."""
    rng = np.random.default_rng(1)
    den = rng.normal(1.0, 0.3, 4000)
    num = 0.25 * den + rng.normal(0.0, 0.1, 4000)
    (lo, hi), _ = fieller_interval(num, den)
    r = num.mean() / den.mean()
    se = (num - r * den).std(ddof=1) / math.sqrt(len(num)) / abs(den.mean())
    assert (lo, hi) == pytest.approx((r - 1.96 * se, r + 1.96 * se), rel=2e-3)
    covered = 0
    for _ in range(1000):
        den = rng.normal(1.0, 1.0, 30)
        num = 0.25 * den + rng.normal(0.0, 0.2, 30)
        interval, _ = fieller_interval(num, den)
        covered += interval is None or interval[0] <= 0.25 <= interval[1]  # an unbounded set covers everything
    assert 935 <= covered <= 965, covered


# the cpu-ladder's 0.1m gaps by seed (docs/results.md) and a rerun 22% larger for every seed
LADDER = {0: 0.0201, 1: 0.0252, 2: 0.0123}
RERUN = {seed: 1.22 * gap for seed, gap in LADDER.items()}


def test_drift_of_a_rerun_is_a_paired_test_on_its_seeds():
    """A scheduled rerun reuses its seeds: the seed-to-seed spread is shared, and only a paired test sees the 22%
    shift that Welch's unpaired test misses."""
    paired = drift(LADDER, RERUN)
    assert paired.test == "paired t" and paired.drift is True
    assert paired.p_value == pytest.approx(stats.ttest_rel(list(RERUN.values()), list(LADDER.values())).pvalue)
    unpaired = stats.ttest_ind(list(RERUN.values()), list(LADDER.values()), equal_var=False).pvalue
    assert unpaired > 0.3  # what the former test reported: no drift
    # a deterministic rerun that reproduces every gap has not drifted; a shift identical on every seed has
    assert drift(LADDER, dict(LADDER)) == Drift(test="paired t: every seed's gap unchanged", p_value=1.0, drift=False)
    shifted = drift(LADDER, {seed: gap + 0.01 for seed, gap in LADDER.items()})
    assert (shifted.p_value, shifted.drift) == (0.0, True)
    # different seeds: Welch's test is the one left
    other = drift(LADDER, {10: 0.02, 11: 0.03, 12: 0.025})
    assert other.test == "welch"
    assert drift({0: 0.1}, {0: 0.2, 1: 0.3}) == Drift(
        test="cannot test: n < 2 (previous 1, now 2)", p_value=None, drift=None
    )


def test_drift_is_judged_after_holms_correction_across_sizes():
    p = [0.01, 0.04, 0.03]
    tests = drift_across_sizes([Drift(test="paired t", p_value=x, drift=x < 0.05) for x in p])
    assert [t.p_holm for t in tests] == pytest.approx([0.03, 0.06, 0.06])  # 3·0.01; max(2·0.03, 3·0.01); 1·0.04
    assert [t.drift for t in tests] == [True, False, False]
    untested = Drift(test="cannot test: n < 2 (previous 0, now 1)", p_value=None, drift=None)
    assert drift_across_sizes([untested]) == [untested]
