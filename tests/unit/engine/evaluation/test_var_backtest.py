"""Kupiec's test against its log-likelihoods written out by hand, and the breach count against a
plain loop.

The p-values come from ``math.erfc`` (a chi-square with one degree of freedom is a squared
standard normal: ``P(X > x) = erfc(sqrt(x / 2))``), not from scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.evaluation.var_backtest import count_var_breaches, kupiec_pof, kupiec_test


def chi2_1_sf(value: float) -> float:
    return math.erfc(math.sqrt(value / 2.0))


def hand_kupiec(breaches: int, observations: int, confidence: float) -> float:
    """-2 ln of the likelihood at p = 1 - confidence over the likelihood at the observed rate."""
    p = 1.0 - confidence
    rate = breaches / observations
    misses = observations - breaches
    log_null = misses * math.log(1.0 - p) + breaches * math.log(p)
    log_observed = misses * math.log(1.0 - rate) + breaches * math.log(rate)
    return -2.0 * (log_null - log_observed)


@pytest.mark.parametrize(
    ("breaches", "observations", "confidence"),
    [(8, 250, 0.99), (3, 250, 0.99), (1, 1000, 0.99), (20, 500, 0.95), (70, 500, 0.9)],
)
def test_kupiec_statistic_is_the_log_likelihood_ratio_of_the_two_rates(
    breaches, observations, confidence
):
    result = kupiec_pof(breaches, observations, confidence)
    expected = hand_kupiec(breaches, observations, confidence)
    assert result.statistic == pytest.approx(expected, rel=1e-10)
    assert result.p_value == pytest.approx(chi2_1_sf(expected), rel=1e-9)
    assert result.breach_rate == breaches / observations
    assert result.expected_rate == pytest.approx(1.0 - confidence)
    assert (result.breaches, result.observations) == (breaches, observations)


def test_kupiec_rejects_eight_breaches_of_a_99_var_in_a_trading_year():
    # 2.5 expected: 8 is Basel's yellow zone, and the LR test rejects at 1%.
    result = kupiec_pof(8, 250, 0.99)
    assert 0.001 < result.p_value < 0.01


def test_kupiec_without_breaches_is_finite_and_only_the_null_likelihood_remains():
    result = kupiec_pof(0, 250, 0.99)
    expected = -2.0 * 250 * math.log(0.99)
    assert result.statistic == pytest.approx(expected, rel=1e-12)
    assert result.p_value == pytest.approx(chi2_1_sf(expected), rel=1e-9)
    assert result.breach_rate == 0.0


def test_kupiec_with_every_period_breached_is_finite():
    result = kupiec_pof(40, 40, 0.95)
    expected = -2.0 * 40 * math.log(0.05)
    assert result.statistic == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(result.p_value) and result.p_value < 1e-20
    assert result.breach_rate == 1.0


def test_kupiec_does_not_reject_a_breach_rate_equal_to_the_expected_one():
    result = kupiec_pof(5, 100, 0.95)
    assert result.statistic == pytest.approx(0.0, abs=1e-12)
    assert result.p_value == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((1, 100, 1.0), "coverage must be in \\(0, 1\\), received 1.0"),
        ((1, 100, float("nan")), "coverage"),
        ((1, 0, 0.99), "observations must be >= 1, received 0"),
        ((11, 10, 0.99), "breaches must be in \\[0, observations=10\\], received 11"),
        ((-1, 10, 0.99), "breaches"),
    ],
)
def test_kupiec_names_the_bad_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        kupiec_pof(*arguments)


def test_breaches_are_losses_strictly_beyond_the_forecast_of_the_same_position():
    returns = np.array([-0.03, -0.02, 0.01, -0.05, np.nan, -0.04, -0.011])
    forecasts = np.array([0.02, 0.02, 0.02, np.nan, 0.02, 0.03, 0.01])
    breached = 0
    observed = 0
    for realised, forecast in zip(returns, forecasts):
        if math.isnan(realised) or math.isnan(forecast):
            continue
        observed += 1
        breached += -realised > forecast
    counted = count_var_breaches(returns, forecasts)
    assert (counted.breaches, counted.observations) == (breached, observed) == (3, 5)


def test_a_loss_equal_to_the_forecast_is_not_a_breach():
    assert count_var_breaches([-0.25], [0.25]).breaches == 0


def test_breach_count_refuses_series_of_different_lengths():
    with pytest.raises(ValueError, match="equal length, received shapes \\(3,\\) and \\(2,\\)"):
        count_var_breaches([0.0, 0.0, 0.0], [0.01, 0.01])


def test_kupiec_test_counts_then_tests():
    rng = np.random.default_rng(7)
    returns = rng.normal(0.0, 0.01, 500)
    forecasts = np.full(500, 0.02)
    forecasts[:50] = np.nan
    breaches = int(np.sum(-returns[50:] > 0.02))
    result = kupiec_test(returns, forecasts, 0.99)
    assert (result.breaches, result.observations) == (breaches, 450)
    assert result.statistic == pytest.approx(hand_kupiec(breaches, 450, 0.99), rel=1e-10)
