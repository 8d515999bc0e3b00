"""Gap statistics against scipy and numpy on fixed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from services.gap_stats import fit_gap, size_gap

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
    """The paper's Pythia gaps (SCIENCE.md) against log10 non-embedding parameters."""
    sizes = {"14m": 1_189_888, "31m": 4_739_072, "70m": 18_915_328, "160m": 85_056_000, "410m": 302_311_424,
             "1b": 805_736_448, "1.4b": 1_208_602_624, "2.8b": 2_517_652_480}  # fmt: skip
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
