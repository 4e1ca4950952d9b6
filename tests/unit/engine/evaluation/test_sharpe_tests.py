"""The Sharpe-difference tests against the formula and the delta method written out here, their
size under the null by simulation, and the bootstrap against the closed form.

Sharpe ratios here come from pandas (``mean() / std()``, ddof=1), correlations from
``Series.corr``, normal tails from ``math.erfc``: none of the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from engine.evaluation.sharpe_tests import bootstrap_sharpe_difference, jobson_korkie_memmel

# Twelve months of two funds' returns, made up: per-period Sharpe ratios of about 1.0 and 0.5,
# correlated about 0.2, large enough that Jobson and Korkie's original last term would give a
# statistic 5% larger.
FUND_A = [0.031, 0.012, -0.008, 0.025, 0.041, 0.006, 0.019, -0.013, 0.028, 0.035, 0.002, 0.022]
FUND_B = [0.004, 0.021, -0.011, -0.006, 0.030, 0.015, -0.019, 0.008, 0.026, -0.004, 0.012, 0.009]


def normal_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def hand_memmel(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """Return z and p of Memmel's (2003) test, from his formula in Sharpe ratios."""
    sharpe_a, sharpe_b = a.mean() / a.std(), b.mean() / b.std()
    rho = a.corr(b)
    theta = (
        2 - 2 * rho + 0.5 * sharpe_a**2 + 0.5 * sharpe_b**2 - sharpe_a * sharpe_b * rho**2
    ) / len(a)
    z = (sharpe_a - sharpe_b) / math.sqrt(theta)
    return z, normal_two_sided(z)


def delta_method_z(a: pd.Series, b: pd.Series) -> float:
    """z from the delta method under normality, with a numerical gradient.

    Parameters (mean_a, mean_b, var_a, var_b, cov_ab); the sample means have covariance
    Sigma / T, the sample (co)variances Cov(s_ij, s_kl) = (s_ik s_jl + s_il s_jk) / T, and the
    two blocks are independent for normal data.
    """
    sigma = pd.concat([a, b], axis=1).cov().to_numpy()
    theta = np.array([a.mean(), b.mean(), sigma[0, 0], sigma[1, 1], sigma[0, 1]])

    def difference(p: np.ndarray) -> float:
        return p[0] / math.sqrt(p[2]) - p[1] / math.sqrt(p[3])

    gradient = np.zeros(5)
    for k in range(5):
        step = np.zeros(5)
        step[k] = 1e-6 * max(abs(theta[k]), 1e-4)
        gradient[k] = (difference(theta + step) - difference(theta - step)) / (2 * step[k])
    pairs = [(0, 0), (1, 1), (0, 1)]  # var_a, var_b, cov_ab as index pairs
    omega = np.zeros((5, 5))
    omega[:2, :2] = sigma
    for row, (i, j) in enumerate(pairs):
        for column, (k, m) in enumerate(pairs):
            omega[2 + row, 2 + column] = sigma[i, k] * sigma[j, m] + sigma[i, m] * sigma[j, k]
    variance = gradient @ omega @ gradient / len(a)
    return difference(theta) / math.sqrt(variance)


def test_jkm_matches_memmels_formula_on_a_small_sample():
    a, b = pd.Series(FUND_A), pd.Series(FUND_B)
    z, p = hand_memmel(a, b)
    result = jobson_korkie_memmel(FUND_A, FUND_B)
    assert result.statistic == pytest.approx(z, rel=1e-10)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.sharpe_a == pytest.approx(a.mean() / a.std(), rel=1e-12)
    assert result.sharpe_b == pytest.approx(b.mean() / b.std(), rel=1e-12)
    assert result.correlation == pytest.approx(a.corr(b), rel=1e-12)
    assert result.observations == 12


def test_jkm_variance_is_the_delta_method_variance_not_jobson_korkies_original():
    a, b = pd.Series(FUND_A), pd.Series(FUND_B)
    result = jobson_korkie_memmel(FUND_A, FUND_B)
    assert result.statistic == pytest.approx(delta_method_z(a, b), rel=1e-6)
    # Jobson and Korkie's last term, -SR_a SR_b (1 + rho^2) / 2, gives another z here.
    sharpe_a, sharpe_b, rho = a.mean() / a.std(), b.mean() / b.std(), a.corr(b)
    original = (2 - 2 * rho + 0.5 * (sharpe_a**2 + sharpe_b**2)) - 0.5 * sharpe_a * sharpe_b * (
        1 + rho**2
    )
    z_original = (sharpe_a - sharpe_b) / math.sqrt(original / len(a))
    assert abs(z_original / result.statistic - 1.0) > 0.01


def test_jkm_annualises_the_ratios_but_not_the_statistic():
    daily = jobson_korkie_memmel(FUND_A, FUND_B)
    yearly = jobson_korkie_memmel(FUND_A, FUND_B, periods_per_year=12)
    assert yearly.sharpe_a == pytest.approx(daily.sharpe_a * math.sqrt(12))
    assert yearly.difference == pytest.approx(daily.difference * math.sqrt(12))
    assert (yearly.statistic, yearly.p_value) == (daily.statistic, daily.p_value)


@pytest.mark.parametrize("correlation", [0.0, 0.7])
def test_jkm_rejects_about_five_percent_of_true_nulls(correlation):
    # Equal Sharpe ratios (0.05 a period) at different scales; 400 trials of a trading year.
    rng = np.random.default_rng(20030101)
    trials, periods = 400, 250
    rejected = 0
    for _ in range(trials):
        first = rng.standard_normal(periods)
        second = correlation * first + math.sqrt(1 - correlation**2) * rng.standard_normal(periods)
        a = 0.0005 + 0.01 * first
        b = 0.001 + 0.02 * second
        rejected += jobson_korkie_memmel(a, b).p_value < 0.05
    assert 0.02 <= rejected / trials <= 0.09


