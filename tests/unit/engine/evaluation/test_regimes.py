"""Regime labels follow their stated rule, computed here with plain loops, and see no future."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from engine.evaluation.regimes import (
    BEAR,
    BULL,
    HIGH_VOLATILITY,
    REGIMES,
    equal_weight_index_returns,
    label_regimes,
)


def market(periods: int = 600, seed: int = 3) -> pd.Series:
    """Daily returns that drift up, then fall, with a turbulent stretch in the middle."""
    rng = np.random.default_rng(seed)
    drift = np.where(np.arange(periods) < periods // 2, 0.001, -0.001)
    scale = np.full(periods, 0.008)
    scale[periods // 3 : periods // 3 + 60] = 0.03
    index = pd.bdate_range("2015-01-01", periods=periods)
    return pd.Series(drift + scale * rng.standard_normal(periods), index=index)


def looped_labels(returns: list[float], window: int, factor: float, history: int) -> list:
    """The rule, one period at a time, from the returns up to that period only."""
    labels: list = []
    volatilities: list[float] = []
    for t in range(len(returns)):
        if t + 1 < window:
            labels.append(None)
            continue
        recent = returns[t + 1 - window : t + 1]
        volatility = statistics.stdev(recent)
        volatilities.append(volatility)
        if len(volatilities) < history:
            labels.append(None)
            continue
        compounded = math.prod(1.0 + r for r in recent) - 1.0
        if volatility > factor * statistics.median(volatilities):
            labels.append(HIGH_VOLATILITY)
        else:
            labels.append(BULL if compounded > 0 else BEAR)
    return labels


def as_list(labels: pd.Series) -> list:
    return [None if pd.isna(value) else value for value in labels]


@pytest.mark.parametrize(
    ("window", "factor", "history"), [(63, 1.5, None), (21, 1.2, 5), (40, 2.0, 100)]
)
def test_labels_follow_the_stated_rule_period_by_period(window, factor, history):
    returns = market()
    result = label_regimes(returns, window=window, volatility_factor=factor, min_history=history)
    expected = looped_labels(returns.tolist(), window, factor, history or window)
    assert as_list(result.labels) == expected
    assert result.labels.index.equals(returns.index)
    assert list(result.labels.cat.categories) == list(REGIMES)
    # Each regime shows up in this market, so a rule that never fires would fail.
    assert {BULL, BEAR, HIGH_VOLATILITY} <= set(expected)


@pytest.mark.parametrize("cut", [100, 250, 400])
def test_changing_future_returns_leaves_past_labels_unchanged(cut):
    returns = market()
    before = label_regimes(returns).labels
    rewritten = returns.copy()
    rng = np.random.default_rng(cut)
    # Violent and different from cut + 1 on: a look-ahead anywhere would show.
    rewritten.iloc[cut + 1 :] = rng.normal(-0.02, 0.08, len(returns) - cut - 1)
    after = label_regimes(rewritten).labels
    assert as_list(after.iloc[: cut + 1]) == as_list(before.iloc[: cut + 1])
    assert as_list(after.iloc[cut + 1 :]) != as_list(before.iloc[cut + 1 :])


def test_the_first_periods_without_enough_history_are_unlabelled():
    returns = market()
    labels = label_regimes(returns, window=30, min_history=10).labels
    warm_up = 30 + 10 - 2
    assert labels.iloc[:warm_up].isna().all()
    assert labels.iloc[warm_up:].notna().all()


def test_a_calm_rise_is_bull_a_calm_fall_bear_and_a_storm_high_volatility():
    alternating = np.tile([1.0, -1.0], 150)
    calm, storm = 0.005 * alternating, 0.05 * alternating
    returns = pd.Series(np.concatenate([calm + 0.001, calm - 0.001, storm]))
    labels = label_regimes(returns, window=20, volatility_factor=1.5).labels
    assert set(labels.iloc[100:300]) == {BULL}
    assert set(labels.iloc[350:600]) == {BEAR}
    assert set(labels.iloc[610:650]) == {HIGH_VOLATILITY}


def test_a_missing_return_leaves_the_windows_holding_it_unlabelled():
    returns = market()
    returns.iloc[300] = np.nan
    labels = label_regimes(returns, window=20).labels
    assert labels.iloc[300:320].isna().all()
    assert labels.iloc[[299, 320]].notna().all()


def test_the_rule_states_its_parameters():
    rule = label_regimes(market(), window=21, volatility_factor=1.25, min_history=50).rule
    assert rule.count(".") == 2  # one sentence, and the 1.25
    for fragment in ("trailing 21 periods", "1.25 times the median", "after 50 values"):
        assert fragment in rule
    assert all(name in rule for name in REGIMES)


def test_equal_weight_index_averages_the_assets_that_have_a_return():
    closes = pd.DataFrame(
        {
            "A": [10.0, 11.0, 12.1, 11.0],
            "B": [np.nan, 20.0, 22.0, 24.2],
            "C": [5.0, 5.0, np.nan, 5.0],
        }
    )
    expected = [
        (11.0 / 10.0 - 1 + 0.0) / 2,  # B not listed yet
        (12.1 / 11.0 - 1 + 22.0 / 20.0 - 1) / 2,  # C missing a close
        (11.0 / 12.1 - 1 + 24.2 / 22.0 - 1) / 2,  # C's return needs two closes
    ]
    np.testing.assert_allclose(equal_weight_index_returns(closes).to_numpy(), expected)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window": 1}, "window must be an integer >= 2, received 1"),
        ({"window": 2.5}, "window must be an integer >= 2, received 2.5"),
        ({"volatility_factor": 0.0}, "volatility_factor must be > 0, received 0.0"),
        ({"min_history": 0}, "min_history must be an integer >= 1, received 0"),
    ],
)
def test_label_regimes_names_the_bad_parameter(options, message):
    with pytest.raises(ValueError, match=message):
        label_regimes(market(100), **options)