def clear_difference() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    common = rng.standard_normal(1000)
    a = 0.0015 + 0.01 * (0.5 * common + math.sqrt(0.75) * rng.standard_normal(1000))
    b = -0.0005 + 0.01 * (0.5 * common + math.sqrt(0.75) * rng.standard_normal(1000))
    return a, b


@pytest.mark.parametrize("method", ["stationary", "circular"])
def test_bootstrap_agrees_with_jkm_on_a_clear_difference(method):
    a, b = clear_difference()
    closed_form = jobson_korkie_memmel(a, b, periods_per_year=252)
    resampled = bootstrap_sharpe_difference(
        a, b, periods_per_year=252, method=method, repetitions=999, seed=3
    )
    assert closed_form.p_value < 0.01 and resampled.p_value < 0.01
    assert resampled.difference == pytest.approx(closed_form.difference, rel=1e-12)
    assert resampled.sharpe_a == pytest.approx(pd.Series(a).mean() / pd.Series(a).std() * 252**0.5)
    lower, upper = resampled.confidence_interval
    assert 0.0 < lower < resampled.difference < upper
    # The interval is about as wide as the normal one of the closed form (iid data here).
    normal_width = 2 * 1.96 * closed_form.difference / closed_form.statistic
    assert 0.7 < (upper - lower) / normal_width < 1.4


def test_bootstrap_does_not_reject_identical_or_proportional_strategies():
    a, _ = clear_difference()
    for b in (a, 3.0 * a):
        result = bootstrap_sharpe_difference(a, b, repetitions=200, seed=1)
        assert result.difference == pytest.approx(0.0, abs=1e-12)
        assert result.p_value == 1.0
        assert jobson_korkie_memmel(a, b).p_value == pytest.approx(1.0)


def test_bootstrap_widens_the_interval_for_autocorrelated_returns():
    # AR(1) returns with phi = 0.6: the variance of a mean is (1 + phi) / (1 - phi) = 4 times the
    # iid one, which the closed form ignores and blocks of periods keep.
    rng = np.random.default_rng(5)
    periods, phi = 3000, 0.6
    shocks = rng.standard_normal((periods, 2))
    series = np.zeros((periods, 2))
    for t in range(1, periods):
        series[t] = phi * series[t - 1] + shocks[t]
    a, b = 0.1 + series[:, 0], series[:, 1]
    closed_form = jobson_korkie_memmel(a, b)
    resampled = bootstrap_sharpe_difference(a, b, repetitions=500, seed=2)
    lower, upper = resampled.confidence_interval
    normal_width = 2 * 1.96 * closed_form.difference / closed_form.statistic
    assert resampled.block_length > 3
    assert (upper - lower) / normal_width > 1.4


def test_bootstrap_is_reproducible_from_its_seed_and_reports_its_settings():
    a, b = clear_difference()
    a, b = a[:300], b[:300] - 0.0015
    first = bootstrap_sharpe_difference(a, b, block_length=5.0, repetitions=300, seed=42)
    again = bootstrap_sharpe_difference(a, b, block_length=5.0, repetitions=300, seed=42)
    other = bootstrap_sharpe_difference(a, b, block_length=5.0, repetitions=300, seed=43)
    assert first == again
    assert other.confidence_interval != first.confidence_interval
    assert (first.block_length, first.repetitions, first.seed, first.method) == (
        5.0,
        300,
        42,
        "stationary",
    )
    circular = bootstrap_sharpe_difference(a, b, method="circular", block_length=4.2, seed=0)
    assert circular.block_length == 5.0  # whole blocks: rounded up


def test_missing_periods_are_dropped_from_both_strategies():
    a = np.array(FUND_A)
    b = np.array(FUND_B)
    a_gaps, b_gaps = a.copy(), b.copy()
    a_gaps[3], b_gaps[7] = np.nan, np.nan
    keep = [i for i in range(12) if i not in (3, 7)]
    result = jobson_korkie_memmel(a_gaps, b_gaps)
    assert result.observations == 10
    assert result.statistic == pytest.approx(jobson_korkie_memmel(a[keep], b[keep]).statistic)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([0.01, 0.02, 0.03], [0.01, 0.02], "equal length.*received shapes \\(3,\\) and \\(2,\\)"),
        ([0.01, 0.02], [0.01, 0.03], "at least 3 paired returns, received 2"),
        ([0.01, 0.01, 0.01], [0.01, 0.02, 0.0], "returns_a has no spread"),
    ],
)
def test_sharpe_tests_name_what_is_wrong_with_the_returns(a, b, message):
    with pytest.raises(ValueError, match=message):
        jobson_korkie_memmel(a, b)
    with pytest.raises(ValueError, match=message):
        bootstrap_sharpe_difference(a, b)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "moving"}, "method must be one of .*received 'moving'"),
        ({"repetitions": 0}, "repetitions must be an integer >= 1, received 0"),
        ({"confidence": 1.5}, "confidence must be in \\(0, 1\\), received 1.5"),
        ({"block_length": 0.5}, "block_length must be >= 1 or None, received 0.5"),
    ],
)
def test_bootstrap_names_the_bad_setting(options, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_sharpe_difference(FUND_A, FUND_B, **options)
